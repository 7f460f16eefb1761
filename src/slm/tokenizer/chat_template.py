"""Conversations -> token ids plus an assistant-only loss mask, through the tokenizer's jinja chat template.

Design decisions
- The template is the single source of truth for the text. Any HF jinja template works (ChatML is the default, SmolLM2's
  own template adds its default system prompt, a custom template can be passed in), rendered the way transformers
  renders it: a sandboxed jinja environment with `trim_blocks`/`lstrip_blocks`, `raise_exception` and `tojson`.
- The assistant mask is found by rendering prefixes, not by parsing the output. For assistant message k, its text starts
  where `render(messages[:k], add_generation_prompt=True)` ends and ends where `render(messages[:k+1])` ends. This needs
  no `{% generation %}` markers in the template (HF's `return_assistant_tokens_mask` does), so stock templates work. It
  does need the template to be prefix-stable (rendering more messages only appends text); a template that rewrites
  earlier turns (e.g. one that strips old reasoning) is refused with a clear error rather than masked wrongly.
- The loss covers the assistant content and the end-of-turn special token that closes it (`<|im_end|>`), so the model
  learns to stop; formatting whitespace the template emits after that token is not trained on (generation stops at
  the token, so the model never produces it).
- Ids are the concatenation of separately encoded segments (text between mask boundaries), not one encode of the whole
  string: then the prompt part of a training example is token-for-token what `encode_prompt` feeds the model at chat
  time, and no BPE merge can straddle the prompt/response boundary. For ChatML-style templates, whose boundaries sit
  at special tokens, this equals the joint encoding anyway.
- Validation is here, next to the rendering, so `slm sft`, `slm dpo`, `slm distill` and `slm chat` reject the same
  malformed messages with the same words; loaders add the file:line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from ..errors import SlmError
from .core import Tokenizer

ROLES = ("system", "user", "assistant")
Message = dict[str, str]


@dataclass
class RenderedChat:
    """A rendered conversation: ids and, per id, whether it is an assistant token the loss is computed on."""

    ids: list[int]
    mask: list[bool]

    def __len__(self) -> int:
        return len(self.ids)


def message_problem(messages: Any, *, need_assistant: bool = True, specials: Sequence[str] = ()) -> str | None:
    """Why `messages` is not a usable conversation (a short phrase), or None when it is fine."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is not an object with role and content"
        if "role" not in m:
            return f"message {i} has no 'role'"
        if m["role"] not in ROLES:
            return f"message {i} has unknown role {m['role']!r} (expected one of {', '.join(ROLES)})"
        if m["role"] == "system" and i != 0:
            return f"message {i} is a system message that is not the first one"
        content = m.get("content")
        if not isinstance(content, str):
            return f"message {i} ({m['role']}) has no string 'content'"
        if not content.strip():
            return f"message {i} ({m['role']}) has empty content"
        for tok in specials:
            if tok in content:
                return f"message {i} ({m['role']}) contains the special token {tok!r} as text"
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        return "no assistant message to train on"
    return None


@lru_cache(maxsize=16)
def _compile(template: str):
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:  # pragma: no cover - jinja2 ships with torch
        raise SlmError("chat templates need jinja2; run: pip install jinja2") from None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: __import__("datetime").datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise SlmError(f"chat template: jinja syntax error line {exc.lineno}: {exc.message}") from None


