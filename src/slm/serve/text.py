"""Token ids -> streamed text for one generated sequence: UTF-8-safe incremental decoding and stop strings.

- Incremental decoding re-decodes a short window of recent ids, not the whole sequence, and emits only what was added
  since the last emission; a window whose text ends in U+FFFD (a multi-byte character split across tokens) is held
  back until the next token completes it. Re-decoding (instead of decoding each token alone) keeps tokenizers whose
  decode of a token depends on its neighbours (leading-space markers, byte fallback) exact.
- Stop strings: text that could still grow into a stop string is held back, so a client never receives a prefix of a
  stop string that then turns out to stop the reply; on a match the reply is cut before the stop string (OpenAI
  semantics: the stop string itself is not returned).
"""

from __future__ import annotations

from typing import Callable

Decode = Callable[[list[int]], str]


class IncrementalDecoder:
    """Feed ids one at a time; get back the new text they complete ("" while a character is incomplete)."""

    def __init__(self, decode: Decode) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the window re-decoded for context
        self._read = 0  # ids before this are already emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self._prefix:self._read])
        text = self.decode(self.ids[self._prefix:])
        if text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(before):]

    def finish(self) -> str:
        """Whatever is still held back (an incomplete character at the end is emitted as decoded)."""
        before = self.decode(self.ids[self._prefix:self._read])
        text = self.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return text[len(before):]


class StopMatcher:
    """Holds back text that may be the start of a stop string; reports when one is complete."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, piece: str) -> str:
        """Add generated text; return the part that is safe to send. After a stop string, `stopped` is True."""
        if self.stopped:
            return ""
        self.text += piece
        if not self.stops:
            return self._send(len(self.text))
        longest = max(len(s) for s in self.stops)
        search_from = max(0, self.sent - longest + 1)
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
            self.text = self.text[:end]
            return self._send(end)
        return self._send(len(self.text) - self._held_suffix())

    def finish(self) -> str:
        """The held-back tail once generation ended without a stop string."""
        return "" if self.stopped else self._send(len(self.text))

    def _held_suffix(self) -> int:
        """Length of the longest end of `text` that is a proper prefix of some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text) - self.sent), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _send(self, upto: int) -> str:
        upto = max(upto, self.sent)
        out, self.sent = self.text[self.sent:upto], upto
        return out
