"""Metric sinks (JSONL, CSV, TensorBoard, optional W&B) and the hardware peak used for MFU.

Every record goes to `metrics.jsonl` (one JSON object per line with a "kind": train | eval | sample | skip) and to a
per-kind CSV with a fixed header; TensorBoard and W&B get the numeric fields. On resume the files are truncated to the
resumed step so a resumed run's logs read as if it had never stopped.

MFU needs a peak: on CUDA it comes from a table of dense bf16/fp16 tensor-core peaks per GPU model (fp32 counts as
TF32 at half that rate only when TF32 matmuls are allowed; otherwise it is measured); on CPU there is no table worth
trusting (clock, cores, AMX and the neighbours' load vary), so the peak is measured once per process in the run's
compute dtype: the best of a few repetitions of square GEMMs of three sizes. One size alone understates the peak —
on a 2-core AMX CPU a cube that misses the L2 cache runs well below a smaller one — and an understated peak
overstates MFU.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

# Dense (no sparsity) bf16 tensor-core peak TFLOP/s by GPU name fragment; first match wins.
_GPU_PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A10G", 125.0), ("A10", 125.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]
_peak_cache: dict[tuple[str, str], float] = {}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Peak FLOP/s for MFU on this device and compute dtype (table on CUDA, measured GEMM on CPU)."""
    key = (str(device), str(dtype))
    if key in _peak_cache:
        return _peak_cache[key]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tflops = next((p for frag, p in _GPU_PEAK_TFLOPS if frag in name), 0.0)
        if dtype == torch.float32:
            # TF32 tensor cores run at about half the bf16 rate; without TF32, fp32 is far slower: measure it.
            tflops = tflops / 2 if torch.backends.cuda.matmul.allow_tf32 else 0.0
        peak = tflops * 1e12 if tflops else measure_gemm_flops(device, dtype)
    else:
        peak = measure_gemm_flops(device, dtype)
    _peak_cache[key] = peak
    return peak


def measure_gemm_flops(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 1536, 2048),
                       reps: int = 4, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best FLOP/s over `reps` runs of n x n x n matmuls for each n in `sizes`: this machine's practical peak.

    `clock` = time.process_time gives the per-core peak in CPU time (for benchmarks timed that way on a busy machine).
    """
    best = 0.0
    for n in sizes:
        gen = torch.Generator(device=device).manual_seed(0)  # never the global RNG: a resumed run's RNG is restored
        a = torch.randn(n, n, device=device, generator=gen).to(dtype)
        b = torch.randn(n, n, device=device, generator=gen).to(dtype)
        a @ b  # warm-up (oneDNN/cuBLAS kernel selection)
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = clock()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = max(best, 2 * n**3 / max(clock() - t0, 1e-9))
    return best


class MetricsLogger:
    """Writes metrics of the main process; other ranks get a logger with enabled=False."""

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True, wandb_cfg: dict | None = None,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._tb = None
        self._wandb = None
        self.history: list[dict] = []
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        else:
            for f in [self.jsonl, *self.run_dir.glob("metrics_*.csv")]:
                f.unlink(missing_ok=True)
        self.history = self.read_jsonl(self.jsonl)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step)
            except ImportError:
                self._tb = None
        if wandb_cfg is not None:
            try:
                import wandb
            except ImportError:
                from ..errors import SlmError

                raise SlmError("--train.wandb=true needs W&B: pip install wandb (or set --train.wandb=false)") from None
            self._wandb = wandb.init(**wandb_cfg)

    @staticmethod
    def read_jsonl(path: Path) -> list[dict]:
        if not path.is_file():
            return []
        out = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash
                    break
        return out

    def _truncate_after(self, step: int) -> None:
        kept = [r for r in self.read_jsonl(self.jsonl) if r.get("step", 0) <= step]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in kept))
        for f in self.run_dir.glob("metrics_*.csv"):
            f.unlink()
        for r in kept:
            self._write_csv(r)

    def _write_csv(self, record: dict) -> None:
        path = self.run_dir / f"metrics_{record['kind']}.csv"
        fields = [k for k, v in record.items() if not isinstance(v, (list, dict))]
        new = not path.exists()
        if not new:
            with open(path) as f:
                header = f.readline().strip().split(",")
            fields = header
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)

    def log(self, kind: str, step: int, **values: Any) -> None:
        record = {"kind": kind, "step": step, **values}
        self.history.append(record)
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._write_csv(record)
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(f"{kind}/{k}", v, step)
            if kind == "sample":
                self._tb.add_text("sample", str(values.get("text", "")), step)
        if self._wandb is not None:
            self._wandb.log({f"{kind}/{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
