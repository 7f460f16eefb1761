"""Source reading: every input kind, document splitting, decode-error policies and the user-facing errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm.data.sources import iter_documents, list_source_files
from slm.errors import SlmError


def _docs(path: Path, **kwargs) -> list[tuple[str, str]]:
    return list(iter_documents(str(path), **kwargs))


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_single_txt_splits_into_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(b"First para\nline two\r\n\r\n\n   indented para\n  \t \nlast one\n\n\n")
    docs = _docs(path)
    assert [t for _, t in docs] == ["First para\nline two", "   indented para", "last one"]
    assert [k for k, _ in docs] == ["input.txt#para1", "input.txt#para2", "input.txt#para3"]


def test_txt_split_modes(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    assert [t for _, t in _docs(path, txt_split="file")] == ["one\ntwo\n\nthree\n"]
    stats: dict = {}
    lines = _docs(path, txt_split="line", stats=stats)
    assert lines == [("a.txt#line1", "one"), ("a.txt#line2", "two"), ("a.txt#line4", "three")]
    assert stats["empty_docs"] == 1
    with pytest.raises(SlmError, match="txt_split"):
        _docs(path, txt_split="sentence")


def test_folder_is_recursive_sorted_one_doc_per_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.txt").write_text("bee\n\nstill bee", encoding="utf-8")
    (tmp_path / "a.md").write_text("ay", encoding="utf-8")
    (tmp_path / "sub" / "c.rst").write_text("sea", encoding="utf-8")
    (tmp_path / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")
    (tmp_path / "noext").write_text("fortune", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    stats: dict = {}
    docs = _docs(tmp_path, stats=stats)
    assert docs == [("a.md", "ay"), ("b.txt", "bee\n\nstill bee"), ("sub/c.rst", "sea")]
    assert stats == {"empty_docs": 1}
    # An explicit glob reads every match, files without a known extension as text.
    assert _docs(tmp_path, glob="noext") == [("noext", "fortune")]
    assert _docs(tmp_path, glob="*.txt", txt_split="paragraph") == [
        ("b.txt#para1", "bee"),
        ("b.txt#para2", "still bee"),
    ]
    assert [p.name for p in list_source_files(tmp_path, "*.md")] == ["a.md"]


def test_jsonl_column_detection(tmp_path: Path) -> None:
    texts = _write_jsonl(
        tmp_path / "t.jsonl", [{"id": 1, "text": "alpha", "title": "x"}, {"id": 2, "text": "beta", "title": "y"}]
    )
    assert _docs(texts) == [("t.jsonl:1", "alpha"), ("t.jsonl:2", "beta")]
    content = _write_jsonl(tmp_path / "c.jsonl", [{"meta": "m", "content": "gamma"}])
    assert _docs(content) == [("c.jsonl:1", "gamma")]
    only = _write_jsonl(tmp_path / "o.jsonl", [{"n": 3, "passage": "delta"}])
    assert _docs(only) == [("o.jsonl:1", "delta")]
    named = _write_jsonl(tmp_path / "n.jsonl", [{"text": "no", "answer": "epsilon"}])
    assert _docs(named, text_column="answer") == [("n.jsonl:1", "epsilon")]


def test_jsonl_blank_lines_nulls_and_array_files(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": null}\n{"text": "  "}\n{"text": "four"}\n', encoding="utf-8")
    stats: dict = {}
    assert _docs(path, stats=stats) == [("d.jsonl:1", "one"), ("d.jsonl:5", "four")]
    assert stats["empty_docs"] == 2
    array = tmp_path / "arr.json"
    array.write_text(json.dumps([{"text": "a"}, {"text": "b"}]), encoding="utf-8")
    assert _docs(array) == [("arr.json:1", "a"), ("arr.json:2", "b")]


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(SlmError, match=r"bad\.jsonl:2: invalid JSON"):
        _docs(bad)
    records = _write_jsonl(tmp_path / "r.jsonl", [{"text": "ok"}, {"body": "no text"}])
    with pytest.raises(SlmError, match=r"r\.jsonl:2: .*'text'"):
        _docs(records)
    with pytest.raises(SlmError, match=r"r\.jsonl:1: no column 'missing'.*text_column"):
        _docs(records, text_column="missing")
    ambiguous = _write_jsonl(tmp_path / "amb.jsonl", [{"a": "x", "b": "y"}])
    with pytest.raises(SlmError, match="cannot tell which column"):
        _docs(ambiguous)
    numeric = _write_jsonl(tmp_path / "num.jsonl", [{"text": 5}])
    with pytest.raises(SlmError, match="not text"):
        _docs(numeric)
    not_object = _write_jsonl(tmp_path / "list.jsonl", [["text"]])
    with pytest.raises(SlmError, match="JSON object"):
        _docs(not_object)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    table = pa.table({"id": [1, 2, 3], "content": ["first", None, "third"], "lang": ["en", "en", "fr"]})
    pq.write_table(table, path)
    stats: dict = {}
    assert _docs(path, stats=stats) == [("p.parquet:row1", "first"), ("p.parquet:row3", "third")]
    assert stats["empty_docs"] == 1
    assert [t for _, t in _docs(path, text_column="lang")] == ["en", "en", "fr"]
    with pytest.raises(SlmError, match=r"p\.parquet: no column 'body'"):
        _docs(path, text_column="body")
    with pytest.raises(SlmError, match="not text"):
        _docs(path, text_column="id")
    # Parquet inside a folder is picked up like any other known format.
    assert len(_docs(tmp_path)) == 2


def test_non_utf8_replace_and_skip(tmp_path: Path) -> None:
    txt = tmp_path / "mixed.txt"
    txt.write_bytes(b"clean paragraph\n\nbad \xff\xfe bytes\n\nanother clean one\n")
    stats: dict = {}
    docs = _docs(txt, stats=stats)
    assert [t for _, t in docs] == ["clean paragraph", "bad \ufffd\ufffd bytes", "another clean one"]
    assert stats == {"replaced_docs": 1}
    stats = {}
    assert [t for _, t in _docs(txt, on_decode_error="skip", stats=stats)] == ["clean paragraph", "another clean one"]
    assert stats == {"skipped_docs": 1}
    lines = tmp_path / "lines.jsonl"
    lines.write_bytes(b'{"text": "ok"}\n{"text": "bad \xc3"}\n{"text": "bad \xe2\x82"}\n')
    stats = {}
    assert len(_docs(lines, stats=stats)) == 3 and stats == {"replaced_docs": 2}
    stats = {}
    assert _docs(lines, on_decode_error="skip", stats=stats) == [("lines.jsonl:1", "ok")] and stats == {
        "skipped_docs": 2
    }
    with pytest.raises(SlmError, match="on_decode_error"):
        _docs(txt, on_decode_error="ignore")


def test_missing_path_and_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(SlmError, match="nothere"):
        _docs(tmp_path / "nothere")
    (tmp_path / "blank.txt").write_text("\n\n  \n", encoding="utf-8")
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    with pytest.raises(SlmError, match="no non-empty documents"):
        _docs(tmp_path)
    with pytest.raises(SlmError, match="no non-empty documents"):
        _docs(tmp_path / "blank.txt")
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"\x00\x01")
    with pytest.raises(SlmError, match="0 file"):
        _docs(other)
