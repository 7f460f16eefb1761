"""`slm generate --interactive`: the completion REPL, and incremental detokenisation for streaming to a terminal.

Decisions:
- Streaming text from token ids is not "decode each token": a byte-level BPE token can hold half of a UTF-8 character,
  and some decoders change earlier text once later tokens arrive (merged spaces). `TextStreamer` decodes the WHOLE list
  of new tokens each time and emits only the part past what it already emitted, holding back while the text ends in
  U+FFFD (an incomplete UTF-8 sequence that the next token will probably finish). Re-decoding is O(n^2) in the reply
  length, which is nothing next to a forward pass for replies of a few thousand tokens.
- At the end, `finish()` emits whatever is left, including a real U+FFFD for bytes that never became valid.
- The REPL is a completion prompt (the model continues your text); chat templates belong to
  `slm.tokenizer.chat_template`, the terminal chat to `slm.cli.chat`.
  Sampling settings change with slash commands that rebuild the `SamplingConfig`, so its validation is the only
  validation, and a bad value prints that one-line message instead of ending the session.
- Each generation in a session uses seed `cfg.seed + n` (n = generations so far): asking the same thing twice gives a
  new sample, and a scripted session is still reproducible.
- `input_fn`/`print_fn` are injectable (default `input`/`print`) so tests drive the loop with a script; `print_fn` is
  called like `print`, with `end=""` and `flush=True` while streaming.
- Ctrl-D (EOF) or `/quit` ends the loop; Ctrl-C during generation stops that reply only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Protocol

import torch.nn as nn

from ..errors import SlmError
from ..config import SamplingConfig
from ..generate.engine import generate

REPLACEMENT_CHAR = "\ufffd"


class TextTokenizer(Protocol):
    """What the REPL needs from a tokenizer."""

    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class TextStreamer:
    """Feed token ids one at a time, get back the newly printable text."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.emitted = 0  # characters of decode(self.ids) already handed out

    def push(self, token: int) -> str:
        """Add a token; return the text that became final (may be "", e.g. mid UTF-8 character)."""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith(REPLACEMENT_CHAR):
            return ""
        return self._take(text)

    def finish(self) -> str:
        """Return all text not yet emitted, including trailing replacement characters."""
        return self._take(self.decode(self.ids)) if self.ids else ""

    def _take(self, text: str) -> str:
        new = text[self.emitted:]
        self.emitted = max(self.emitted, len(text))
        return new


def stream_text(decode: Callable[[list[int]], str], ids: Iterable[int]) -> Iterator[str]:
    """Yield printable text pieces as ids arrive; their concatenation is decode(all ids) for prefix-stable decoders."""
    streamer = TextStreamer(decode)
    for token in ids:
        piece = streamer.push(token)
        if piece:
            yield piece
    tail = streamer.finish()
    if tail:
        yield tail


HELP = """\
Type text and the model continues it. Commands:
  /temp X   temperature (0 = greedy)      /topk N   top-k (0 = off)
  /topp X   top-p in (0, 1]               /max N    max new tokens
  /help     this text                     /quit     exit (Ctrl-D works too)"""

# command -> (SamplingConfig field, parser)
_SETTINGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "/temp": ("temperature", float),
    "/topk": ("top_k", int),
    "/topp": ("top_p", float),
    "/max": ("max_new_tokens", int),
}


def _settings_line(cfg: SamplingConfig) -> str:
    return (f"temperature={cfg.temperature} top_k={cfg.top_k} top_p={cfg.top_p} "
            f"max_new_tokens={cfg.max_new_tokens}")


def apply_command(line: str, cfg: SamplingConfig) -> tuple[SamplingConfig, str]:
    """Run a slash command: (new config, message to print). Bad input leaves `cfg` unchanged."""
    name, _, arg = line.partition(" ")
    arg = arg.strip()
    if name == "/help":
        return cfg, f"{HELP}\ncurrent: {_settings_line(cfg)}"
    if name not in _SETTINGS:
        return cfg, f"unknown command {name}; type /help for the list"
    field, parse = _SETTINGS[name]
    try:
        value = parse(arg)
    except ValueError:
        kind, example = ("an integer", "50") if parse is int else ("a number", "0.7")
        return cfg, f"{name} needs {kind}, e.g. {name} {example}"
    try:
        new = dataclasses.replace(cfg, **{field: value})
    except SlmError as err:
        return cfg, f"{name}: {err}"
    return new, f"{field} = {value}"


def _stream_reply(model: nn.Module, tokenizer: TextTokenizer, prompt: list[int], cfg: SamplingConfig,
                  print_fn: Callable[..., Any], compile: bool | str = False) -> None:
    """Generate for one prompt, printing text as tokens arrive."""
    for sample in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print_fn(f"--- sample {sample + 1}/{cfg.num_samples} ---")
        streamer = TextStreamer(tokenizer.decode)

        def on_token(row: int, token: int) -> None:
            piece = streamer.push(token)
            if piece:
                print_fn(piece, end="", flush=True)

        one = dataclasses.replace(cfg, num_samples=1, seed=cfg.seed + sample)
        try:
            generate(model, [prompt], one, eos_id=getattr(tokenizer, "eos_id", None), on_token=on_token,
                     compile=compile)
        except KeyboardInterrupt:
            print_fn(streamer.finish() + "\n[interrupted]")
            return
        except SlmError as err:  # e.g. the tokenizer produced ids the model does not know
            print_fn(streamer.finish())
            print_fn(str(err))
            return
        print_fn(streamer.finish())


def run_repl(model: nn.Module, tokenizer: TextTokenizer, cfg: SamplingConfig, *,
             input_fn: Callable[[str], str] = input, print_fn: Callable[..., Any] = print,
             compile: bool | str = False) -> None:
    """Read prompts until /quit or EOF, streaming each continuation; slash commands change sampling settings.
    `compile` runs the decode step compiled (see `slm.generate.engine`)."""
    print_fn(f"slm repl: {_settings_line(cfg)}. /help for commands, /quit or Ctrl-D to exit.")
    turns = 0
    while True:
        try:
            line = input_fn(">>> ")
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            return
        stripped = line.strip()
        if not stripped:
            continue
        if stripped in ("/quit", "/exit"):
            return
        if stripped.startswith("/"):
            cfg, message = apply_command(stripped, cfg)
            print_fn(message)
            continue
        prompt = tokenizer.encode(line)
        if not prompt:
            print_fn("(the prompt encodes to no tokens; type some text)")
            continue
        turn_cfg = dataclasses.replace(cfg, seed=cfg.seed + turns * cfg.num_samples)
        turns += 1
        _stream_reply(model, tokenizer, prompt, turn_cfg, print_fn, compile)
