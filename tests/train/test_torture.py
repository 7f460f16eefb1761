"""kill -9 torture (slow tier): kill the trainer at random moments — also while it saves or prunes a checkpoint —
restart it with --train.resume=auto each time, and require the final weights to be bitwise equal to an uninterrupted
run's. After every kill, every listed checkpoint must verify (sizes and sha256): none is listed but incomplete.

SLM_TORTURE_KILLS (default 12) sets the number of kills; the test prints how many landed mid-save / mid-prune.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from slm import checkpoint as ckpt

WORKER = Path(__file__).parent / "torture_worker.py"
STEPS = 40


def _start(prepared: Path, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, str(WORKER), str(prepared), str(run_dir), str(STEPS)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _latest_step(run_dir: Path) -> int:
    found = ckpt.list_checkpoints(run_dir)
    return int(found[-1].name.split("_")[1]) if found else 0


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_bitwise(tmp_path, prepared):
    kills = int(os.environ.get("SLM_TORTURE_KILLS", "12"))
    rng = random.Random(int(os.environ.get("SLM_TORTURE_SEED", "0")))
    ref = _start(prepared, tmp_path / "ref")
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-2000:]

    run = tmp_path / "tortured"
    stats = {"kills": 0, "mid_save": 0, "mid_prune": 0, "restarts": 0}
    while True:
        proc = _start(prepared, run)
        stats["restarts"] += 1
        if stats["kills"] < kills:
            # Kill a few steps after the latest checkpoint, at a random moment inside that step (also inside its
            # save or prune). Counting steps, not seconds, makes the kills land on a fast machine as on a slow one:
            # 12 kills use at most 12 x 3 of the 40 steps.
            target = min(_latest_step(run) + rng.randint(1, 3), STEPS - 1)
            deadline = time.monotonic() + 120
            while _latest_step(run) < target and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.03))
            if proc.poll() is None:
                proc.kill()  # SIGKILL: no handler, no cleanup
                proc.wait()
                stats["kills"] += 1
                names = [p.name for p in (run / "checkpoints").iterdir()] if (run / "checkpoints").is_dir() else []
                stats["mid_save"] += any(n.endswith(".tmp") for n in names)
                stats["mid_prune"] += any(n.endswith((".deleting", ".old")) for n in names)
                for p in ckpt.list_checkpoints(run):
                    ckpt.verify_checkpoint(p)  # listed means complete
                continue
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
        break
    print(f"\ntorture: {stats}")
    assert stats["kills"] >= kills // 2
    a = ckpt.load_state_dict(tmp_path / f"ref/checkpoints/step_{STEPS:06d}")
    b = ckpt.load_state_dict(run / f"checkpoints/step_{STEPS:06d}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers  # the last start cleaned what the kills left
