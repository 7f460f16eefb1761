"""Where a pipeline source's documents come from: local files, a Hugging Face Hub snapshot, or `datasets` streaming.

Design decisions
- A hub source is first materialised with `huggingface_hub.snapshot_download(repo_type="dataset", allow_patterns=...)`,
  the way SLMS fetches a few FineWeb shards: the files land in the HF cache (resumable, shared between runs) and are
  then read by the same local reader as any folder. `allow_patterns` is also applied to local folders, so a recipe
  behaves the same whether it points at the hub or at a copy of the repo on disk (that is how it is tested here: no
  network).
- `datasets` streaming (`hf_dataset:`) is for datasets that are not plain files (scripts, gated configs); it is
  imported only when used, with the install hint otherwise.
- Local files reuse the readers of `slm.data.sources` (same document rules, keys and column detection as
  `slm data prepare`). What is added here is a per-source policy for bad records: `on_bad_record: error` (default)
  stops with one line naming the file and line; `skip` drops the corrupt JSON line / record without the text field /
  unreadable parquet file and counts it, and the count goes into the pipeline report.
- Every source must yield at least one document: an empty source is an error, never a silently zero-weight mix entry.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from slm.data.corpora import resolve_input
from slm.data.sources import (
    _count,
    _decode,
    _iter_json_file,
    _iter_parquet_file,
    _iter_text_file,
    _kind,
    _pick_column,
    list_source_files,
)
from slm.errors import SlmError, loads_json

SPLIT_CHOICES = ("auto", "train", "val")
BAD_RECORD_POLICIES = ("error", "skip")


@dataclass(kw_only=True)
class SourceConfig:
    name: str = ""  # label in the report and the mix; "" = derived from path/hub/hf_dataset
    path: str = ""  # local file or folder (txt/md/rst, jsonl, parquet), or a builtin corpus name (shakespeare)
    hub: str = ""  # HF Hub dataset repo id, fetched with snapshot_download (or a local copy of such a repo)
    allow_patterns: list[str] = field(default_factory=list)  # hub/folder files to read, e.g. ["data/CC-MAIN-2024-10/*"]
    revision: str = ""  # hub revision (branch, tag or commit); "" = main
    hf_dataset: str = ""  # `datasets` name read with streaming=True (needs `pip install datasets`)
    hf_config: str = ""  # `datasets` config name
    hf_split: str = "train"  # `datasets` split
    weight: float = 1.0  # mixing weight; shares are weight / sum(weights) of the train tokens
    text_column: str = ""  # jsonl/parquet/datasets field holding the text; "" = auto-detect
    glob: str = "*"  # which files of a folder to read
    txt_split: str = "auto"  # documents of a .txt: auto | file | paragraph | line
    split: str = "auto"  # auto (by content hash, val_fraction) | train | val (the whole source is held out)
    on_bad_record: str = "error"  # corrupt JSON line, record without the text field, unreadable parquet: error | skip
    max_documents: int = 0  # read at most this many documents (0 = all)

    def __post_init__(self) -> None:
        given = [k for k in ("path", "hub", "hf_dataset") if getattr(self, k)]
        where = f"sources[{self.name or '?'}]"
        if len(given) != 1:
            raise SlmError(f"{where}: set exactly one of path, hub, hf_dataset (got {', '.join(given) or 'none'})")
        if not self.weight > 0:
            raise SlmError(f"{where}.weight={self.weight}: must be > 0; remove the source instead of weighting it 0")
        if self.split not in SPLIT_CHOICES:
            raise SlmError(f"{where}.split={self.split!r}: choose one of {', '.join(SPLIT_CHOICES)}")
        if self.on_bad_record not in BAD_RECORD_POLICIES:
            raise SlmError(f"{where}.on_bad_record={self.on_bad_record!r}: choose error or skip")
        if not self.name:
            self.name = Path(self.path or self.hub or self.hf_dataset).name or "source"


def snapshot_hub_source(src: SourceConfig, cache_dir: str | None = None) -> Path:
    """Local folder with the hub repo's files matching `allow_patterns` (downloaded when `src.hub` is a repo id)."""
    local = Path(src.hub).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SlmError(f"sources[{src.name}].hub: needs huggingface_hub; run `pip install huggingface_hub`") from None
    try:
        folder = snapshot_download(
            repo_id=src.hub,
            repo_type="dataset",
            revision=src.revision or None,
            allow_patterns=src.allow_patterns or None,
            cache_dir=cache_dir,
        )
    except Exception as e:  # network, auth, unknown repo: all user-fixable
        raise SlmError(f"sources[{src.name}].hub={src.hub}: download failed ({type(e).__name__}: {e}); "
                       "check the repo id, revision, network and HF_TOKEN") from None
    return Path(folder)


def source_root(src: SourceConfig) -> tuple[Path, str]:
    """(file or folder to read, glob) of a local or hub source."""
    if src.hub:
        return snapshot_hub_source(src), src.glob
    folder, glob = resolve_input(src.path)
    return Path(folder), src.glob if src.glob != "*" else (glob or src.glob)  # a recipe's own glob wins


