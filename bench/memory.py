"""Peak memory (RSS) of one training step of `smollm2-135m` at batch 1 x 2048: slm vs HF `LlamaForCausalLM`.

Usage: python bench/memory.py [--quick] [--seq 2048] [--repeats N]

Peak RSS is a per-process high-water mark, so each measurement runs in a fresh child process (this script re-run
with --child) that imports only what its side needs (slm does not import transformers), builds the model with random
weights, runs warm-up-free ONE step — forward, backward, optimizer step — and reports `ru_maxrss`. The figure is the
whole process (interpreter, torch, weights, gradients, AdamW moments, activations), as a user would see it in `top`;
the RSS right after building the model is printed too, to show how much the step itself adds.
- hf: fp32 weights, `model(input_ids, labels=...).loss.backward()`, `torch.optim.AdamW` (default foreach).
- slm: the trainer's step with its automatic choices — precision "auto" (bf16 autocast on AMX/bf16 CPUs), the
  fused chunked cross-entropy (never holds (T, 49152) fp32 logits), fused AdamW (updates in place, no foreach
  temporaries), `--train.activation_checkpointing` as given by --checkpointing (default on: the memory setting), and
  the trainer's `--train.keep_freed_memory` (freed memory stays in the process, so the peak is the high-water mark).
Medians over --repeats child runs per side (alternating). Last line: slm_peak_mib hf_peak_mib ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import harness  # noqa: F401  (puts src/ on sys.path; imports torch and slm.models only, not transformers)


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child_hf(seq: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from slm.export.hf import model_config_to_hf
    from slm.models import build_model, preset_config

    raw = model_config_to_hf(preset_config("smollm2-135m"))
    model_type = raw.pop("model_type")
    raw.pop("architectures")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **raw), dtype=torch.float32).train()
    built = rss_mib()
    x = torch.randint(0, raw["vocab_size"], (1, seq))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"built_mib": built, "peak_mib": peak_mib()}


def child_slm(seq: int, checkpointing: bool) -> dict:
    import contextlib

    from slm.config import TrainConfig
    from slm.models import build_model, preset_config
    from slm.train.hostmem import retain_freed_memory
    from slm.train.optim import build_optimizer
    from slm.runtime import resolve_precision

    cfg = preset_config("smollm2-135m", max_seq_len=max(seq, 256))
    tc = TrainConfig(lr=1e-4, activation_checkpointing=checkpointing)
    if tc.keep_freed_memory:  # as the trainer does on CPU: freed memory stays in the process (slm.train.hostmem)
        retain_freed_memory()
    with torch.device("meta"):  # as the trainer builds it: no throw-away random init on the way
        model = build_model(cfg)
    model.to_empty(device="cpu")
    model.reset_parameters(seed=0)
    model.gradient_checkpointing = tc.activation_checkpointing
    model.train()
    built = rss_mib()
    autocast_dtype, _ = resolve_precision(tc.precision, torch.device("cpu"))
    opt = build_optimizer(model, tc)
    x = torch.randint(0, cfg.vocab_size, (1, seq + 1))
    x, y = x[:, :-1], x[:, 1:]
    ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        summed = model(x, targets=y, loss_chunk=tc.loss_chunk)
    (summed / y.numel()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"built_mib": built, "peak_mib": peak_mib(), "precision": str(autocast_dtype or "fp32")}


def run_child(side: str, seq: int, checkpointing: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--seq", str(seq)]
    if not checkpointing:
        cmd.append("--no-checkpointing")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: seq 128, one child per side")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-checkpointing", action="store_true", help="slm without activation checkpointing")
    ap.add_argument("--child", choices=("slm", "hf"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    checkpointing = not args.no_checkpointing
    if args.child:
        result = child_hf(args.seq) if args.child == "hf" else child_slm(args.seq, checkpointing)
        print(json.dumps(result))
        return
    if args.quick:
        args.seq, args.repeats = 128, 1

    from harness import emit, machine_line

    print(f"# memory: {machine_line()}; smollm2-135m, one training step at 1 x {args.seq}; "
          f"slm activation_checkpointing={checkpointing}", flush=True)
    peaks: dict[str, list[float]] = {"slm": [], "hf": []}
    for r in range(args.repeats):
        for side in peaks:
            res = run_child(side, args.seq, checkpointing)
            peaks[side].append(res["peak_mib"])
            extra = f", autocast {res['precision']}" if "precision" in res else ""
            print(f"  run {r + 1}/{args.repeats} {side}: after build {res['built_mib']:,.0f} MiB, "
                  f"peak {res['peak_mib']:,.0f} MiB{extra}", flush=True)
    slm, hf = statistics.median(peaks["slm"]), statistics.median(peaks["hf"])
    emit(save=not args.quick, slm_peak_mib=slm, hf_peak_mib=hf, ratio=slm / hf)


if __name__ == "__main__":
    main()
