"""Learning-rate schedules as pure functions of the step.

A pure function (no scheduler object) means nothing to save or restore on resume: the multiplier at step N is the
same whether the run was interrupted or not, which the bitwise resume test relies on.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, *, kind: str = "cosine", warmup_steps: int = 0,
                  min_lr_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Multiplier in [0, 1] applied to each param group's peak lr at optimizer step `step` (0-based).

    cosine: linear warmup, then cosine from 1 to min_lr_ratio at the last step.
    wsd:    linear warmup, constant 1, then linear decay to min_lr_ratio over the last `decay_fraction` of steps.
    linear: linear warmup, then linear decay to min_lr_ratio.
    constant: linear warmup, then 1.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    last = max(total_steps - 1, 1)
    if kind == "wsd":
        decay_start = max(warmup_steps, int(round(total_steps * (1.0 - decay_fraction))))
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(last - decay_start, 1))
        return 1.0 - (1.0 - min_lr_ratio) * progress
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(last - warmup_steps, 1)))
    if kind == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r}")
