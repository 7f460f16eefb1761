"""Quality figures of generated text that need no reference model: answer extraction and exact match for math
(GSM8K-style), UTF-8 validity, repetition, length. Used for lm-eval's generate-until tasks (`slm eval --tasks`) and
for post-training samples.

- `extract_answer`: the number after GSM8K's "####" marker when there is one, else the last number in the text
  (commas and a trailing period dropped), as lm-eval's gsm8k "flexible-extract" filter does.
- UTF-8 validity: a generation is valid when its tokens decode to text without U+FFFD (a byte-level model can emit
  byte sequences that are not UTF-8; the decoder replaces them). `utf8_validity` checks the raw bytes of generated
  ids instead (Simplified SLM's metric for byte models; `slm run` reports it for its samples).
- Repetition rate: the share of word 4-grams of a generation that repeat an earlier 4-gram of the same generation
  (0 = no loop, towards 1 = stuck in one), averaged over generations.
"""

from __future__ import annotations

import codecs
import re
from statistics import mean

_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def extract_answer(text: str) -> str | None:
    """The final numeric answer of a solution text, normalised ("1,234." -> "1234"); None when there is none."""
    marked = re.search(r"####\s*(" + _NUMBER.pattern + ")", text)
    found = marked.group(1) if marked else (_NUMBER.findall(text) or [None])[-1]
    if found is None:
        return None
    value = found.replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


def exact_match(prediction: str, answer: str) -> bool:
    """Whether the extracted answer of `prediction` equals the extracted answer of `answer` (GSM8K's "#### 42")."""
    want = extract_answer(answer)
    return want is not None and extract_answer(prediction) == want


def repetition_rate(text: str, n: int = 4) -> float:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def generation_stats(texts: list[str], lengths: list[int] | None = None) -> dict[str, float]:
    """utf8_valid (share), repetition_rate (mean), mean_tokens (or mean_chars without `lengths`) of generations."""
    if not texts:
        return {}
    stats = {"utf8_valid": mean(0.0 if "\ufffd" in t else 1.0 for t in texts),
             "repetition_rate": mean(repetition_rate(t) for t in texts),
             "mean_chars": mean(len(t) for t in texts)}
    if lengths:
        stats["mean_tokens"] = mean(lengths)
    return stats


def utf8_validity(tokenizer, generations: list[list[int]], max_new_tokens: int) -> float | None:
    """Share of generations (new token ids) whose bytes are valid UTF-8, or None without generations or for a
    tokenizer that is not byte-level (its tokens are text, always valid). A generation that reached
    `max_new_tokens` may end inside a character: that unfinished last character is not held against it (the limit
    cut it, not the model); one that stopped earlier (at EOS) must end on a whole character."""
    if not generations or not tokenizer.is_byte_level():
        return None
    valid = 0
    for ids in generations:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(b"".join(tokenizer.ids_to_bytes(ids)),
                                                           final=len(ids) < max_new_tokens)
            valid += 1
        except UnicodeDecodeError:
            pass
    return valid / len(generations)
