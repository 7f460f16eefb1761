"""DDP with 2 gloo processes gives the same losses as one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "ddp_worker.py"


def test_ddp_two_processes_match_single_process(tmp_path, prepared):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    single = tmp_path / "single.json"
    subprocess.run([sys.executable, str(WORKER), str(prepared), str(tmp_path / "s"), str(single), "8"], check=True,
                   env=env, timeout=300)
    ddp = tmp_path / "ddp.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(WORKER), str(prepared), str(tmp_path / "d"), str(ddp), "4"], check=True, env=env,
                   timeout=300)
    a, b = json.loads(single.read_text()), json.loads(ddp.read_text())
    assert a.keys() == b.keys() and len(a) == 4
    for step in a:
        assert a[step] == pytest.approx(b[step], abs=1e-5), step
