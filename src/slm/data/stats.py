"""Corpus and dataset statistics behind `slm data stats`.

Design decisions
- A prepared dataset is described from its own files: counts come from the manifest and document lengths from
  scanning the token stream for EOS (each document ends with exactly one), in fixed-size blocks so memory stays flat
  on large shards. No tokenizer and no source text are needed.
- Raw inputs are read with the same `iter_documents` rules as `prepare`, and tokenized (optionally) with
  `encode_batch`, so the figures predict what `prepare` will produce.
- "tokens" counts the packed stream (one EOS per document, as training sees it); "bytes/token" and the document
  lengths count text tokens only, so they measure the tokenizer's compression.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from slm.data.pack import MANIFEST_FILE
from slm.data.sources import iter_documents
from slm.tokenizer import Tokenizer

_SCAN_BLOCK = 1 << 24  # tokens per read while scanning for EOS
_ENCODE_BATCH = 1024


def _length_summary(lengths: np.ndarray) -> dict | None:
    if len(lengths) == 0:
        return None
    return {
        "min": int(lengths.min()),
        "median": float(np.median(lengths)),
        "mean": float(lengths.mean()),
        "p95": float(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
    }


def _summary(documents: int, n_bytes: int, tokens: int | None, lengths: np.ndarray | None) -> dict:
    text_tokens = None if tokens is None else tokens - documents
    return {
        "documents": documents,
        "bytes": n_bytes,
        "tokens": tokens,
        "bytes_per_token": (n_bytes / text_tokens) if text_tokens else None,
        "doc_tokens": None if lengths is None else _length_summary(lengths),
    }


def _eos_lengths(blocks: Iterable[np.ndarray], eos_id: int) -> np.ndarray:
    """Document lengths (EOS excluded) of a stream given as consecutive blocks; a tail without EOS is ignored."""
    lengths: list[np.ndarray] = []
    carry = 0  # tokens since the last EOS in earlier blocks
    for block in blocks:
        ends = np.flatnonzero(np.asarray(block) == eos_id)
        if len(ends) == 0:
            carry += len(block)
            continue
        gaps = np.diff(ends, prepend=-1)  # distance between consecutive EOS, EOS included
        gaps[0] += carry
        lengths.append(gaps - 1)
        carry = len(block) - 1 - int(ends[-1])
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def _prepared_stats(path: Path) -> dict:
    from slm.data.loader import TokenDataset

    dataset = TokenDataset(path)
    splits = {}
    for split, info in dataset.manifest["splits"].items():
        total = dataset.tokens(split)

        def blocks(split: str = split, total: int = total) -> Iterator[np.ndarray]:
            for start in range(0, total, _SCAN_BLOCK):
                yield dataset.read(split, start, min(_SCAN_BLOCK, total - start))

        lengths = _eos_lengths(blocks(), dataset.eos_id)
        splits[split] = _summary(int(info["documents"]), int(info["bytes"]), total, lengths)
    return {
        "path": str(path),
        "kind": "prepared",
        "vocab_size": dataset.vocab_size,
        "tokenizer_hash": dataset.manifest.get("tokenizer_hash"),
        "splits": splits,
        "doc_stats": dataset.manifest.get("doc_stats", {}),
        "dedup": dataset.manifest.get("dedup"),
        "data_recipe": "pipeline" in dataset.manifest,  # its dedup counts are in report.json beside the shards
    }


def _raw_stats(paths: list[str], tokenizer: Tokenizer | None, options: dict) -> dict:
    doc_stats = {"replaced_docs": 0, "skipped_docs": 0, "empty_docs": 0}
    documents, n_bytes, lengths, batch = 0, 0, [], []

    def flush() -> None:
        if tokenizer is not None and batch:
            lengths.extend(len(ids) for ids in tokenizer.encode_batch(batch))
        batch.clear()

    for path in paths:
        for _, text in iter_documents(path, stats=doc_stats, **options):
            documents += 1
            n_bytes += len(text.encode("utf-8"))
            batch.append(text)
            if len(batch) >= _ENCODE_BATCH:
                flush()
    flush()
    length_array = np.asarray(lengths, dtype=np.int64) if tokenizer is not None else None
    tokens = int(length_array.sum()) + documents if length_array is not None else None
    return {
        "path": ", ".join(paths),
        "kind": "raw",
        "vocab_size": tokenizer.vocab_size if tokenizer is not None else None,
        "tokenizer_hash": tokenizer.hash() if tokenizer is not None else None,
        "splits": {"all": _summary(documents, n_bytes, tokens, length_array)},
        "doc_stats": doc_stats,
    }


def dataset_stats(
    path_or_prepared_dir: str | os.PathLike | list[str],
    tokenizer: Tokenizer | None = None,
    *,
    text_column: str | None = None,
    glob: str = "*",
    txt_split: str = "auto",
    on_decode_error: str = "replace",
) -> dict:
    """Statistics of a prepared dataset folder (per split) or of raw inputs (tokens only with a tokenizer)."""
    paths = (
        [str(p) for p in path_or_prepared_dir]
        if isinstance(path_or_prepared_dir, list)
        else [str(path_or_prepared_dir)]
    )
    if len(paths) == 1 and (Path(paths[0]) / MANIFEST_FILE).is_file():
        return _prepared_stats(Path(paths[0]))
    options = {"text_column": text_column, "glob": glob, "txt_split": txt_split, "on_decode_error": on_decode_error}
    return _raw_stats(paths, tokenizer, options)


def _fmt(value: float | int | None, decimals: int = 0) -> str:
    if value is None:
        return "-"
    if decimals == 0:
        return f"{int(round(value)):,}"
    return f"{value:,.{decimals}f}"


def format_stats(stats: dict) -> str:
    """A plain-text table: one column per split."""
    splits = stats["splits"]
    names = list(splits)
    rows: list[tuple[str, list[str]]] = [
        ("documents", [_fmt(splits[s]["documents"]) for s in names]),
        ("bytes", [_fmt(splits[s]["bytes"]) for s in names]),
        ("tokens (with EOS)", [_fmt(splits[s]["tokens"]) for s in names]),
        ("bytes/token", [_fmt(splits[s]["bytes_per_token"], 2) for s in names]),
    ]
    for key, decimals in (("min", 0), ("median", 1), ("mean", 1), ("p95", 1), ("max", 0)):
        cells = []
        for s in names:
            summary = splits[s]["doc_tokens"]
            cells.append(_fmt(summary[key], decimals) if summary else "-")
        rows.append((f"doc tokens {key}", cells))
    label_width = max(len(label) for label, _ in rows)
    widths = [max(len(name), *(len(cells[i]) for _, cells in rows)) for i, name in enumerate(names)]
    lines = [f"{stats['kind']} data: {stats['path']}"]
    if stats.get("vocab_size") is not None:
        lines.append(f"vocab_size: {stats['vocab_size']}")
    lines.append(" " * label_width + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths, strict=True)))
    for label, cells in rows:
        lines.append(
            label.ljust(label_width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
        )
    doc_stats = stats.get("doc_stats") or {}
    if doc_stats:
        lines.append("dropped/repaired: " + ", ".join(f"{k}={v}" for k, v in doc_stats.items()))
    if stats.get("kind") == "prepared" and not stats.get("data_recipe"):
        from slm.data.dedup import describe_dedup

        lines.append(describe_dedup(stats.get("dedup")))
    return "\n".join(lines)
