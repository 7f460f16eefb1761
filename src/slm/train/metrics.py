"""Metric sinks (JSONL, CSV, TensorBoard, optional W&B) and the hardware peak used for MFU.

Every record goes to `metrics.jsonl` (one JSON object per line with a "kind": train | eval | sample | skip) and to a
per-kind CSV with a fixed header; TensorBoard and W&B get the numeric fields. On resume the files are truncated to the
resumed step so a resumed run's logs read as if it had never stopped.

MFU needs a peak: on CUDA it comes from a table of dense bf16/fp16 tensor-core peaks per GPU model (fp32 counts as
TF32 at half that rate only when TF32 matmuls are allowed; otherwise it is measured); on CPU there is no table worth
trusting (clock, cores, AMX and the neighbours' load vary), so the peak is measured in the run's compute dtype: the
best of several repetitions of square GEMMs of three sizes. One size alone understates the peak — on a 2-core AMX
CPU a cube that misses the L2 cache runs well below a smaller one — and an understated peak overstates MFU (136-216 %
was seen when each process measured under whatever load was running). So a measured peak is measured once per
machine and cached (`<SLM_CACHE>/peak_flops.json`, keyed by device model, dtype, torch version and threads), and it
can never be exceeded: a step that achieves more than the peak proves the peak low, so that rate becomes the peak
(`Peak.mfu`) and the cached one too — MFU stays <= 100 % and the cache corrects itself. The progress bar says what
MFU is relative to (`Peak.describe`: "1.20 TFLOP/s bf16 measured").
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..runtime import cpu_features, slm_cache_dir

# Dense (no sparsity) bf16 tensor-core peak TFLOP/s by GPU name fragment; first match wins.
_GPU_PEAK_TFLOPS = [
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A10G", 125.0), ("A10", 125.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A6000", 155.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
]
PEAK_FILE = "peak_flops.json"  # in cache_dir(): {key: best FLOP/s} of every (device model, dtype, torch, threads)
MEASURE_REPS = 6  # GEMM repetitions per size on a machine's first measurement; the best one counts
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def cache_dir() -> Path:
    """slm's per-machine cache (slm.runtime.slm_cache_dir: $SLM_CACHE, default ~/.cache/slm)."""
    return slm_cache_dir()


@dataclass
class Peak:
    """The FLOP/s per device that MFU is relative to, and where it came from."""

    flops: float
    dtype: str  # compute dtype: bf16 | fp16 | fp32
    source: str  # "spec" (GPU table) | "measured" (GEMMs, cached per machine) | "observed" (a step beat the peak)
    cache_key: str = ""  # this peak's entry in the machine cache ("" for a spec-sheet peak)

    def describe(self) -> str:
        rate = f"{self.flops / 1e12:.2f} TFLOP/s" if self.flops >= 1e12 else f"{self.flops / 1e9:.1f} GFLOP/s"
        return f"{rate} {self.dtype} {self.source}"

    def mfu(self, achieved: float) -> float:
        """achieved / peak, never above 1: a rate above the peak becomes the peak (and the cached one)."""
        if achieved > self.flops:
            self.flops, self.source = achieved, "observed"
            if self.cache_key:
                _store_peak(self.cache_key, achieved)
        return achieved / self.flops if self.flops > 0 else 0.0


def machine_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a measured peak depends on: the device model, the dtype, torch (its kernels) and the thread count."""
    if device.type == "cuda":
        model = torch.cuda.get_device_name(device)
    else:
        model = _cpu_model()
    return f"{device.type}|{model}|{_DTYPE_NAMES.get(dtype, str(dtype))}|torch {torch.__version__}|" \
           f"{torch.get_num_threads()} threads"


def _cpu_model() -> str:
    return str(cpu_features()["model"]) or "unknown cpu"


def _read_peaks() -> dict[str, float]:
    try:
        data = json.loads((cache_dir() / PEAK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and v > 0} if isinstance(data, dict) \
        else {}


def _store_peak(key: str, flops: float) -> None:
    """Raise (never lower) the cached peak of `key`. A cache that cannot be written only costs a re-measurement."""
    from ..errors import atomic_write_text

    peaks = _read_peaks()
    if peaks.get(key, 0.0) >= flops:
        return
    peaks[key] = flops
    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_dir() / PEAK_FILE, json.dumps(peaks, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def peak_flops(device: torch.device, dtype: torch.dtype) -> Peak:
    """The peak for MFU on this device and compute dtype: the GPU table, else this machine's cached measurement
    (measured now, once per machine, when there is none)."""
    name = _DTYPE_NAMES.get(dtype, str(dtype))
    if device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        tflops = next((p for frag, p in _GPU_PEAK_TFLOPS if frag in gpu), 0.0)
        if dtype == torch.float32:
            # TF32 tensor cores run at about half the bf16 rate; without TF32, fp32 is far slower: measure it.
            tflops = tflops / 2 if torch.backends.cuda.matmul.allow_tf32 else 0.0
        if tflops:
            return Peak(tflops * 1e12, name, "spec")
    key = machine_key(device, dtype)
    cached = _read_peaks().get(key)
    if cached is None:
        cached = measure_gemm_flops(device, dtype, reps=MEASURE_REPS)
        _store_peak(key, cached)
    return Peak(cached, name, "measured", cache_key=key)


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
