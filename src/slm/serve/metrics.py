"""The server's counters, gauges and histograms, rendered in the Prometheus text exposition format (version 0.0.4).

Written by hand rather than with `prometheus_client`: a dozen series do not justify a dependency, and the text format
is a few lines. Updated from both the HTTP event loop and the scheduler thread, so every change holds one lock.
Tokens/s is the rate over a sliding window (the last `RATE_WINDOW_S` seconds of generated tokens), which is what a
dashboard wants to see move; the totals let Prometheus compute any other rate itself.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

RATE_WINDOW_S = 10.0
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last: +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts):
            total += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {total}')
        return out + [f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]


class ServerMetrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}  # (endpoint, HTTP status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self.steps = 0
        self.step_rows = 0  # sum over steps of live rows (mean batch occupancy = step_rows / steps)
        self.latency = Histogram()  # request: received -> last token
        self.ttft = Histogram()  # request: received -> first token
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps
        self.queue_depth = lambda: 0  # set by the scheduler
        self.running = lambda: 0

    def count_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[(endpoint, status)] = self.requests.get((endpoint, status), 0) + 1

    def count_step(self, rows: int) -> None:
        now = time.monotonic()
        with self.lock:
            self.steps += 1
            self.step_rows += rows
            self.completion_tokens += rows
            self._recent.append((now, rows))
            while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
                self._recent.popleft()

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        with self.lock:
            recent = [(t, n) for t, n in self._recent if t >= now - RATE_WINDOW_S]
        return sum(n for _, n in recent) / RATE_WINDOW_S if recent else 0.0

    def observe(self, attr: str, value: float) -> None:
        with self.lock:
            getattr(self, attr).observe(value)

    def add(self, attr: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, attr, getattr(self, attr) + n)

    def render(self) -> str:
        rate = self.tokens_per_s()
        with self.lock:
            lines = ["# HELP slm_requests_total HTTP requests by endpoint and status.",
                     "# TYPE slm_requests_total counter"]
            lines += [f'slm_requests_total{{endpoint="{e}",status="{s}"}} {n}'
                      for (e, s), n in sorted(self.requests.items())]
            for name, kind, value, help_ in (
                ("slm_prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens admitted."),
                ("slm_completion_tokens_total", "counter", self.completion_tokens, "Tokens generated."),
                ("slm_cancelled_total", "counter", self.cancelled, "Sequences cancelled by a client disconnect."),
                ("slm_decode_steps_total", "counter", self.steps, "Batched decode steps run."),
                ("slm_decode_step_rows_total", "counter", self.step_rows, "Live rows summed over decode steps."),
                ("slm_tokens_per_second", "gauge", round(rate, 3), f"Generated tokens/s over the last "
                                                                    f"{RATE_WINDOW_S:.0f} s."),
                ("slm_queue_depth", "gauge", self.queue_depth(), "Sequences waiting for a batch row."),
                ("slm_running_sequences", "gauge", self.running(), "Sequences in the running batch."),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
            for name, hist, help_ in (("slm_request_latency_seconds", self.latency, "Request received -> done."),
                                      ("slm_time_to_first_token_seconds", self.ttft, "Request received -> first "
                                                                                     "token.")):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram", *hist.lines(name)]
        return "\n".join(lines) + "\n"
