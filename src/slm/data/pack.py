"""Tokenize a corpus into packed, sharded token streams plus a manifest (`slm data prepare`).

Design decisions
- The split is by document and by content: a document goes to val iff blake2b(seed, text) read as a fraction of 2**64
  is below `val_fraction`. Identical texts land on the same side (no train/val leak through duplicates), the split
  does not depend on file order, and it is stable when documents are added elsewhere. If no document qualifies (tiny
  corpora) the lowest-hash text moves to val, so there is always something to evaluate on.
- Dedup (`dedup=`, a run's `data.dedup`, on by default) runs between the split and tokenizing: the data recipes'
  exact + MinHash steps from `slm.data.dedup`, one task per split, in this process (about 2 s on the 5 MB Shakespeare
  corpus). Val wins ties, so a train document that (near-)duplicates a val one is dropped and no near-duplicate pair
  straddles the split (up to MinHash recall: ~1 for one word changed in 100); the manifest's `dedup` counts removals.
- Two passes over the input: the first only hashes (fast) to fix the split and the totals; the second tokenizes.
  That keeps memory flat (8-byte hash + length per document) instead of holding token ids until the split is known.
- Tokenization runs in a spawn-context process pool fed with ordered chunks of same-split documents; at most a few
  chunks are in flight, so memory stays bounded on large corpora. Inputs under POOL_MIN_BYTES are tokenized in this
  process (HF tokenizers' `encode_batch` already uses every core): the spawned workers' start-up is not paid back
  there (`slm data prepare recipes/quickstart.yaml`, 5 MB, 2 cores: 6.2-7.2 s in-process vs 8.7-11.7 s with 2
  workers; the same plays 10x, 50 MB: 33.9 vs 33.1 s). Workers receive the tokenizer as its JSON string
  (that is how `Tokenizer` pickles). Each document becomes its ids followed by EOS (no BOS: EOS doubles as the document
  separator, one token per document instead of two). The output is byte-identical for any number of workers.
- Shards are raw little-endian uint16 arrays (uint32 above 65,536 ids) with no header, so `np.memmap` reads them
  directly; `shard_tokens` bounds file size. Everything is written into a temporary folder renamed into place at the
  end, so an interrupted run never leaves a half-written dataset behind.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import slm
from slm.data.dedup import DedupConfig
from slm.data.sources import iter_documents, list_source_files
from slm.errors import SlmError, atomic_dir, atomic_write_text
from slm.tokenizer import Tokenizer

FORMAT = "slm-tokens-v1"
MANIFEST_FILE = "manifest.json"
SPLITS = ("train", "val")
_CHUNK_BYTES = 1 << 20  # text per worker task: big enough to amortise IPC, small enough to keep workers busy
_CHUNK_DOCS = 4096


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def split_hash(text: str, seed: int) -> int:
    """64-bit content hash that decides the split of a document."""
    digest = hashlib.blake2b(f"{seed}\0".encode() + text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def tokenize_documents(tokenizer: Tokenizer, texts: list[str], dtype: np.dtype) -> np.ndarray:
    """Concatenation of `encode(text) + [eos]` over `texts`, as a flat array of `dtype`."""
    eos = tokenizer.eos_id
    ids = tokenizer.encode_batch(texts)
    total = sum(len(x) for x in ids) + len(ids)
    out = np.empty(total, dtype=dtype)
    pos = 0
    for doc in ids:
        out[pos : pos + len(doc)] = doc
        out[pos + len(doc)] = eos
        pos += len(doc) + 1
    return out


_worker_state: dict = {}
POOL_MIN_BYTES = 64 << 20  # smaller inputs are tokenized in-process (module docstring)


def _init_worker(tokenizer: Tokenizer, dtype: str) -> None:
    # Rust-side threads in every worker would oversubscribe the cores the pool already uses.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_state["tokenizer"] = tokenizer
    _worker_state["dtype"] = np.dtype(dtype)


def _tokenize_chunk(texts: list[str]) -> np.ndarray:
    return tokenize_documents(_worker_state["tokenizer"], texts, _worker_state["dtype"])


class ShardWriter:
    """Append tokens to `{split}_00000.bin`, `{split}_00001.bin`, ... with at most `shard_tokens` tokens each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.directory, self.split, self.dtype, self.shard_tokens = directory, split, dtype, shard_tokens
        self.shards: list[dict] = []
        self._file = None
        self._sha = hashlib.sha256()
        self._in_shard = 0

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        while len(tokens):
            if self._file is None:
                name = f"{self.split}_{len(self.shards):05d}.bin"
                self._file = open(self.directory / name, "wb")
                self.shards.append({"file": name, "tokens": 0, "sha256": ""})
            take = min(len(tokens), self.shard_tokens - self._in_shard)
            data = tokens[:take].tobytes()
            self._file.write(data)
            self._sha.update(data)
            self._in_shard += take
            tokens = tokens[take:]
            if self._in_shard == self.shard_tokens:
                self._finish_shard()

    def _finish_shard(self) -> None:
        self._file.close()
        self.shards[-1].update(tokens=self._in_shard, sha256=self._sha.hexdigest())
        self._file, self._sha, self._in_shard = None, hashlib.sha256(), 0

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish_shard()
        return self.shards


