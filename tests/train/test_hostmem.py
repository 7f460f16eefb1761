"""slm.train.hostmem: freed host memory stays in the process (counted in page faults), and the trainer applies it."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from slm.config import RunConfig, TrainConfig
from slm.train import hostmem
from slm.runtime import DistInfo

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

# Runs ten "steps" that each allocate, touch and free 200 MiB of tensors of mixed sizes (live together, as a training
# step's activations are) and prints the minor page faults of each of the last five (the heap settles in a few).
# `mode`: "default" (glibc as it starts) or "retain" (retain_freed_memory() first).
_CHILD = r"""
import json, resource, sys
import torch
from slm.train import hostmem
mode = sys.argv[1]

def step():
    tensors = [torch.empty(mib << 18).fill_(1.0) for mib in (64, 16, 48, 8, 64)]
    del tensors

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

applied = hostmem.retain_freed_memory() if mode == "retain" else None
for _ in range(5):
    step()
counts = []
for _ in range(5):
    before = faults()
    step()
    counts.append(faults() - before)
print(json.dumps({"faults": sorted(counts)[2], "each": counts, "applied": applied}))
"""
PAGES = (200 << 20) // 4096


def _steady_step_faults(mode: str) -> dict:
    """The median over the child's last five steps."""
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_retained_memory_is_reused_without_page_faults():
    default = _steady_step_faults("default")
    retained = _steady_step_faults("retain")
    assert retained["applied"] is True
    assert default["faults"] > PAGES // 2, default  # glibc gives the large blocks back: their pages fault again
    assert retained["faults"] < PAGES // 10, retained  # reused from the heap


def test_no_glibc_means_no_op(monkeypatch):
    monkeypatch.setattr(hostmem, "_glibc", lambda: None)
    assert hostmem.retain_freed_memory() is False


@pytest.mark.parametrize("keep", [True, False])
def test_trainer_applies_it_on_cpu_when_configured(monkeypatch, keep):
    from slm.train import trainer

    calls = []
    monkeypatch.setattr(trainer, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(trainer.torch, "set_num_threads", lambda n: None)
    cfg = RunConfig(train=TrainConfig(keep_freed_memory=keep))
    trainer._tune_cpu(cfg, DistInfo(device=trainer.torch.device("cpu")))
    assert calls == ([1] if keep else [])
