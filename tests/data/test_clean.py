"""Quality filters: each filter on crafted documents, removal counts and examples, and the user-facing errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from datatrove.data import Document  # noqa: E402

from slm.data.clean import build_filter, build_filters, collect_removed, language_model_path  # noqa: E402
from slm.errors import SlmError  # noqa: E402

PROSE = ("The committee met on Tuesday to discuss the budget for the coming year. Members agreed that the "
         "library should receive more funding, and that the roads in the north of the town need repair. "
         "After a long debate, the chair thanked everyone for their time and closed the meeting. Later that "
         "evening, several residents wrote letters to the local paper about the decision. Some praised the new "
         "plan for the park, while others worried about rising taxes and the cost of the bridge. The mayor "
         "promised a public hearing in spring, where every household could share its views on these questions.")


def _doc(text: str, i: int = 0) -> Document:
    return Document(text=text, id=f"src/doc{i}", metadata={"source": "src", "split": "train"})


def _run(spec: dict, texts: list[str], tmp_path: Path) -> tuple[list[str], dict]:
    """Kept texts and the merged removal record of one filter."""
    f = build_filter(spec, 0, str(tmp_path / "removed"))
    kept = [d.text for d in f.run(iter([_doc(t, i) for i, t in enumerate(texts)]), rank=3, world_size=4)]
    return kept, collect_removed([spec], str(tmp_path / "removed"))["00_" + spec["name"]]


def test_length_filter_counts_and_examples(tmp_path: Path) -> None:
    kept, removed = _run({"name": "length", "min_chars": 10, "max_chars": 40, "min_words": 2},
                         ["short", "two words here", "x" * 50, "oneword_but_long"], tmp_path)
    assert kept == ["two words here"]
    assert removed["documents"] == 3 and removed["reasons"] == {"too_short": 1, "too_long": 1, "too_few_words": 1}
    assert removed["bytes"] == len("short") + 50 + len("oneword_but_long")
    assert [e["text"] for e in removed["examples"]] == ["short", "x" * 50, "oneword_but_long"]
    assert (tmp_path / "removed" / "00_length" / "00003.json").is_file()  # one file per (filter, task)


def test_regex_filter(tmp_path: Path) -> None:
    kept, removed = _run({"name": "regex", "pattern": r"(?i)lorem ipsum"}, ["Lorem Ipsum dolor", "plain text"],
                         tmp_path)
    assert kept == ["plain text"] and removed["documents"] == 1


def test_gopher_quality_removes_too_few_words(tmp_path: Path) -> None:
    kept, removed = _run({"name": "gopher_quality"}, [PROSE, "Too short to be a page."], tmp_path)
    assert kept == [PROSE]
    assert removed["documents"] == 1 and "gopher_short_doc" in removed["reasons"]


def test_gopher_repetition_removes_repeated_lines(tmp_path: Path) -> None:
    spam = "\n".join(["Buy cheap watches now at the best price online today"] * 30)
    kept, removed = _run({"name": "gopher_repetition"}, [PROSE, spam], tmp_path)
    assert kept == [PROSE] and removed["documents"] == 1


def test_c4_removes_code_and_javascript_lines(tmp_path: Path) -> None:
    lines = PROSE.replace(". ", ".\n")
    js = lines + "\nPlease enable JavaScript to view this page."
    code = lines + "\nWrite the {name} placeholder into the template file."
    kept, removed = _run({"name": "c4"}, [js, code], tmp_path)
    assert kept == [lines]  # the javascript notice line is dropped, the page kept
    assert removed["documents"] == 1 and removed["reasons"] == {"curly_bracket": 1}


def test_fineweb_removes_list_like_pages(tmp_path: Path) -> None:
    menu = "\n".join(["Home", "About", "Contact", "Shop", "Blog", "Login", "Cart", "Help"] * 5)
    kept, removed = _run({"name": "fineweb"}, [PROSE, menu], tmp_path)
    assert kept == [PROSE] and removed["documents"] == 1


def test_unknown_filter_and_bad_option_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SlmError, match=r"unknown filter 'gopherr'.*choose one of") as e:
        build_filters([{"name": "gopherr"}], str(tmp_path))
    assert "\n" not in str(e.value)
    with pytest.raises(SlmError, match=r"clean.filters\[0\] \(length\): bad option"):
        build_filters([{"name": "length", "min_lenght": 3}], str(tmp_path))
    with pytest.raises(SlmError, match="needs `pattern:`"):
        build_filters([{"name": "regex"}], str(tmp_path))
    with pytest.raises(SlmError, match="regex"):
        build_filters([{"name": "regex", "pattern": "("}], str(tmp_path))


def test_language_filter_without_model_is_a_clear_error(tmp_path: Path) -> None:
    if language_model_path().is_file():
        pytest.skip("the fastText model is installed here")
    with pytest.raises(SlmError, match=r"lid\.176\.bin, which cannot be downloaded here; place it at") as e:
        build_filters([{"name": "language", "languages": ["en"]}], str(tmp_path))
    assert "\n" not in str(e.value)


def test_collect_removed_merges_tasks(tmp_path: Path) -> None:
    spec = {"name": "length", "min_chars": 5, "id": "short"}
    for rank in (0, 1):
        f = build_filter(spec, 0, str(tmp_path))
        list(f.run(iter([_doc("abc", 0), _doc("abcdefgh", 1), _doc("ab", 2)]), rank=rank, world_size=2))
    merged = collect_removed([spec], str(tmp_path))["short"]
    assert merged["documents"] == 4 and merged["reasons"] == {"too_short": 4} and len(merged["examples"]) == 4
    assert json.loads((tmp_path / "short" / "00001.json").read_text())["documents"] == 2
