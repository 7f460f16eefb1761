"""The scheduler: one thread that owns the model's `RunningBatch` and moves sequences queue -> batch row -> done.

Decisions:
- One thread does all model work (prefill, decode steps, sampling, detokenizing); the HTTP event loop only parses
  requests and writes responses. torch releases the GIL inside its kernels, so the two overlap, and no lock is ever
  held across a model call. Results cross to the event loop with `call_soon_threadsafe` onto each request's
  asyncio queue, the only thread-safe hand-off asyncio offers: once per decode step for all rows (one wake-up of
  the event loop, not one per row and token), which is what lets a 16-row batch stream 16 tokens per step.
- Between two decode steps the thread admits waiting sequences into free rows (continuous batching: a newcomer does
  not wait for the running requests to finish) and, after the step, retires every sequence that hit a stop token, a
  stop string, its `max_tokens` or whose client went away, freeing its row for the next one.
- `n > 1` becomes n sequences (seeds seed, seed+1, ...) that are scheduled independently and reassembled by index.
- The waiting queue is bounded (`max_queue` sequences): `submit` raises `QueueFull` and the HTTP layer answers 429
  with a Retry-After estimated from the recent mean request latency, instead of letting latency grow without bound.
- A cancelled request (client disconnect) is dropped from the queue at once and from the batch at the next step.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from ..config import SamplingConfig
from ..generate.batching import RunningBatch
from ..generate.engine import DecodeEngine
from .metrics import ServerMetrics
from .text import Decode, IncrementalDecoder, StopMatcher

log = logging.getLogger("slm.serve")
_ids = itertools.count()


class QueueFull(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Request:
    """One API call: `n` sequences over one or more prompts; events go to `queue` on the event loop `loop`."""

    prompts: list[list[int]]
    sampling: SamplingConfig  # per-request settings; sequence i draws with seed + i
    max_tokens: int
    stop: list[str]
    stop_ids: frozenset[int]
    n: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: bool = False
    received: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    open_sequences: int = 0

    def emit(self, event: tuple, outbox: dict | None = None) -> None:
        """Send `event` to the request's queue now, or add it to `outbox` (loop -> [(queue, event)]) for `deliver`."""
        if outbox is None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        else:
            outbox.setdefault(self.loop, []).append((self.queue, event))


def _put_all(events: list[tuple[asyncio.Queue, tuple]]) -> None:
    for queue, event in events:
        queue.put_nowait(event)


def deliver(outbox: dict) -> None:
    """Post an outbox's events, one `call_soon_threadsafe` per event loop, in the order they were added."""
    for loop, events in outbox.items():
        try:
            loop.call_soon_threadsafe(_put_all, events)
        except RuntimeError:  # that event loop is closed: nobody is listening any more
            pass
    outbox.clear()


@dataclass(eq=False)
class Sequence:
    """One choice: a prompt continued in one batch row."""

    request: Request
    index: int  # choice index: prompt p, sample j -> p * n + j
    prompt: list[int]
    sampling: SamplingConfig
    decoder: IncrementalDecoder
    matcher: StopMatcher
    tokens: int = 0


