"""Shared plumbing of the bench scripts: alternating timed rounds, medians, the HF twin of an slm model, the last line.

Why alternate: this machine is shared and its speed drifts by 2x within a minute when someone else runs tests. Timing
variant A for a minute and then B for a minute measures the drift as much as the code. Every round here runs each
variant once, in a fixed order, and each figure is the median over rounds, so a slow spell hits all variants alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from slm.errors import atomic_write_text  # noqa: E402
from slm.models import CausalLM
from slm.models.llama import LlamaConfig


_clock = time.perf_counter


def use_cpu_clock(enabled: bool) -> None:
    """Time with this process's CPU time instead of wall time.

    With `--threads 1` on a machine other jobs keep busy, CPU time is what the step would take on an idle core: a
    fair A/B of code changes while the wall clock measures the neighbours. Figures taken this way say so.
    """
    global _clock
    _clock = time.process_time if enabled else time.perf_counter


def add_timing_args(ap: argparse.ArgumentParser) -> None:
    """The --threads / --cpu-time flags every timing bench takes."""
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default: all cores)")
    ap.add_argument("--cpu-time", action="store_true", help="rates from process CPU time, not wall time (A/B on a "
                    "busy machine; use with --threads 1)")


def apply_timing_args(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cpu_clock(args.cpu_time)


def clock() -> float:
    return _clock()


def alternate(variants: dict[str, Callable[[], float]], rounds: int, *, label: str = "") -> dict[str, float]:
    """Run each variant once per round, alternating; each call returns a rate. Prints every round; returns medians."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, fn in variants.items():
            samples[name].append(fn())
        print(f"  {label}round {r + 1}/{rounds}: " + "  ".join(f"{n}={v[-1]:,.1f}" for n, v in samples.items()),
              flush=True)
    return {name: statistics.median(v) for name, v in samples.items()}


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Seconds for `repeat` calls of fn."""
    t0 = clock()
    for _ in range(repeat):
        fn()
    return clock() - t0


def hf_twin(model: CausalLM, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """`transformers.LlamaForCausalLM` with the same config and weights as an slm `CausalLM` (qk_norm=False)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from slm.export.hf import model_config_to_hf, to_hf_name

    raw = model_config_to_hf(model.cfg)
    model_type = raw.pop("model_type")
    hf_cfg = AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k not in ("architectures",)})
    hf = AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)
    state = {to_hf_name(k, model.cfg): v for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (model.cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"HF twin mismatch: missing {missing}, unexpected {unexpected}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf.to(dtype)


def reference_config(vocab: int = 8192, seq_len: int = 256) -> LlamaConfig:
    """The issue's reference config: vocab 8192, d 384, 6 layers, 6 heads / 2 KV heads, FFN 1024, tied."""
    return LlamaConfig(vocab_size=vocab, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_hidden=1024,
                       tie_embeddings=True, max_seq_len=max(seq_len, 256))


RESULTS_DIR = Path(__file__).resolve().parents[1] / "runs" / "bench"


def emit(*, save: bool = True, extra: dict[str, float] | None = None, **figures: float) -> None:
    """The one closing `key=value` line every bench script ends with. With `save`, the figures (and `extra`, figures
    kept out of that line) also go to runs/bench/<script>.json with the command and the machine line:
    `scripts/readme_results.py` builds the README's speed table from those files, so no figure there is typed by
    hand. Smoke runs (--quick) pass save=False."""
    def fmt(v: float) -> str:
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"

    print(" ".join(f"{k}={fmt(v)}" for k, v in figures.items()), flush=True)
    if save:
        script = Path(sys.argv[0]).name
        record = {"command": " ".join(["python", f"bench/{script}", *sys.argv[1:]]), "machine": machine_line(),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "figures": figures,
                  "extra": extra or {}}
        atomic_write_text(RESULTS_DIR / f"{Path(script).stem}.json", json.dumps(record, indent=2))


def machine_line() -> str:
    """Versions, threads, AMX and the load average: a busy machine explains slow figures."""
    from slm.runtime import cpu_features

    cpu = cpu_features()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    timing = "CPU time" if _clock is time.process_time else "wall time"
    return (f"{cpu['model']}, AVX512-BF16={'yes' if cpu['avx512_bf16'] else 'no'}, "
            f"AMX={'yes' if cpu['amx'] else 'no'}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} cores, load average {load}, {timing}")


def fill_readme_block(tag: str, body: str, readme: Path = Path(__file__).resolve().parents[1] / "README.md") -> bool:
    """Replace README.md's block between `<!-- TAG:start -->` and `<!-- TAG:end -->` with `body` (generated
    figures, never typed); False, README untouched, when the markers are missing."""
    import re

    text = readme.read_text(encoding="utf-8")
    pattern = rf"(<!-- {tag}:start -->\n).*?(\n<!-- {tag}:end -->)"
    if not re.search(pattern, text, flags=re.S):
        return False
    atomic_write_text(readme, re.sub(pattern, lambda m: m.group(1) + body + m.group(2), text, flags=re.S))
    return True
