"""Post-training data: conversations (SFT, KD), preference pairs (DPO) and prompts with answers (GRPO, distillation).

Accepted record shapes, one JSON object per line of a .jsonl file (or a .json file holding one array of objects):
- conversation: `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}` (also under
  "conversations"); or single-turn columns `prompt`+`response`, `prompt`+`completion`, `instruction`[+`input`]+`output`
  (turned into one user and one assistant message). `slm distill generate` writes the first shape.
- preference pair: `{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}`; with message
  lists and no prompt, the shared leading messages are the prompt and the last assistant message is the completion.
- prompt: `{"prompt": str | messages, "answer": str (GRPO), "id": str (optional)}`; a .txt file is one prompt per line;
  a conversation record works too (its messages before the final assistant reply are the prompt).
- `hf:NAME[:SPLIT]` reads a Hugging Face dataset (needs `pip install datasets`), same shapes per row.

Decisions:
- Every bad record is either a one-line SlmError naming `file:line` and the problem (default), or, with
  `posttrain.on_bad_example=skip`, dropped and counted per reason in a `BadExamples` tally that the run prints and
  saves. Never a crash mid-run: everything is checked and tokenized up front, before the first step.
- Over-long means more than `max_tokens` rendered ids (seq_len + 1: the inputs plus the last target). Truncating a
  chat would silently cut the answer being trained on, so it is refused/skipped instead.
- The held-out split is by a hash of the record's content, so it is stable across runs and independent of order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import SlmError, loads_json
from ..tokenizer.chat_template import ChatFormatter, Message, RenderedChat, message_problem


@dataclass
class BadExamples:
    """Policy for malformed examples plus the tally of skipped ones."""

    policy: str = "error"  # error | skip
    counts: Counter = field(default_factory=Counter)

    def reject(self, where: str, problem: str) -> None:
        if self.policy == "error":
            raise SlmError(f"{where}: {problem}; fix it or pass --posttrain.on_bad_example=skip")
        self.counts[problem.split(" (")[0]] += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ", ".join(f"{n} x {reason}" for reason, n in self.counts.most_common()) or "none"


@dataclass
class Example:
    """A tokenized conversation: ids and the assistant mask (True = trained)."""

    ids: list[int]
    mask: list[bool]
    where: str


@dataclass
class PreferencePair:
    prompt_len: int  # ids before the completion (shared by both)
    chosen: RenderedChat  # prompt + chosen completion; mask only on the completion
    rejected: RenderedChat
    where: str


@dataclass
class PromptRecord:
    id: str
    messages: list[Message]
    answer: str
    where: str


# ------------------------------------------------------------------------------------------------------------ reading


def iter_records(spec: str) -> Iterator[tuple[str, Any]]:
    """(where, parsed value or an Exception for an unparsable line) for every record of a file or hf: dataset."""
    if spec.startswith("hf:"):
        yield from _iter_hf(spec)
        return
    path = Path(spec)
    if not path.is_file():
        raise SlmError(f"{path}: data file not found; pass .jsonl/.json files (or hf:NAME for a HF dataset)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SlmError(f"{path}: unreadable ({type(exc).__name__}); pass a UTF-8 .jsonl file") from None
    if path.suffix == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"{path}:{n}", {"prompt": line}
        return
    if text.lstrip().startswith("["):
        try:
            records = loads_json(text)
        except json.JSONDecodeError as exc:
            raise SlmError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix the file") from None
        if not isinstance(records, list):
            raise SlmError(f"{path}: expected a JSON array of records; fix the file")
        for i, rec in enumerate(records, 1):
            yield f"{path}[{i}]", rec
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{n}", loads_json(line)
        except json.JSONDecodeError as exc:
            yield f"{path}:{n}", ValueError(f"invalid JSON ({exc.msg})")


def _iter_hf(spec: str) -> Iterator[tuple[str, Any]]:
    name, _, split = spec[3:].partition(":")
    try:
        import datasets
    except ImportError:
        raise SlmError(f"{spec}: reading HF datasets needs `datasets`; run: pip install datasets") from None
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception as exc:  # datasets raises many types (missing, offline, bad split)
        raise SlmError(f"{spec}: cannot load ({type(exc).__name__}: {exc}); check the name, split and network") from None
    for i, row in enumerate(ds):
        yield f"{spec}[{i}]", dict(row)


def _as_messages(value: Any, role: str) -> list[Message] | None:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    return None


def conversation_of(record: Any) -> list[Message] | str:
    """The messages of a conversation record, or a problem phrase."""
    if isinstance(record, Exception):
        return str(record)
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    if record.get("finish_reason") == "length":
        return "truncated teacher response (finish_reason=length; raise max_new_tokens when generating)"
    for key in ("messages", "conversations"):
        if key in record:
            return record[key] if isinstance(record[key], list) else f"'{key}' is not a list"
    for p_key, r_key in (("prompt", "response"), ("prompt", "completion"), ("instruction", "output")):
        if p_key in record and r_key in record:
            prompt = record[p_key]
            if p_key == "instruction" and isinstance(record.get("input"), str) and record["input"].strip():
                prompt = f"{prompt}\n\n{record['input']}"
            msgs = _as_messages(prompt, "user")
            if msgs is None or not isinstance(record[r_key], str):
                return f"'{p_key}'/'{r_key}' must be text"
            return [*msgs, {"role": "assistant", "content": record[r_key]}]
    return f"no 'messages' (or prompt/response) field (fields: {', '.join(map(repr, record)) or 'none'})"


# ------------------------------------------------------------------------------------------------------- conversations


def load_conversations(specs: list[str], formatter: ChatFormatter, max_tokens: int, bad: BadExamples) -> list[Example]:
    """Tokenize every conversation of `specs` with its assistant mask; bad ones raise or are counted."""
    out = []
    for spec in specs:
        for where, record in iter_records(spec):
            messages = conversation_of(record)
            problem = messages if isinstance(messages, str) else message_problem(
                formatter.with_system(messages), specials=formatter.specials)
            if problem:
                bad.reject(where, problem)
                continue
            rendered = formatter.encode(messages)
            if len(rendered) > max_tokens:
                bad.reject(where, f"over-long conversation ({len(rendered)} tokens > {max_tokens}; raise "
                                  f"--train.seq_len)")
                continue
            out.append(Example(rendered.ids, rendered.mask, where))
    if not out:
        raise SlmError(f"{', '.join(specs) or '--posttrain.train_data'}: no usable conversations "
                       f"(skipped: {bad.summary()})")
    return out


# --------------------------------------------------------------------------------------------------- preference pairs


def _pair_messages(record: Any) -> tuple[list[Message], str, str] | str:
    if isinstance(record, Exception):
        return str(record)
    if not isinstance(record, dict) or "chosen" not in record or "rejected" not in record:
        return "expected an object with 'chosen' and 'rejected' (and 'prompt')"
    chosen, rejected = record["chosen"], record["rejected"]
    prompt = _as_messages(record["prompt"], "user") if "prompt" in record else None
    if "prompt" in record and prompt is None:
        return "'prompt' must be text or a list of messages"
    if isinstance(chosen, list) and isinstance(rejected, list):
        if prompt is None:  # implicit prompt: shared leading messages
            if not chosen or not rejected or chosen[:-1] != rejected[:-1]:
                return "chosen/rejected message lists must share everything but the last message"
            prompt = chosen[:-1]
        chosen, rejected = chosen[-1:], rejected[-1:]
        if any(not isinstance(m, dict) or m.get("role") != "assistant" for m in chosen + rejected):
            return "chosen/rejected must end with an assistant message"
        chosen, rejected = chosen[0].get("content"), rejected[0].get("content")
    if prompt is None:
        return "no 'prompt' field"
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        return "'chosen'/'rejected' must be text (or message lists)"
    return prompt, chosen, rejected


def load_preferences(specs: list[str], formatter: ChatFormatter, max_tokens: int,
                     bad: BadExamples) -> list[PreferencePair]:
    """Tokenize (prompt, chosen, rejected) pairs; only completion tokens are masked in."""
    out = []
    for spec in specs:
        for where, record in iter_records(spec):
            parsed = _pair_messages(record)
            if isinstance(parsed, str):
                bad.reject(where, parsed)
                continue
            prompt, chosen, rejected = parsed
            problem = message_problem(formatter.with_system([*prompt, {"role": "assistant", "content": chosen}]),
                                      specials=formatter.specials) or message_problem(
                [*prompt, {"role": "assistant", "content": rejected}], specials=formatter.specials)
            if problem:
                bad.reject(where, problem)
                continue
            if chosen == rejected:
                bad.reject(where, "chosen and rejected are identical")
                continue
            prompt_ids = formatter.encode_prompt(prompt)
            pair = []
            for completion in (chosen, rejected):
                r = formatter.encode_completion(prompt, completion)
                if r.ids[:len(prompt_ids)] != prompt_ids:
                    raise SlmError(f"{where}: the chat template renders the prompt differently with and without "
                                   f"the reply; use a prefix-stable template")
                pair.append(RenderedChat(r.ids, [False] * len(prompt_ids) + r.mask[len(prompt_ids):]))
            longest = max(len(pair[0]), len(pair[1]))
            if longest > max_tokens:
                bad.reject(where, f"over-long pair ({longest} tokens > {max_tokens}; raise --train.seq_len)")
                continue
            out.append(PreferencePair(len(prompt_ids), pair[0], pair[1], where))
    if not out:
        raise SlmError(f"{', '.join(specs) or '--posttrain.train_data'}: no usable preference pairs "
                       f"(skipped: {bad.summary()})")
    return out


# ------------------------------------------------------------------------------------------------------------ prompts


def load_prompts(specs: list[str], bad: BadExamples, *, need_answer: bool = False,
                 specials: list[str] | None = None) -> list[PromptRecord]:
    """Prompts (with an answer for GRPO) and a stable id: the record's "id", else a hash of the prompt."""
    out = []
    for spec in specs:
        for where, record in iter_records(spec):
            if isinstance(record, dict) and "prompt" not in record and isinstance(record.get("messages"), list):
                convo = record["messages"]  # a conversation: everything before its final reply is the prompt
                record = {**record, "prompt": convo[:-1] if convo and isinstance(convo[-1], dict)
                          and convo[-1].get("role") == "assistant" else convo}
            if isinstance(record, Exception) or not isinstance(record, dict) or "prompt" not in record:
                bad.reject(where, str(record) if isinstance(record, Exception) else
                           "expected an object with 'prompt' (or 'messages')")
                continue
            messages = _as_messages(record["prompt"], "user")
            problem = "'prompt' must be text or a list of messages" if messages is None else message_problem(
                messages, need_assistant=False, specials=specials or [])
            if not problem and messages[-1]["role"] == "assistant":
                problem = "the prompt ends with an assistant message"
            answer = record.get("answer", "")
            if not problem and need_answer and not (isinstance(answer, (str, int, float)) and str(answer).strip()):
                problem = "no 'answer' to reward against"
            if problem:
                bad.reject(where, problem)
                continue
            rid = str(record["id"]) if "id" in record else content_id(messages)
            out.append(PromptRecord(rid, messages, str(answer), where))
    if not out:
        raise SlmError(f"{', '.join(specs) or 'prompts'}: no usable prompts (skipped: {bad.summary()})")
    return out


def content_id(value: Any) -> str:
    """A stable short id of any JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def split_holdout(items: list, fraction: float, key: Any = None) -> tuple[list, list]:
    """(train, val): an item is held out when the hash of its content falls below `fraction`."""
    if fraction <= 0:
        return items, []
    train, val = [], []
    for item in items:
        k = key(item) if key else item
        h = int(content_id(k), 16) / 16 ** 16
        (val if h < fraction else train).append(item)
    if not train:
        raise SlmError(f"--posttrain.val_fraction={fraction}: no training examples left; lower it")
    return train, val
