"""Chat conversations derived from a pretraining corpus, so a recipe can go raw text -> chat model offline.

What the model learns from them: the chat format (the template's turn markers, stopping at its end-of-turn token) and
turn-taking — answering what was just said with the reply that followed it in the text, in the corpus's own style.
For Shakespeare that means Shakespearean replies to a line of dialogue; it is not instruction following or general
assistance (the corpus holds no instructions).

How, deterministically and with no model in the loop:
- A document is cut into blank-line separated blocks. In a play a block is a speaker tag (a short line ending in
  "." or in capitals: `Ham.`, `THESEUS`) followed by the speech; the tag is dropped and the speech (its first
  `max_lines` lines, stage directions in [brackets] removed) is one turn. A document where under a third of the blocks
  carry a speaker tag (prose, poems) uses every paragraph as a turn instead. Headings (ACT/SCENE lines, a lone tag,
  a bare numeral) end a run of turns: no conversation spans two scenes.
- Consecutive turns become a conversation of `turns` messages, alternating user/assistant and ending on an assistant
  reply; windows do not overlap. Turns that do not fit the training row are dropped from the end (by whole
  user/assistant pairs), so every conversation written fits `seq_len` and none is cut mid-reply.
- Train/val split by DOCUMENT with the same content hash and threshold as the pretraining data (`split_hash`,
  `data.val_fraction`, `run.seed`): a play's conversations are all on one side, and they sit on the side its text was
  on in pretraining, so val conversations come from text the model never trained on. (The lowest-hash document is
  always held out, so there is a val side even with `data.val_fraction=0`.)
- `max_conversations` keeps the ones with the lowest content hash (a fixed, order-independent choice).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from ..errors import SlmError, atomic_write_text
from ..tokenizer.chat_template import Message

_TAG = re.compile(r"^[A-Z][A-Za-z'&,.\- ]{0,40}\.$|^[A-Z][A-Z'&,.\- ]{1,40}$")  # "Ham." "FIRST WITCH." "THESEUS"
_HEADING = re.compile(r"^(ACT|SCENE|Scene|PERSONS|DRAMATIS|EPILOGUE|PROLOGUE|[IVXLC]+\.?$)")
_DIRECTION = re.compile(r"^\[.*\]\.?$")
_INLINE_DIRECTION = re.compile(r"\[[^\]]*\]\.?")


@dataclass(kw_only=True)
class CorpusChatsConfig:
    """How conversations are derived from the corpus when no chat files are given (slm.posttrain.corpus_chats)."""

    turns: int = 4  # messages per conversation: user, assistant, user, assistant (even; ends on a reply)
    max_lines: int = 4  # lines kept of each speech or paragraph (its opening lines)
    max_conversations: int = 4000  # cap, the lowest content hashes kept (0 = all)

    def __post_init__(self) -> None:
        if self.turns < 2 or self.turns % 2:
            raise SlmError(f"--sft.chats.turns={self.turns}: must be an even number >= 2 (user/assistant pairs)")
        if self.max_lines < 1:
            raise SlmError(f"--sft.chats.max_lines={self.max_lines}: must be >= 1")
        if self.max_conversations < 0:
            raise SlmError(f"--sft.chats.max_conversations={self.max_conversations}: must be >= 0 (0 = all)")


def _blocks(text: str) -> list[list[str]]:
    blocks, cur = [], []
    for line in text.splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def _is_tag(line: str) -> bool:
    return bool(_TAG.match(line)) and len(line.split()) <= 4 and not _HEADING.match(line)


def document_turns(text: str, max_lines: int) -> list[list[str]]:
    """Runs of consecutive turns (each a speech or paragraph, as text) of one document; headings split runs."""
    blocks = _blocks(text)
    dialogue = sum(len(b) > 1 and _is_tag(b[0]) for b in blocks) * 3 >= len(blocks) > 0
    runs: list[list[str]] = [[]]
    for block in blocks:
        if dialogue and len(block) > 1 and _is_tag(block[0]):
            lines = block[1:]
        elif not dialogue and not (len(block) == 1 and (_HEADING.match(block[0]) or _is_tag(block[0]))):
            lines = block
        else:  # a heading, a lone tag or a stage direction: the scene changes
            if _DIRECTION.match(" ".join(block)):
                continue  # an entrance inside a scene does not break the dialogue
            runs.append([])
            continue
        lines = [ln for ln in (_INLINE_DIRECTION.sub("", ln).strip() for ln in lines) if ln][:max_lines]
        if lines:
            runs[-1].append("\n".join(lines))
    return [r for r in runs if len(r) >= 2]


def document_conversations(text: str, cfg: CorpusChatsConfig) -> list[list[Message]]:
    """Non-overlapping windows of up to `cfg.turns` turns as alternating user/assistant messages."""
    out = []
    for run in document_turns(text, cfg.max_lines):
        for start in range(0, len(run) - 1, cfg.turns):
            window = run[start:start + cfg.turns]
            window = window[:len(window) // 2 * 2]
            out.append([{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(window)])
    return out


def fit_conversation(messages: list[Message], fits: Callable[[list[Message]], bool]) -> list[Message]:
    """`messages` without the trailing user/assistant pairs that make it too long ([] when even one pair is)."""
    while messages and not fits(messages):
        messages = messages[:-2]
    return messages


def _content_hash(obj: object) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode("utf-8"), digest_size=8).hexdigest()


def write_corpus_chats(documents: Iterable[str], out_dir: Path, cfg: CorpusChatsConfig, *,
                       fits: Callable[[list[Message]], bool], val_fraction: float, seed: int) -> dict:
    """Write <out_dir>/train.jsonl and val.jsonl ({"messages": [...]} per line); returns counts for the summary."""
    from ..data.pack import split_hash

    docs = [(split_hash(text, seed), text) for text in documents]
    if len(docs) < 2:
        raise SlmError("--sft.posttrain.train_data: chats derived from the corpus are split by document and the "
                       "corpus has fewer than 2; pass chat files (JSONL conversations) or more documents")
    threshold = val_fraction * 2.0**64
    lowest = min(h for h, _ in docs)
    splits: dict[str, list[list[Message]]] = {"train": [], "val": []}
    doc_counts = {"train": 0, "val": 0}
    for h, text in docs:
        side = "val" if h < threshold or h == lowest else "train"  # never an empty val side
        conversations = document_conversations(text, cfg)
        splits[side] += conversations
        doc_counts[side] += bool(conversations)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for side, conversations in splits.items():
        if not conversations:
            raise SlmError(f"--sft.chats: no {side} conversations could be derived from the corpus (too few "
                           f"documents with dialogue or paragraphs); pass chat "
                           f"files with --sft.posttrain.train_data")
        if cfg.max_conversations:  # val keeps its share of the cap, so eval stays cheap
            cap = cfg.max_conversations if side == "train" else max(1, round(cfg.max_conversations * 0.05))
            conversations = sorted(conversations, key=_content_hash)[:cap]
        conversations = [c for c in (fit_conversation(m, fits) for m in conversations) if c]
        if not conversations:
            raise SlmError(f"--sft.train.seq_len: no derived {side} conversation fits one training row; raise it "
                           f"or lower --sft.chats.max_lines")
        atomic_write_text(out_dir / f"{side}.jsonl",
                          "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations))
        counts[f"{side}_conversations"] = len(conversations)
        counts[f"{side}_documents"] = doc_counts[side]
    return {"source": "corpus", "dir": str(out_dir), **counts}
