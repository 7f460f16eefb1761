"""Tokenize, mix and pack: per-task token files -> weights -> target token counts -> spine shards (+ parquet rows).

Design decisions
- Documents are tokenized once, in the pipeline's parallel tasks (`TokenizeStep`, `encode_batch` on ~1 MB batches,
  each document followed by EOS as in `slm.data.pack`), into per-task token files plus a 12-byte index entry per
  document: source id, token count, UTF-8 bytes and a 16-bit "mix bin" drawn from blake2b(seed, source, document key).
  Mixing
  then never needs the text again, and the expensive part scales with the executor's workers. A reader thread
  prepares the next batch (JSON, dedup lists) while `encode_batch`, which releases the GIL, encodes the current one.
- Mixing is over train tokens (val keeps its natural distribution so evaluations stay comparable). A source's share is
  weight / sum(weights) of `total_tokens` (default: the train tokens available after cleaning, so the dataset keeps
  its size and only the proportions change, SmallDoge's 7 : 2 : 0.5 : 0.5 style). Target > available means whole
  copies plus a remainder; the remainder (or a down-sampled target) takes the documents with the lowest mix bins, up to
  the bin whose cumulative token count is closest to the target. One 65,536-bin histogram per source makes that a
  constant-memory, seeded, order-independent choice; the error is at most one bin (~1/65,536 of the source) plus one
  document, far inside the 1 % tolerance on any real source.
- Packing writes the spine format of `slm.data.pack` (`ShardWriter`, same manifest keys), so `TokenDataset` and the
  trainer read it unchanged. Repeated documents are written in rounds (round r holds the documents with more than r
  copies), so copies of one document are never adjacent. Context lengths: the flat stream serves every sequence
  length at load time; `parquet: true` additionally writes rows of exactly L tokens for each listed L (the SLMS packed
  format), all lengths in the same pass over the tokens.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from slm.data.pack import ShardWriter
from slm.errors import SlmError, atomic_path

INDEX_DTYPE = np.dtype([("source", "<u2"), ("bin", "<u2"), ("tokens", "<u4"), ("bytes", "<u4")])
BINS = 1 << 16
_BATCH_CHARS = 1 << 20
_BLOCK_DOCS = 1 << 16
_ROWS_PER_FILE = 1 << 20


@dataclass(kw_only=True)
class MixConfig:
    total_tokens: int = 0  # train tokens after mixing; 0 = the train tokens available after clean + dedup
    seed: int = 0  # which documents a down-/up-sampled source keeps


@dataclass(kw_only=True)
class PackConfig:
    tokenizer: str = ""  # tokenizer.json or folder (e.g. from `slm tokenizer train`); "byte" = the byte tokenizer
    context_lengths: list[int] = field(default_factory=list)  # e.g. [256, 1024, 2048]: rows counted (and exported)
    parquet: bool = False  # also write rows of exactly L tokens per context length as parquet (SLMS format)
    shard_tokens: int = 2**26  # tokens per .bin shard

    def __post_init__(self) -> None:
        if not self.tokenizer:
            raise SlmError("--pack.tokenizer: required (a tokenizer.json/folder, or `byte`)")
        if any(n < 1 for n in self.context_lengths) or self.shard_tokens < 1:
            raise SlmError("--pack.context_lengths / --pack.shard_tokens: must be positive")


def mix_bin(seed: int, source: str, key: str) -> int:
    """16-bit position of a document in its source's sampling order."""
    digest = hashlib.blake2b(f"{seed}\0{source}\0{key}".encode(), digest_size=2).digest()
    return int.from_bytes(digest, "little")


