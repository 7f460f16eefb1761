"""A tiny deterministic run's loss curve must match the stored golden curve (catches silent training regressions).

The golden file is written by this same test: `SLM_UPDATE_GOLDEN=1 pytest tests/train/test_golden.py` — regenerate it
only for an intended change of the training maths, and say so in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from slm_testutil import run_tiny, tiny_config, train_losses

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden_loss.json"


def test_golden_loss_curve(tmp_path, prepared):
    cfg = tiny_config(tmp_path / "g", prepared, steps=30, batch_size=4, seq_len=32, warmup_steps=5, lr=3e-3)
    losses = train_losses(run_tiny(cfg, prepared))
    curve = [round(losses[s], 6) for s in sorted(losses)]
    if os.environ.get("SLM_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps({"steps": 30, "loss": curve}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["loss"]
    assert len(curve) == len(golden)
    assert curve[-1] < curve[0] - 1.0  # it does learn
    for step, (got, want) in enumerate(zip(curve, golden), 1):
        assert got == pytest.approx(want, abs=2e-3), f"step {step}: loss {got} vs golden {want}"