def source_files(src: SourceConfig) -> tuple[Path, list[Path]]:
    """The root and the files a local/hub source reads, in order; `allow_patterns` match paths relative to the root."""
    root, glob = source_root(src)
    files = list_source_files(root, glob)
    if src.allow_patterns and root.is_dir():
        rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
        files = [p for p in files if any(fnmatch.fnmatch(rel(p), pat) for pat in src.allow_patterns)]
    return root, files


def _tolerant_json_file(path: Path, key: str, src: SourceConfig, stats: dict) -> Iterator[tuple[str, str]]:
    """JSON lines where a corrupt line or a record without the text field is skipped and counted."""
    column = src.text_column or None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            line = _decode(raw, "replace", stats)
            try:
                record = loads_json(line)
            except json.JSONDecodeError:
                _count(stats, "skipped_records")
                continue
            if not isinstance(record, dict):
                _count(stats, "skipped_records")
                continue
            if column is None:
                strings = [k for k, v in record.items() if isinstance(v, str)]
                column = _pick_column(list(record), strings, None, f"{path}:{lineno}")
            value = record.get(column)
            if not isinstance(value, str):
                _count(stats, "skipped_records")
                continue
            if not value.strip():
                _count(stats, "empty_docs")
                continue
            yield f"{key}:{lineno}", value


def _parquet_file(path: Path, key: str, src: SourceConfig, stats: dict) -> Iterator[tuple[str, str]]:
    try:
        yield from _iter_parquet_file(path, key, src.text_column or None, stats)
    except SlmError as e:
        # A wrong column is configuration, never skipped; only an unreadable file is.
        if src.on_bad_record == "error" or "not a readable parquet file" not in str(e):
            raise
        _count(stats, "skipped_files")
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses on a corrupt page mid-file
        if src.on_bad_record == "error":
            raise SlmError(f"{path}: corrupt parquet data ({type(e).__name__}: {e}); fix the file or set "
                           "on_bad_record: skip") from None
        _count(stats, "skipped_files")


def file_documents(src: SourceConfig, root: Path, file: Path, stats: dict) -> Iterator[tuple[str, str]]:
    """`(doc_key, text)` of one file of a local/hub source (keys relative to the source root)."""
    single = root.is_file()
    key = file.name if single else file.relative_to(root).as_posix()
    kind = _kind(file, explicit=single or src.glob != "*")
    if kind == "json":
        if src.on_bad_record == "skip":
            yield from _tolerant_json_file(file, key, src, stats)
        else:
            yield from _iter_json_file(file, key, src.text_column or None, "replace", stats)
    elif kind == "parquet":
        yield from _parquet_file(file, key, src, stats)
    else:
        mode = ("paragraph" if single else "file") if src.txt_split == "auto" else src.txt_split
        yield from _iter_text_file(file, key, mode, "replace", stats)


def _local_documents(src: SourceConfig, stats: dict) -> Iterator[tuple[str, str]]:
    root, files = source_files(src)
    for file in files:
        yield from file_documents(src, root, file, stats)


def _streamed_documents(src: SourceConfig, stats: dict) -> Iterator[tuple[str, str]]:
    try:
        import datasets
    except ImportError:
        raise SlmError(f"sources[{src.name}].hf_dataset: needs the datasets library; run `pip install datasets`"
                       ) from None
    try:
        stream = datasets.load_dataset(src.hf_dataset, src.hf_config or None, split=src.hf_split, streaming=True)
    except Exception as e:  # unknown dataset/config/split, network
        raise SlmError(f"sources[{src.name}].hf_dataset={src.hf_dataset}: cannot open ({type(e).__name__}: {e}); "
                       "check the name, hf_config and hf_split") from None
    column = src.text_column or None
    for i, record in enumerate(stream):
        if column is None:
            column = _pick_column(list(record), [k for k, v in record.items() if isinstance(v, str)], None,
                                  f"{src.hf_dataset}[{i}]")
        value = record.get(column)
        if not isinstance(value, str):
            if src.on_bad_record == "error":
                raise SlmError(f"{src.hf_dataset}[{i}]: no text in field {column!r}; set text_column or "
                               "on_bad_record: skip")
            _count(stats, "skipped_records")
            continue
        if not value.strip():
            _count(stats, "empty_docs")
            continue
        yield f"{src.hf_dataset}:{i}", value


def iter_source_documents(src: SourceConfig, stats: dict | None = None) -> Iterator[tuple[str, str]]:
    """`(doc_key, text)` of one source, at most `max_documents`; raises SlmError when the source has no document."""
    stats = {} if stats is None else stats
    docs = _streamed_documents(src, stats) if src.hf_dataset else _local_documents(src, stats)
    found = 0
    for doc in docs:
        found += 1
        yield doc
        if src.max_documents and found >= src.max_documents:
            return
    if found == 0:
        raise SlmError(f"sources[{src.name}]: no non-empty documents found; check its path/patterns/text_column, "
                       "or remove the source")
