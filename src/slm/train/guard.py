"""Training that heals: the loss-spike guard and preemption signals the trainer consults between steps.

Decisions:
- Spike guard (as llm.c's `-sl` z-score skip and OLMo-core's spike detection do): the loss of a step is compared with
  the mean and std of the last `spike_window` accepted losses; a loss more than `spike_zscore` std *above* the mean
  (one-sided: a sudden improvement is no danger) makes the trainer drop that step's gradients, as it does for a
  non-finite loss. The std has a floor of 1% of the mean so that a flat window (a memorised toy corpus) does not turn
  noise into spikes. Judging starts after `spike_min_steps` accepted steps. The guard only decides whether to apply
  an update the trainer computed anyway, in Python floats on the host, so a run without spikes is bitwise the same
  run as without the guard (the golden curve and bitwise-resume tests hold it to that); its window travels in the
  checkpoint so a resumed run judges as the uninterrupted one would.
- Rollback (in the trainer): `rollback_after` bad steps in a row (non-finite or spiked) or non-finite weights after
  an update reload the newest healthy checkpoint, optionally lower the lr and go on from the current data position
  (so the batches that caused it are not replayed). Skipping alone cannot repair weights an update already broke.
- Preemption: SIGTERM (what Slurm and Kubernetes send before SIGKILL) and SIGUSR1 (Slurm's `--signal`) only set a
  flag; the trainer saves a checkpoint at the next step boundary and raises `slm.errors.Preempted`, which the CLI
  turns into exit 128 + signal. A handler that saved from inside the signal would race the optimizer step.
"""

from __future__ import annotations

import math
import signal
import statistics
import threading
from collections import deque
from types import FrameType
from typing import Any

STD_FLOOR = 0.01  # relative to the window's mean loss


class SpikeGuard:
    """Running window of accepted losses; `is_spike(loss)` says whether a finite loss jumps out of it."""

    def __init__(self, zscore: float, window: int, min_steps: int) -> None:
        self.zscore, self.min_steps = zscore, min_steps
        self.losses: deque[float] = deque(maxlen=window)

    def score(self, loss: float) -> float:
        """How many (floored) std the loss lies above the window's mean; 0 while the window is too short."""
        if len(self.losses) < self.min_steps:
            return 0.0
        mean = statistics.fmean(self.losses)
        std = max(statistics.pstdev(self.losses, mean), STD_FLOOR * abs(mean), 1e-12)
        return (loss - mean) / std

    def is_spike(self, loss: float) -> bool:
        return self.zscore > 0 and math.isfinite(loss) and self.score(loss) > self.zscore

    def accept(self, loss: float) -> None:
        self.losses.append(loss)

    def state_dict(self) -> list[float]:
        return list(self.losses)

    def load_state_dict(self, losses: list[float] | None) -> None:
        self.losses.clear()
        self.losses.extend(losses or [])


class PreemptionFlag:
    """Context manager: while active, the named signals set `signum` instead of killing the process.

    Only the main thread may install signal handlers; elsewhere (a notebook's worker thread) it does nothing."""

    def __init__(self, names: list[str]) -> None:
        self.signals = [getattr(signal, n) for n in names]
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> "PreemptionFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
