"""Run under torchrun (or alone): train the tiny config with the JSON train overrides in argv[4] (plus "arch": a
registered architecture's test preset instead of the default model); rank 0 writes the loss curve (step -> loss)
as JSON to argv[3]."""

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from slm_testutil import run_tiny, tiny_config, train_losses  # noqa: E402

if __name__ == "__main__":
    prepared, run_dir, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
    arch = overrides.pop("arch", None)
    cfg = tiny_config(run_dir, prepared, **overrides)
    if arch is not None:
        from slm.models import ARCHS
        from slm.models.registry import preset_config

        spec = ARCHS[arch]
        cfg = dataclasses.replace(cfg, model=preset_config(spec.test_preset, vocab_size=320, init_std=0.02))
    if os.environ.get("SLM_TEST_PID_DIR"):  # a test that kills one rank finds it here
        (Path(os.environ["SLM_TEST_PID_DIR"]) / f"pid_{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    result = run_tiny(cfg, prepared)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        out.write_text(json.dumps(train_losses(result)))