class ChatFormatter:
    """Render conversations with a chat template; encode them with an assistant mask or as a generation prompt."""

    def __init__(self, tokenizer: Tokenizer, template: str | None = None, system_prompt: str = "") -> None:
        self.tokenizer = tokenizer
        self.template = template or tokenizer.chat_template
        self.system_prompt = system_prompt
        self._jinja = _compile(self.template)
        self.specials = [t for t in tokenizer.special_tokens if t]
        self.end_of_turn_id = self._find_end_of_turn()

    # -- text -----------------------------------------------------------------------------------------------------
    def with_system(self, messages: list[Message]) -> list[Message]:
        """Prepend the configured system prompt when the conversation has no system message of its own."""
        if self.system_prompt and (not messages or messages[0].get("role") != "system"):
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        """The template's text for `messages` (no system prompt is added here)."""
        try:
            return self._jinja.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                      bos_token=self.tokenizer.bos_token, eos_token=self.tokenizer.eos_token)
        except Exception as exc:  # jinja raises TemplateError, TypeError, UndefinedError ... for bad templates
            raise SlmError(f"chat template failed to render ({type(exc).__name__}: {exc}); fix the template "
                           f"or the messages") from None

    def assistant_spans(self, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
        """(full text, [(start, end) character span of each assistant message's trained text])."""
        full = self.render(messages)
        spans = []
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self.render(messages[:k], add_generation_prompt=True)
            upto = self.render(messages[: k + 1])
            if not (upto.startswith(before) and full.startswith(upto)):
                raise SlmError("chat template is not prefix-stable (rendering more messages changes earlier text), "
                               "so assistant tokens cannot be located; use a template that only appends")
            spans.append((len(before), self._trim_after_end_token(upto, len(before))))
        return full, spans

    def _trim_after_end_token(self, text: str, start: int) -> int:
        """End of the trained span: drop trailing whitespace that follows a closing special token."""
        stripped = text.rstrip()
        if len(stripped) > start and any(stripped.endswith(tok) for tok in self.specials):
            return len(stripped)
        return len(text)

    def _find_end_of_turn(self) -> int:
        """Id of the special token that closes an assistant turn (e.g. <|im_end|>), else the tokenizer's EOS."""
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        try:
            text, spans = self.assistant_spans(probe)
        except SlmError:
            return self.tokenizer.eos_id
        start, end = spans[0]
        tail = text[start:end].rstrip()
        for tok in sorted(self.specials, key=len, reverse=True):
            if tail.endswith(tok):
                return self.tokenizer.special_tokens[tok]
        return self.tokenizer.eos_id

    # -- ids ------------------------------------------------------------------------------------------------------
    def encode(self, messages: list[Message]) -> RenderedChat:
        """Ids of the whole conversation and the mask of trained (assistant) tokens."""
        messages = self.with_system(messages)
        full, spans = self.assistant_spans(messages)
        ids: list[int] = []
        mask: list[bool] = []
        pos = 0
        for start, end in spans:
            for a, b, trained in ((pos, start, False), (start, end, True)):
                if b > a:
                    seg = self.tokenizer.encode(full[a:b])
                    ids += seg
                    mask += [trained] * len(seg)
            pos = end
        if pos < len(full):
            seg = self.tokenizer.encode(full[pos:])
            ids += seg
            mask += [False] * len(seg)
        return RenderedChat(ids, mask)

    def encode_prompt(self, messages: list[Message]) -> list[int]:
        """Ids that ask the model for the next assistant turn (generation prompt appended)."""
        messages = self.with_system(messages)
        text = self.render(messages, add_generation_prompt=True)
        # Same segmentation as `encode`: cut where earlier assistant spans were, so ids match training exactly.
        if not any(m["role"] == "assistant" for m in messages):
            return self.tokenizer.encode(text)
        _, spans = self.assistant_spans(messages)
        ids: list[int] = []
        pos = 0
        for start, end in spans:
            for a, b in ((pos, start), (start, end)):
                if b > a:
                    ids += self.tokenizer.encode(text[a:b])
            pos = end
        return ids + (self.tokenizer.encode(text[pos:]) if pos < len(text) else [])

    def encode_completion(self, prompt: list[Message], completion: str) -> RenderedChat:
        """Prompt messages plus one assistant reply; only the reply (and its end token) is masked in."""
        return self.encode([*prompt, {"role": "assistant", "content": completion}])


def render_conversation(tokenizer: Tokenizer, messages: list[Message], template: str | None = None,
                        system_prompt: str = "") -> RenderedChat:
    """One-shot helper: validate and encode a conversation with its assistant-only mask."""
    formatter = ChatFormatter(tokenizer, template, system_prompt)
    problem = message_problem(messages, specials=formatter.specials)
    if problem:
        raise SlmError(f"conversation: {problem}")
    return formatter.encode(messages)
