"""Train the tiny config with a checkpoint after every step, resuming from the latest (the kill -9 torture test's
worker): `python torture_worker.py PREPARED RUN_DIR STEPS`. Exits 0 when it reached the last step."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from slm_testutil import run_tiny, tiny_config  # noqa: E402

if __name__ == "__main__":
    prepared, run_dir, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    cfg = tiny_config(run_dir, prepared, steps=steps, checkpoint_every=1, keep_last=2, eval_every=3, resume="auto")
    assert run_tiny(cfg, prepared).step == steps
