"""Read raw corpora as a stream of `(doc_key, text)` documents.

Design decisions
- Formats handled by hand (plain text, JSON lines) because the rules matter more than the parsing: what a document
  is, which column holds the text, what to do with bytes that are not UTF-8. Parquet goes through pyarrow, imported
  only when a .parquet file is met.
- A single .txt file is split into paragraphs (blank-line separated) by default, so `slm data prepare input.txt`
  still gets a by-document validation split; inside a folder each file is one document. Splitting happens on bytes,
  before decoding, so a bad byte only marks the paragraph/line that holds it.
- Non-UTF-8 input is either decoded with U+FFFD replacement or the document is dropped; either way it is counted in
  `stats` so the data manifest shows it. Empty (whitespace-only) documents are dropped and counted, never an error;
  a corpus with no document at all is.
- Folders are walked recursively in sorted order, hidden files skipped, so the document order (and therefore the
  token stream) is reproducible. With the default glob "*" only known extensions are read; an explicit glob reads
  every match, files without a known extension as text (e.g. fortune files).
- `doc_key` is stable and human-readable: "rel/path.txt", "input.txt#para12", "data.jsonl:34", "x.parquet:row7".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from slm.errors import SlmError, loads_json

TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst", ".text"})
JSON_SUFFIXES = frozenset({".jsonl", ".json", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet"})
TEXT_COLUMN_CANDIDATES = ("text", "content", "document", "body")
TXT_SPLITS = ("auto", "file", "paragraph", "line")
DECODE_POLICIES = ("replace", "skip")

# A newline followed by one or more whitespace-only lines; the next paragraph keeps its indentation.
_PARAGRAPH_BREAK = re.compile(rb"\n(?:[ \t\r\f\v]*\n)+")


def _count(stats: dict | None, key: str) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + 1


def _kind(path: Path, explicit: bool) -> str | None:
    """Reader for a file: "text", "json", "parquet", or None to skip it."""
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "json"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in TEXT_SUFFIXES or explicit:
        return "text"
    return None


def list_source_files(path: str | Path, glob: str = "*") -> list[Path]:
    """The files `iter_documents(path, glob=glob)` reads, in reading order."""
    root = Path(path)
    if not root.exists():
        raise SlmError(f"{root}: no such file or folder; pass an existing .txt/.jsonl/.parquet file or a folder")
    if root.is_file():
        return [root]
    explicit = glob != "*"
    files = []
    for p in sorted(root.rglob(glob)):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and _kind(p, explicit):
            files.append(p)
    return files


def _decode(raw: bytes, on_decode_error: str, stats: dict | None) -> str | None:
    """UTF-8 text of one document, or None when it must be skipped under on_decode_error="skip"."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if on_decode_error == "skip":
            _count(stats, "skipped_docs")
            return None
        _count(stats, "replaced_docs")
        return raw.decode("utf-8", errors="replace")


def _split_text(raw: bytes, mode: str) -> Iterator[tuple[str, bytes]]:
    """(key suffix, bytes) pieces of a text file under a txt_split mode ("file", "paragraph", "line")."""
    if mode == "file":
        yield "", raw
    elif mode == "paragraph":
        for i, piece in enumerate(_PARAGRAPH_BREAK.split(raw), start=1):
            yield f"#para{i}", piece.lstrip(b"\r\n").rstrip()
    else:
        for i, line in enumerate(raw.splitlines(), start=1):
            yield f"#line{i}", line