class Scheduler:
    def __init__(self, engine: DecodeEngine, decode: Decode, *, max_batch: int, max_queue: int,
                 max_len: int | None = None, metrics: ServerMetrics | None = None) -> None:
        self.batch = RunningBatch(engine, max_batch, max_len)
        self.decode = decode
        self.max_queue = max_queue
        self.metrics = metrics or ServerMetrics()
        self.metrics.queue_depth = lambda: self.queued
        self.metrics.running = lambda: self.batch.active
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._rows: dict[int, Sequence] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="slm-scheduler", daemon=True)
        self._outbox: dict = {}  # events of the current step, delivered together after it (scheduler thread only)

    @property
    def max_len(self) -> int:
        return self.batch.max_len

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def warmup(self) -> None:
        """Run one short sequence through prefill and two decode steps (compiles the step when it is compiled)."""
        row = self.batch.join([0, 0], SamplingConfig(temperature=0.0, max_new_tokens=2), 2)
        self.batch.step()
        self.batch.step()
        self.batch.leave(row)

    # ------------------------------------------------------------------------------------------------------------ #
    # called from the event loop

    def submit(self, request: Request) -> None:
        """Queue a request's sequences, or raise QueueFull."""
        seqs = [Sequence(request, p * request.n + j, prompt,
                         dataclasses.replace(request.sampling, seed=request.sampling.seed + j),
                         IncrementalDecoder(self.decode), StopMatcher(request.stop))
                for p, prompt in enumerate(request.prompts) for j in range(request.n)]
        with self._cond:
            if len(self._waiting) + len(seqs) > self.max_queue:
                raise QueueFull(self.retry_after())
            request.open_sequences = len(seqs)
            self._waiting.extend(seqs)
            self.metrics.add("prompt_tokens", sum(len(p) for p in request.prompts))
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """The client went away: drop its waiting sequences now, its running ones at the next step."""
        if request.cancelled or request.open_sequences == 0:
            return
        request.cancelled = True
        with self._cond:
            kept = [s for s in self._waiting if s.request is not request]
            dropped = len(self._waiting) - len(kept)
            self._waiting = collections.deque(kept)
        self.metrics.add("cancelled", dropped)

    def retry_after(self) -> int:
        lat = self.metrics.latency
        mean = lat.sum / lat.count if lat.count else 1.0
        return max(1, math.ceil(mean * self.queued / max(1, self.batch.max_batch)))

    # ------------------------------------------------------------------------------------------------------------ #
    # the scheduler thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._rows:
                    self._cond.wait()
                if self._closed:
                    return
            try:
                self._admit()
                if self._rows:
                    self._step()
            except Exception as exc:  # a bug must not kill the server silently: fail the live requests, go on
                log.exception("scheduler step failed")
                self._fail_all(f"{type(exc).__name__}: {exc}")
            finally:
                deliver(self._outbox)

    def _admit(self) -> None:
        while self.batch.free_rows() > 0:
            with self._cond:
                if not self._waiting:
                    return
                seq = self._waiting.popleft()
            if seq.request.cancelled:
                continue
            row = self.batch.join(seq.prompt, seq.sampling, self._budget(seq))
            self._rows[row] = seq

    def _budget(self, seq: Sequence) -> int:
        return min(seq.request.max_tokens, self.batch.max_len - len(seq.prompt))

    def _step(self) -> None:
        tokens = self.batch.step()
        self.metrics.count_step(len(tokens))
        for row, token in tokens.items():
            seq = self._rows[row]
            request = seq.request
            if request.cancelled:
                self._retire(row, None)
                self.metrics.add("cancelled")
                continue
            if request.first_token is None:
                request.first_token = time.monotonic()
                self.metrics.observe("ttft", request.first_token - request.received)
            seq.tokens += 1
            if token in request.stop_ids:
                self._retire(row, "stop", seq.matcher.finish())
                continue
            piece = seq.matcher.push(seq.decoder.push(token))
            if seq.matcher.stopped:
                self._retire(row, "stop", piece)
            elif seq.tokens >= self._budget(seq):
                tail = piece + seq.matcher.push(seq.decoder.finish()) + seq.matcher.finish()
                self._retire(row, "stop" if seq.matcher.stopped else "length", tail)
            elif piece:
                request.emit(("delta", seq.index, piece), self._outbox)

    def _retire(self, row: int, finish_reason: str | None, last_piece: str = "") -> None:
        seq = self._rows.pop(row)
        self.batch.leave(row)
        request = seq.request
        request.open_sequences -= 1
        if finish_reason is None:  # cancelled: nobody is listening
            return
        if last_piece:
            request.emit(("delta", seq.index, last_piece), self._outbox)
        request.emit(("done", seq.index, finish_reason, seq.tokens), self._outbox)
        if request.open_sequences == 0:
            self.metrics.observe("latency", time.monotonic() - request.received)

    def _fail_all(self, message: str) -> None:
        for row in list(self._rows):
            seq = self._rows.pop(row)
            self.batch.leave(row)
            seq.request.emit(("error", seq.index, message), self._outbox)
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        for seq in waiting:
            seq.request.emit(("error", seq.index, message), self._outbox)