def _iter_all_documents(inputs: list[str], options: dict, stats: dict | None) -> Iterator[str]:
    for path in inputs:
        for _, text in iter_documents(path, stats=stats, **options):
            yield text


def _assign_splits(
    inputs: list[str], options: dict, val_fraction: float, seed: int, stats: dict
) -> tuple[list[bool], array]:
    """First pass: which documents go to val, and each document's UTF-8 size."""
    hashes, sizes = array("Q"), array("Q")
    for text in _iter_all_documents(inputs, options, stats):
        hashes.append(split_hash(text, seed))
        sizes.append(len(text.encode("utf-8")))
    threshold = val_fraction * 2.0**64
    is_val = [h < threshold for h in hashes]
    where = ", ".join(inputs)
    if val_fraction > 0 and not any(is_val) and len(hashes) >= 2:
        lowest = min(hashes)
        is_val = [h == lowest for h in hashes]  # every copy of that text, so duplicates never straddle the split
    if all(is_val):
        raise SlmError(
            f"{where}: all {len(hashes)} document(s) fell into the validation split (val_fraction={val_fraction}); "
            "lower val_fraction or add more distinct documents"
        )
    return is_val, sizes


def _chunks(inputs: list[str], options: dict, is_val: list[bool],
            keep: list[bool] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Second pass: consecutive documents of one split, grouped into tasks of about _CHUNK_BYTES; documents whose
    `keep` is False (duplicates) are left out."""
    split, texts, size, index = None, [], 0, 0
    for text in _iter_all_documents(inputs, options, None):
        if index >= len(is_val):
            raise SlmError(f"{', '.join(inputs)}: inputs changed while preparing; re-run when they are stable")
        doc_split = "val" if is_val[index] else "train"
        index += 1
        if keep is not None and not keep[index - 1]:
            continue
        if texts and (doc_split != split or size >= _CHUNK_BYTES or len(texts) >= _CHUNK_DOCS):
            yield split, texts
            texts, size = [], 0
        split = doc_split
        texts.append(text)
        size += len(text)
    if texts:
        yield split, texts
    if index != len(is_val):
        raise SlmError(f"{', '.join(inputs)}: inputs changed while preparing; re-run when they are stable")


@dataclass
class _Doc:
    text: str  # what datatrove's dedup steps read of a document


def _dedup(inputs: list[str], options: dict, is_val: list[bool], dedup: DedupConfig) -> tuple[list[bool], dict]:
    """Which documents survive exact + MinHash dedup (val wins ties: train copies of val documents go), and counts."""
    from slm.data.dedup import dedup_in_process

    def documents(split: str) -> Iterator[_Doc]:
        for text, val in zip(_iter_all_documents(inputs, options, None), is_val, strict=True):
            if val == (split == "val"):
                yield _Doc(text)

    with tempfile.TemporaryDirectory(prefix="slm-dedup-") as work:
        kept, stats = dedup_in_process(documents, dedup, Path(work))
    keep = [False] * len(is_val)
    positions = {"val": 0, "train": 0}
    survivors = {split: set(kept[split]) for split in kept}
    for i, val in enumerate(is_val):
        split = "val" if val else "train"
        keep[i] = positions[split] in survivors[split]
        positions[split] += 1
    if not any(k and not v for k, v in zip(keep, is_val, strict=True)):
        raise SlmError(f"{', '.join(inputs)}: every train document duplicates a val document; add distinct "
                       "documents or pass --data.dedup=false")
    return keep, stats


def _tokenized_chunks(
    chunks: Iterator[tuple[str, list[str]]], tokenizer: Tokenizer, dtype: np.dtype, num_workers: int
) -> Iterator[tuple[str, int, np.ndarray]]:
    """(split, number of documents, tokens) per chunk, in input order."""
    if num_workers <= 1:
        for split, texts in chunks:
            yield split, len(texts), tokenize_documents(tokenizer, texts, dtype)
        return
    context = multiprocessing.get_context("spawn")  # fork would copy a parent that may hold threads (torch, rayon)
    with context.Pool(num_workers, initializer=_init_worker, initargs=(tokenizer, dtype.str)) as pool:
        pending: collections.deque = collections.deque()
        for split, texts in chunks:
            pending.append((split, len(texts), pool.apply_async(_tokenize_chunk, (texts,))))
            if len(pending) > 2 * num_workers:
                split_, n, result = pending.popleft()
                yield split_, n, result.get()
        while pending:
            split_, n, result = pending.popleft()
            yield split_, n, result.get()


def _file_record(path: Path) -> dict:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"path": str(path.resolve()), "sha256": sha.hexdigest(), "bytes": path.stat().st_size}


def _check_out_dir(out: Path) -> None:
    """Refuse to replace anything but an earlier prepared dataset or an empty folder."""
    if out.is_file():
        raise SlmError(f"{out}: is a file; choose a folder path for the prepared dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise SlmError(f"{out}: folder exists and is not a prepared dataset; choose a new or empty output folder")


def prepare_dataset(
    inputs: list[str],
    tokenizer: Tokenizer,
    out_dir: str,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    num_workers: int = 2,
    shard_tokens: int = 2**26,
    text_column: str | None = None,
    glob: str = "*",
    txt_split: str = "auto",
    on_decode_error: str = "replace",
    progress: bool = True,
    dedup: DedupConfig | None = None,
) -> dict:
    """Tokenize `inputs` into `out_dir` (shards, tokenizer, manifest.json) and return the manifest.

    With `dedup`, exact and near duplicates are removed first (`slm.data.dedup`, datatrove's MinHash); the manifest's
    `dedup` entry counts what went, or says it was skipped."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(p) for p in inputs]
    if not inputs:
        raise SlmError("prepare: no input given; pass at least one file or folder")
    if not 0.0 <= val_fraction < 1.0:
        raise SlmError(f"val_fraction={val_fraction} must be in [0, 1); e.g. 0.05 for 5% validation documents")
    if shard_tokens < 1:
        raise SlmError(f"shard_tokens={shard_tokens} must be positive")
    out = Path(out_dir)
    _check_out_dir(out)
    options = {"text_column": text_column, "glob": glob, "txt_split": txt_split, "on_decode_error": on_decode_error}
    doc_stats = {"replaced_docs": 0, "skipped_docs": 0, "empty_docs": 0}
    is_val, sizes = _assign_splits(inputs, options, val_fraction, seed, doc_stats)
    keep, dedup_stats = None, {"enabled": False, "reason": "data.dedup=false"}
    if dedup is not None:
        keep, dedup_stats = _dedup(inputs, options, is_val, dedup)
    sources = [_file_record(f) for path in inputs for f in list_source_files(path, glob)]
    dtype = token_dtype(tokenizer.vocab_size)
    kept = keep or [True] * len(is_val)
    splits = {
        name: {
            "documents": sum(1 for v, k in zip(is_val, kept, strict=True) if k and v == (name == "val")),
            "bytes": sum(s for s, v, k in zip(sizes, is_val, kept, strict=True) if k and v == (name == "val")),
            "tokens": 0,
            "shards": [],
        }
        for name in SPLITS
    }
    with atomic_dir(out, overwrite=True, kind="dataset") as tmp:  # _check_out_dir: empty or a dataset
        tokenizer.save(tmp)
        writers = {name: ShardWriter(tmp, name, dtype, shard_tokens) for name in SPLITS}
        bar = tqdm(total=sum(kept), unit="doc", desc="tokenizing", disable=not progress, dynamic_ncols=True)
        with bar:
            chunks = _chunks(inputs, options, is_val, keep)
            workers = num_workers if sum(sizes) >= POOL_MIN_BYTES else 1
            for split, n_docs, tokens in _tokenized_chunks(chunks, tokenizer, dtype, workers):
                writers[split].write(tokens)
                splits[split]["tokens"] += len(tokens)
                bar.update(n_docs)
        for name in SPLITS:
            splits[name]["shards"] = writers[name].close()
        manifest = {
            "format": FORMAT,
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "tokenizer_hash": tokenizer.hash(),
            "tokenizer_file": "tokenizer.json",
            "seed": seed,
            "val_fraction": val_fraction,
            "sources": sources,
            "splits": splits,
            "doc_stats": doc_stats,
            "dedup": dedup_stats,
            "created_by": f"slm {slm.__version__}",
        }
        atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest
