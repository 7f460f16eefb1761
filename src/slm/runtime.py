"""Where and how a process computes: device choice, precision (autocast dtype + GradScaler), and the torch.distributed
process group for `torchrun` (NCCL on CUDA, gloo on CPU; a no-op single process otherwise).

Below train/, generate/ and eval/ (all of them pick devices and precisions); wrapping a model for data parallelism
is the trainer's business (slm.train.parallel).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import SlmError, atomic_write_text


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SlmError(f"--run.device={name}: CUDA is not available on this machine; use --run.device=cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def resolve_precision(name: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32 / bf16-matmul, whether to use a GradScaler). `auto` here is the rule the
    trainer's calibration (slm.train.calibrate) replaces by a measurement: bf16 on a bf16 GPU or AMX CPU."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
            name = "bf16" if amx else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise SlmError("--train.precision=fp16 needs CUDA (GradScaler); use bf16 or fp32 on CPU")
    if name == "bf16-matmul":
        if device.type != "cpu":
            raise SlmError("--train.precision=bf16-matmul is a CPU (oneDNN) setting; use bf16 on CUDA")
        return None, False
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[name]


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Inside: fp32 matmuls on the CPU run with bf16 math (oneDNN's fp32_precision = "bf16") when `precision` is
    "bf16-matmul"; the process-wide setting is restored on exit. Any other precision: no change."""
    if precision != "bf16-matmul" or device.type != "cpu":
        yield
        return
    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before


def slm_cache_dir() -> Path:
    """slm's per-machine cache (calibrations, measured peaks, offline task files): $SLM_CACHE, else ~/.cache/slm."""
    return Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm"))


def cpu_features() -> dict[str, bool | str]:
    """What decides CPU speed choices: the model name, the ISA level torch dispatches to, the bf16 and AMX units."""
    lines: list[str] = []
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = set(next((ln for ln in lines if ln.startswith("flags")), "").split())
    return {"model": name or platform.processor() or platform.machine(),
            "isa": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": "avx512_bf16" in flags,
            "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())}


def read_machine_cache(name: str) -> dict:
    """The JSON object in `<slm_cache_dir()>/<name>` ({} when missing or unreadable: the caller measures again)."""
    try:
        data = json.loads((slm_cache_dir() / name).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_machine_cache(name: str, key: str, entry: dict) -> None:
    """Set `key` in that JSON object, written atomically; a read-only cache only costs a re-measure next time."""
    data = read_machine_cache(name)
    data[key] = entry
    with contextlib.suppress(OSError):
        (slm_cache_dir() / name).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(slm_cache_dir() / name, json.dumps(data, indent=1, sort_keys=True))
