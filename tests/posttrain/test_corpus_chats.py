"""Chats derived from a corpus (slm.posttrain.corpus_chats): speeches become alternating turns, scenes are not
crossed, the split is by document with the pretraining data's rule, and what is written fits the training row."""

from __future__ import annotations

import json

import pytest

from slm.data.pack import split_hash
from slm.errors import SlmError
from slm.posttrain.corpus_chats import CorpusChatsConfig, document_conversations, write_corpus_chats

PLAY = """THE TRAGEDY OF TESTS

ACT I.

Scene I. A platform.

[Enter Bernardo and Francisco.]

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.
[Aside.] A second line.

Ber.
Long live the king!

FRANCISCO
Bernardo?

SCENE II. A room.

Ham.
A little more than kin,
and less than kind.

King.
How is it that the clouds still hang on you?
"""


def test_speeches_become_alternating_turns_within_a_scene():
    convs = document_conversations(PLAY, CorpusChatsConfig(turns=4, max_lines=4))
    assert convs[0] == [{"role": "user", "content": "Who's there?"},  # speaker tags and directions dropped
                        {"role": "assistant", "content": "Nay, answer me: stand, and unfold yourself.\nA second line."},
                        {"role": "user", "content": "Long live the king!"},
                        {"role": "assistant", "content": "Bernardo?"}]
    assert convs[1] == [{"role": "user", "content": "A little more than kin,\nand less than kind."},
                        {"role": "assistant", "content": "How is it that the clouds still hang on you?"}]
    assert len(convs) == 2  # no conversation spans the two scenes
    one_line = document_conversations(PLAY, CorpusChatsConfig(turns=2, max_lines=1))
    assert one_line[-1][0]["content"] == "A little more than kin,"


def test_split_by_document_deterministic_and_fitted(tmp_path):
    docs = [PLAY.replace("king", f"king {i}") for i in range(12)]
    fits = lambda m: sum(len(x["content"]) for x in m) <= 100  # noqa: E731
    a = write_corpus_chats(docs, tmp_path / "a", CorpusChatsConfig(), fits=fits, val_fraction=0.2, seed=1)
    b = write_corpus_chats(list(reversed(docs)), tmp_path / "b", CorpusChatsConfig(), fits=fits, val_fraction=0.2,
                           seed=1)
    for side in ("train", "val"):
        assert (tmp_path / "a" / f"{side}.jsonl").read_text() == (tmp_path / "b" / f"{side}.jsonl").read_text()
    assert a["val_documents"] >= 1 and a["train_documents"] >= 1
    val_docs = {i for i, d in enumerate(docs) if split_hash(d, 1) < 0.2 * 2.0**64} or {
        min(range(len(docs)), key=lambda i: split_hash(docs[i], 1))}
    val_marks = {f"king {i}!" for i in val_docs}
    named = {"train": 0, "val": 0}
    for side in ("train", "val"):
        for line in (tmp_path / "a" / f"{side}.jsonl").read_text().splitlines():
            messages = json.loads(line)["messages"]
            assert fits(messages) and len(messages) % 2 == 0
            text = " ".join(m["content"] for m in messages)
            if "king " in text:  # the conversation names its document: on that document's side only
                assert any(mark in text for mark in val_marks) == (side == "val")
                named[side] += 1
    assert named["train"] and named["val"]


def test_too_few_documents_is_a_named_error(tmp_path):
    with pytest.raises(SlmError, match="--sft.posttrain.train_data"):
        write_corpus_chats([PLAY], tmp_path, CorpusChatsConfig(), fits=lambda m: True, val_fraction=0.1, seed=0)
    with pytest.raises(SlmError, match="--sft.chats.turns"):
        CorpusChatsConfig(turns=3)