class TokenizeStep:
    """Tokenize one split's documents of a task into `out_dir/{task:05d}.bin` + `.idx.npy` (written atomically)."""

    def __init__(self, tokenizer: Any, out_dir: Path, sources: list[str], seed: int, progress: bool = False) -> None:
        self.tokenizer, self.out_dir, self.sources, self.seed = tokenizer, Path(out_dir), sources, seed
        self.progress = progress

    def __call__(self, data: Iterator[Any], rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
        dtype = np.dtype("<u2") if self.tokenizer.vocab_size <= 65536 else np.dtype("<u4")
        source_id = {name: i for i, name in enumerate(self.sources)}
        index: list[np.ndarray] = []
        bin_path, idx_path = self.out_dir / f"{rank:05d}.bin", self.out_dir / f"{rank:05d}.idx.npy"
        with atomic_path(bin_path) as tmp_bin, open(tmp_bin, "wb") as out:
            for batch in _prefetched_batches(data):
                index.append(self._flush(batch, out, dtype, source_id))
            out.close()
            entries = np.concatenate(index) if index else np.zeros(0, dtype=INDEX_DTYPE)
            with atomic_path(idx_path) as tmp_idx, open(tmp_idx, "wb") as f:
                np.save(f, entries)
        return iter(())

    def _flush(self, batch: list[Any], out: Any, dtype: np.dtype, source_id: dict[str, int]) -> np.ndarray:
        encodings = self.tokenizer.inner.encode_batch([d.text for d in batch], add_special_tokens=False)
        eos = self.tokenizer.eos_id
        stream: list[int] = []
        lengths = np.empty(len(batch), dtype=np.int64)
        for i, enc in enumerate(encodings):
            ids = enc.ids
            stream += ids
            stream.append(eos)
            lengths[i] = len(ids) + 1
        flat = np.asarray(stream, dtype=dtype)  # one conversion per batch, not per document
        out.write(flat.tobytes())
        entries = np.empty(len(batch), dtype=INDEX_DTYPE)
        entries["tokens"] = lengths
        entries["bytes"] = [min(len(d.text.encode("utf-8")), 2**32 - 1) for d in batch]
        entries["source"] = [source_id[d.metadata["source"]] for d in batch]
        entries["bin"] = [mix_bin(self.seed, d.metadata["source"], d.id) for d in batch]
        return entries


def _batches(docs: Iterator[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.text)
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _prefetched_batches(docs: Iterator[Any]) -> Iterator[list[Any]]:
    """`_batches(docs)` produced by a reader thread: reading, JSON parsing and dedup of the next batch run while
    `encode_batch` (which releases the GIL) tokenizes this one. Errors of the reader are re-raised here."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        """Put `item` unless the consumer has stopped; never blocks forever."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in _batches(docs):
                if not offer(batch):
                    return
            offer(done)
        except BaseException as e:  # handed to the consumer, which raises it in the task
            offer(e)

    reader = threading.Thread(target=produce, name="tokenize-reader", daemon=True)
    reader.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _index(tokens_dir: Path, rank: int) -> np.ndarray:
    file = tokens_dir / f"{rank:05d}.idx.npy"
    return np.load(file, mmap_mode="r") if file.is_file() else np.zeros(0, dtype=INDEX_DTYPE)


def token_histograms(tokens_dir: Path, tasks: int, n_sources: int) -> np.ndarray:
    """(n_sources, BINS) int64: tokens per source and mix bin over all tasks of one split."""
    hist = np.zeros(n_sources * BINS, dtype=np.int64)
    for rank in range(tasks):
        idx = _index(tokens_dir, rank)
        for a in range(0, len(idx), _BLOCK_DOCS):
            block = idx[a : a + _BLOCK_DOCS]
            keys = block["source"].astype(np.int64) * BINS + block["bin"]
            hist += np.bincount(keys, weights=block["tokens"], minlength=n_sources * BINS).astype(np.int64)
    return hist.reshape(n_sources, BINS)


def plan_mix(hist: np.ndarray, names: list[str], weights: list[float], total_tokens: int = 0) -> list[dict]:
    """Per source: available and target tokens, whole copies and the mix-bin threshold of the remainder."""
    available = hist.sum(axis=1)
    total = int(total_tokens) or int(available.sum())
    shares = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    plan = []
    for s, name in enumerate(names):
        avail, target = int(available[s]), int(round(shares[s] * total))
        if avail == 0:
            raise SlmError(f"sources[{name}]: no train tokens left after clean and dedup, so weight {weights[s]} "
                           "cannot be met; relax the filters or remove the source")
        copies, remainder = divmod(target, avail)
        cum = np.concatenate([[0], np.cumsum(hist[s])])  # cum[b] = tokens in bins < b
        b = int(np.searchsorted(cum, remainder))  # first threshold reaching the remainder
        if b > 0 and remainder - cum[b - 1] < cum[min(b, BINS)] - remainder:
            b -= 1
        threshold = min(b, BINS)
        planned = copies * avail + int(cum[threshold])
        plan.append({"source": name, "weight": weights[s], "share": float(shares[s]), "available_tokens": avail,
                     "target_tokens": target, "copies": copies, "threshold_bin": threshold,
                     "planned_tokens": planned})
    return plan


class RowExporter:
    """Rows of exactly `length` tokens of the train stream, written as parquet (`input_ids`), rotated by row count."""

    def __init__(self, folder: Path, length: int) -> None:
        self.folder, self.length = folder, length
        self.rows, self._file_rows, self._files = 0, 0, 0
        self._carry = np.zeros(0, dtype=np.int64)
        self._writer: Any = None
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, tokens: np.ndarray) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = np.concatenate([self._carry, tokens.astype(np.int64)])
        n = len(data) // self.length
        self._carry = data[n * self.length :]
        if n == 0:
            return
        rows = pa.FixedSizeListArray.from_arrays(pa.array(data[: n * self.length].astype(np.int32)), self.length)
        table = pa.table({"input_ids": rows})
        if self._writer is None:
            path = self.folder / f"train-{self._files:05d}.parquet"
            self._writer = pq.ParquetWriter(path, table.schema)
        self._writer.write_table(table)
        self.rows += n
        self._file_rows += n
        if self._file_rows >= _ROWS_PER_FILE:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._file_rows, self._files = None, 0, self._files + 1


def write_packed(tokens_root: Path, tasks: int, plan: list[dict], out: Path, dtype: np.dtype, pack: PackConfig,
                 progress: bool = True) -> dict:
    """Write train (mixed) and val shards into `out`; returns the manifest's `splits` plus per-source written tokens."""
    copies = np.asarray([p["copies"] for p in plan], dtype=np.int64)
    threshold = np.asarray([p["threshold_bin"] for p in plan], dtype=np.int64)
    rounds = int((copies + (threshold > 0)).max()) if len(plan) else 1

    def train_counts(block: np.ndarray) -> np.ndarray:
        src = block["source"].astype(np.int64)
        return copies[src] + (block["bin"] < threshold[src])

    exporters = [RowExporter(out / "packed" / str(n), n) for n in pack.context_lengths] if pack.parquet else []
    splits = {}
    for split, counts_of, n_rounds in (("train", train_counts, rounds),
                                       ("val", lambda b: np.ones(len(b), dtype=np.int64), 1)):
        writer = ShardWriter(out, split, dtype, pack.shard_tokens)
        total = 0
        bar = tqdm(total=tasks * n_rounds, desc=f"pack {split}", unit="task", disable=not progress, leave=False)
        with bar:
            for r in range(n_rounds):
                for rank in range(tasks):
                    for chunk in _round(tokens_root / split, rank, dtype, counts_of, r):
                        writer.write(chunk)
                        total += len(chunk)
                        if split == "train":
                            for exporter in exporters:
                                exporter.write(chunk)
                    bar.update(1)
        splits[split] = {"tokens": total, "shards": writer.close()}
    for exporter in exporters:
        exporter.close()
    if exporters:
        splits["train"]["packed_parquet"] = {str(e.length): e.rows for e in exporters}
    return splits


def _round(tokens_dir: Path, rank: int, dtype: np.dtype, counts_of: Any, r: int) -> Iterator[np.ndarray]:
    """Token arrays of one task in round `r`: the documents whose repeat count exceeds `r`."""
    bin_file = tokens_dir / f"{rank:05d}.bin"
    if not bin_file.is_file() or bin_file.stat().st_size == 0:
        return
    tokens = np.memmap(bin_file, dtype=dtype, mode="r")
    idx = _index(tokens_dir, rank)
    offset = 0
    for a in range(0, len(idx), _BLOCK_DOCS):
        block = idx[a : a + _BLOCK_DOCS]
        ends = offset + np.cumsum(block["tokens"].astype(np.int64))
        starts = ends - block["tokens"]
        keep = counts_of(block) > r
        if keep.all():
            yield np.asarray(tokens[offset : int(ends[-1])])
        elif keep.any():
            yield np.concatenate([tokens[s:e] for s, e in zip(starts[keep], ends[keep], strict=True)])
        offset = int(ends[-1])


def written_per_source(tokens_root: Path, tasks: int, plan: list[dict]) -> dict[str, dict]:
    """Train documents, bytes and tokens each source contributes to the packed output (the plan, measured)."""
    copies = np.asarray([p["copies"] for p in plan], dtype=np.int64)
    threshold = np.asarray([p["threshold_bin"] for p in plan], dtype=np.int64)
    written = np.zeros((3, len(plan)), dtype=np.int64)
    for rank in range(tasks):
        idx = _index(tokens_root / "train", rank)
        for a in range(0, len(idx), _BLOCK_DOCS):
            block = idx[a : a + _BLOCK_DOCS]
            src = block["source"].astype(np.int64)
            n = copies[src] + (block["bin"] < threshold[src])
            for row, weights in enumerate((n, n * block["bytes"], n * block["tokens"])):
                written[row] += np.bincount(src, weights=weights, minlength=len(plan)).astype(np.int64)
    return {p["source"]: {"documents": int(written[0, s]), "bytes": int(written[1, s]), "tokens": int(written[2, s])}
            for s, p in enumerate(plan)}


def split_totals(tokens_dir: Path, tasks: int) -> dict[str, int]:
    """Documents, bytes and tokens of one split's token files (unmixed)."""
    totals = {"documents": 0, "bytes": 0, "tokens": 0}
    for rank in range(tasks):
        idx = _index(tokens_dir, rank)
        totals["documents"] += len(idx)
        totals["bytes"] += int(idx["bytes"].sum(dtype=np.int64)) if len(idx) else 0
        totals["tokens"] += int(idx["tokens"].sum(dtype=np.int64)) if len(idx) else 0
    return totals
