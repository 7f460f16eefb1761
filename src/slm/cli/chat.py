"""`slm chat`: multi-turn chat in the terminal through the model's chat template, streaming each reply.

Decisions:
- Every turn re-renders the whole conversation with `ChatFormatter.encode_prompt`, the function SFT's training ids
  were cut with, so the model sees at chat time exactly the token layout it was trained on. Re-encoding a few
  thousand tokens per turn costs nothing next to generation; no cross-turn KV cache is kept.
- A reply ends at the template's end-of-turn token (<|im_end|> for ChatML), not the tokenizer's EOS.
- When the conversation no longer fits the context window with room for a reply, the oldest user/assistant exchange is
  dropped (the system message stays) and the user is told; if the last message alone is too long, the engine keeps
  its most recent tokens.
- Streaming and sampling commands are the REPL's (`slm.cli.repl`): `TextStreamer` for UTF-8-safe streaming, and
  `/temp /topk /topp /max`; chat adds `/reset` (forget the conversation) and `/system TEXT`.
- `input_fn`/`print_fn` are injectable so a scripted session is a test (Ctrl-D/`/quit` end it; Ctrl-C ends a reply).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch.nn as nn

from ..errors import SlmError
from ..config import SamplingConfig
from ..generate.engine import generate
from ..tokenizer.chat_template import ChatFormatter, Message
from .repl import TextStreamer, apply_command

HELP = """\
Chat with the model. Commands:
  /reset        forget the conversation        /system TEXT  set the system prompt (and reset)
  /temp X       temperature (0 = greedy)       /topk N       top-k (0 = off)
  /topp X       top-p in (0, 1]                /max N        max new tokens per reply
  /help         this text                      /quit         exit (Ctrl-D works too)"""


def fit_history(formatter: ChatFormatter, messages: list[Message], max_prompt: int) -> tuple[list[Message], int]:
    """Drop the oldest exchanges (keeping a system message) until the prompt fits; returns (messages, dropped)."""
    dropped = 0
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system):]
    while len(rest) > 1 and len(formatter.encode_prompt(system + rest)) > max_prompt:
        cut = 2 if len(rest) > 2 and rest[1]["role"] == "assistant" else 1
        rest = rest[cut:]
        dropped += cut
    return system + rest, dropped


def _reply(model: nn.Module, formatter: ChatFormatter, messages: list[Message], cfg: SamplingConfig,
           print_fn: Callable[..., Any], compile: bool | str = False) -> str:
    streamer = TextStreamer(lambda ids: formatter.tokenizer.decode(ids, skip_special=True))

    def on_token(row: int, token: int) -> None:
        piece = streamer.push(token)
        if piece:
            print_fn(piece, end="", flush=True)

    prompt = formatter.encode_prompt(messages)
    try:
        generate(model, [prompt], cfg, eos_id=formatter.end_of_turn_id, on_token=on_token, compile=compile)
    except KeyboardInterrupt:
        print_fn(streamer.finish() + "\n[interrupted]")
        return formatter.tokenizer.decode(streamer.ids, skip_special=True)
    print_fn(streamer.finish())
    return formatter.tokenizer.decode(streamer.ids, skip_special=True)


def run_chat(model: nn.Module, formatter: ChatFormatter, cfg: SamplingConfig, *, system_prompt: str = "",
             input_fn: Callable[[str], str] | None = None, print_fn: Callable[..., Any] | None = None,
             compile: bool | str = False) -> list[Message]:
    """Chat until /quit or EOF; returns the final conversation. `input_fn`/`print_fn` default to input/print;
    `compile` runs the decode step compiled (see `slm.generate.engine`)."""
    input_fn = input_fn or input
    print_fn = print_fn or print
    system = system_prompt
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    print_fn(f"slm chat: temperature={cfg.temperature} max_new_tokens={cfg.max_new_tokens}. /help for commands, "
             f"/quit or Ctrl-D to exit.")
    turns = 0
    max_len = getattr(getattr(model, "cfg", None), "max_seq_len", 2048)
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            return messages
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            return messages
        if text == "/reset" or text.startswith("/system"):
            if text.startswith("/system"):
                system = text[len("/system"):].strip()
            messages = [{"role": "system", "content": system}] if system else []
            print_fn("(conversation reset)")
            continue
        if text == "/help":
            print_fn(HELP)
            continue
        if text.startswith("/"):
            cfg, message = apply_command(text, cfg)
            print_fn(message)
            continue
        if any(tok in line for tok in formatter.specials):
            print_fn("(special tokens cannot be typed as text; rephrase)")
            continue
        messages.append({"role": "user", "content": line})
        messages, dropped = fit_history(formatter, messages, max_len - min(cfg.max_new_tokens, max_len // 2))
        if dropped:
            print_fn(f"(dropped the {dropped} oldest messages to fit the context window)")
        turn_cfg = dataclasses.replace(cfg, seed=cfg.seed + turns, num_samples=1)
        turns += 1
        print_fn("assistant> ", end="", flush=True)
        try:
            reply = _reply(model, formatter, messages, turn_cfg, print_fn, compile)
        except SlmError as err:
            print_fn(str(err))
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": reply if reply.strip() else "(no reply)"})
