"""Run under torchrun (or alone): train the tiny config and write the loss curve as JSON to argv[3]."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

from slm_testutil import run_tiny, tiny_config, train_losses  # noqa: E402

if __name__ == "__main__":
    prepared, run_dir, out, batch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    result = run_tiny(tiny_config(run_dir, prepared, steps=4, batch_size=batch), prepared)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        out.write_text(json.dumps(train_losses(result)))
