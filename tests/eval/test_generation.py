"""Reference-free generation figures: GSM8K-style answer extraction and exact match, UTF-8 validity, repetition."""

from __future__ import annotations

import pytest

from slm.eval.generation import exact_match, extract_answer, generation_stats, repetition_rate


@pytest.mark.parametrize("text,want", [
    ("so she has 3 + 4 = 7 apples.\n#### 7", "7"),
    ("The answer is 1,234.", "1234"),
    ("first 12, then -5", "-5"),
    ("#### 42 and later 7", "42"),
    ("it costs 3.50 dollars", "3.50"),
    ("8.0", "8"),
    ("no number here", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_exact_match_compares_extracted_answers():
    assert exact_match("We add them: 12 + 30 = 42", "#### 42")
    assert not exact_match("We add them: 12 + 30 = 43", "#### 42")
    assert not exact_match("anything", "no answer in the reference")


def test_repetition_rate_and_stats():
    assert repetition_rate("a b c d e f g") == 0.0
    assert repetition_rate("x y z w " * 10) > 0.8
    stats = generation_stats(["fine text here", "bad \ufffd byte"], [3, 4])
    assert stats["utf8_valid"] == 0.5 and stats["mean_tokens"] == 3.5
    assert generation_stats([]) == {}