def _iter_text_file(
    path: Path, key: str, mode: str, on_decode_error: str, stats: dict | None
) -> Iterator[tuple[str, str]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SlmError(f"{path}: cannot read ({e.strerror}); check the file's permissions") from None
    for suffix, piece in _split_text(raw, mode):
        if not piece.strip():
            _count(stats, "empty_docs")
            continue
        text = _decode(piece, on_decode_error, stats)
        if text is not None:
            yield key + suffix, text


def _pick_column(names: list[str], string_names: list[str], text_column: str | None, where: str) -> str:
    """The text column: the one asked for, else the first well-known name, else the only string column."""
    if text_column is not None:
        if text_column not in names:
            raise SlmError(
                f"{where}: no column {text_column!r} (columns: {', '.join(names)}); set text_column to one of them"
            )
        return text_column
    for name in TEXT_COLUMN_CANDIDATES:
        if name in names:
            return name
    if len(string_names) == 1:
        return string_names[0]
    raise SlmError(
        f"{where}: cannot tell which column holds the text (string columns: {', '.join(string_names) or 'none'}); "
        "set text_column"
    )


def _json_records(path: Path, on_decode_error: str, stats: dict | None) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of a JSON-lines file; a file starting with "[" is read as one JSON array."""
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
        f.seek(0)
        if head.startswith(b"["):
            raw = f.read()
            text = _decode(raw, on_decode_error, None)
            if text is None:
                raise SlmError(f"{path}: not valid UTF-8; fix the file or use on_decode_error=replace")
            try:
                records = loads_json(text)
            except json.JSONDecodeError as e:
                raise SlmError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); fix the file") from None
            yield from ((i, r) for i, r in enumerate(records, start=1))
            return
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            line = _decode(raw, on_decode_error, stats)
            if line is None:
                continue
            try:
                yield lineno, loads_json(line)
            except json.JSONDecodeError as e:
                raise SlmError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or delete that line") from None


def _iter_json_file(
    path: Path, key: str, text_column: str | None, on_decode_error: str, stats: dict | None
) -> Iterator[tuple[str, str]]:
    column: str | None = None
    for lineno, record in _json_records(path, on_decode_error, stats):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise SlmError(f"{where}: expected a JSON object per line, got {type(record).__name__}; fix that line")
        if column is None:
            strings = [k for k, v in record.items() if isinstance(v, str)]
            column = _pick_column(list(record), strings, text_column, where)
        if column not in record:
            raise SlmError(
                f"{where}: record has no {column!r} field (fields: {', '.join(map(repr, record))}); "
                "set text_column or fix the line"
            )
        value = record[column]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise SlmError(
                f"{where}: field {column!r} is {type(value).__name__}, not text; set text_column to a text field"
            )
        if not value.strip():
            _count(stats, "empty_docs")
            continue
        yield f"{key}:{lineno}", value


def _iter_parquet_file(path: Path, key: str, text_column: str | None, stats: dict | None) -> Iterator[tuple[str, str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise SlmError(f"{path}: reading .parquet needs pyarrow; run `pip install pyarrow`") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for bad files
        raise SlmError(f"{path}: not a readable parquet file ({e}); fix or remove it") from None
    schema = parquet.schema_arrow
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    column = _pick_column(schema.names, strings, text_column, str(path))
    if column not in strings:
        raise SlmError(
            f"{path}: column {column!r} is {schema.field(column).type}, not text; set text_column to a text column"
        )
    row = 0
    batches = parquet.iter_batches(columns=[column])
    while True:
        try:
            batch = next(batches, None)
        except Exception as e:  # a corrupt page or row group further into the file (ArrowInvalid, OSError)
            raise SlmError(f"{path}: corrupt parquet data after row {row} ({type(e).__name__}: {e}); fix or remove "
                           f"the file") from None
        if batch is None:
            break
        for value in batch.column(0).to_pylist():
            row += 1
            if not value or not value.strip():
                _count(stats, "empty_docs")
                continue
            yield f"{key}:row{row}", value


def iter_documents(
    path: str,
    *,
    text_column: str | None = None,
    glob: str = "*",
    txt_split: str = "auto",
    on_decode_error: str = "replace",
    stats: dict | None = None,
) -> Iterator[tuple[str, str]]:
    """Yield `(doc_key, text)` for every non-empty document under `path` (a file or a folder).

    `stats`, when given, gains counts "replaced_docs", "skipped_docs" and "empty_docs". Raises SlmError for a missing
    path, an unknown text column, a malformed JSON line, or when no document at all is found.
    """
    if txt_split not in TXT_SPLITS:
        raise SlmError(f"txt_split={txt_split!r} is not one of {', '.join(TXT_SPLITS)}; pick one of them")
    if on_decode_error not in DECODE_POLICIES:
        raise SlmError(
            f"on_decode_error={on_decode_error!r} is not one of {', '.join(DECODE_POLICIES)}; pick one of them"
        )
    root = Path(path)
    files = list_source_files(root, glob)
    explicit = glob != "*"
    single = root.is_file()
    found = 0
    for file in files:
        key = file.name if single else file.relative_to(root).as_posix()
        kind = _kind(file, explicit=True if single else explicit)
        if kind == "json":
            docs = _iter_json_file(file, key, text_column, on_decode_error, stats)
        elif kind == "parquet":
            docs = _iter_parquet_file(file, key, text_column, stats)
        else:
            mode = ("paragraph" if single else "file") if txt_split == "auto" else txt_split
            docs = _iter_text_file(file, key, mode, on_decode_error, stats)
        for doc in docs:
            found += 1
            yield doc
    if found == 0:
        what = f"{len(files)} file(s) matching {glob!r}" if not single else "the file"
        raise SlmError(f"{root}: no non-empty documents found in {what}; check the path, glob and text_column")
