"""Where a training step's time goes: GEMM vs everything else, for the precision/compile slm's `auto` picks here.

Usage: python bench/step_profile.py [--steps N] [--batch B] [--seq T] [--precision P --compile true|false]

The reference model of bench/train_throughput.py, the trainer's step (forward with targets, backward, clip, the
optimizer: Muon on the hidden matrices as the quickstart uses, AdamW for the rest), profiled with torch.profiler
after warm-up. Time is the self CPU time of every op; GEMM ops are aten::mm / bmm / addmm / baddbmm (inside a
compiled graph they are its extern kernels; Muon's Newton-Schulz products count too), everything else (inductor's
fused C++ kernels, eager elementwise ops, attention outside GEMMs, optimizer arithmetic, Python) is "non-GEMM".
The issue's target: non-GEMM <= 30 % of the step, so that the GEMMs themselves are the limit.
Last line: non_gemm_share step_ms gemm_ms.
"""

from __future__ import annotations

import argparse

import torch

from harness import add_timing_args, apply_timing_args, emit, machine_line, reference_config

from slm.config import TrainConfig
from slm.models import build_model
from slm.runtime import matmul_precision
from slm.train.calibrate import PRECISIONS, Candidate, calibrate, step_timer, train_step
from slm.train.hostmem import retain_freed_memory

GEMM_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_mkldnn", "mkldnn::")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="profiled steps (after 3 warm-up steps)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS))
    ap.add_argument("--compile", default="auto", choices=("auto", "true", "false"))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny batch, 1 step, eager")
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.quick:
        args.steps, args.batch, args.seq, args.compile = 1, 2, 64, "false"
    retain_freed_memory()
    cpu = torch.device("cpu")
    cfg = reference_config(seq_len=args.seq)
    model = build_model(cfg)
    model.reset_parameters(seed=0)
    model.train()
    tc = TrainConfig(lr=1e-3, optimizer="muon")
    precisions = PRECISIONS if args.precision == "auto" else (args.precision,)
    compiles = (False, True) if args.compile == "auto" else (args.compile == "true",)
    if len(precisions) * len(compiles) > 1:
        choice, timings = calibrate(step_timer(model, tc, args.batch, args.seq, cpu), precisions, compiles, 10_000)
        how = ", ".join(f"{c.name} {1e3 * t.step_s:.0f} ms" for c, t in timings.items())
    else:
        choice, how = Candidate(precisions[0], compiles[0]), "forced"
    print(f"# step profile: {machine_line()}; batch {args.batch} x {args.seq}; {choice.name} ({how})", flush=True)

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=gen)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    step = train_step(model, tc, x, y, choice.precision, choice.compile, cpu)  # the trainer's step

    from torch.profiler import ProfilerActivity, profile

    with matmul_precision(choice.precision, cpu):
        for _ in range(3):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / args.steps / 1e3  # ms per step
    gemm = sum(e.self_cpu_time_total for e in events if e.key.startswith(GEMM_OPS)) / args.steps / 1e3
    print(events.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))
    print(f"# {choice.name}: {total:.0f} ms per step, GEMM {gemm:.0f} ms, non-GEMM {total - gemm:.0f} ms "
          f"({(total - gemm) / total:.0%})")
    emit(save=not args.quick, non_gemm_share=(total - gemm) / total, step_ms=total, gemm_ms=gemm)


if __name__ == "__main__":
    main()
