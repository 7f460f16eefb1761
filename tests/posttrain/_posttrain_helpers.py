"""Helpers shared by the post-training tests (imported as a plain module; conftest puts this folder on sys.path)."""

import json
from pathlib import Path

from slm.models import CausalLM, build_model, preset_config

VOCAB = 320  # 256 bytes + 5 specials, rounded up


def tiny_model(seed: int = 0, **kw) -> CausalLM:
    m = build_model(preset_config("test", vocab_size=VOCAB, max_seq_len=256, **kw))
    m.reset_parameters(seed=seed)
    return m


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def chat(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


CHATS = [chat(f"What is {i} plus {i}?", f"It is {2 * i}.") for i in range(24)]
