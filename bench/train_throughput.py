"""Training throughput: slm's training step vs HF transformers' `LlamaForCausalLM` with a plain AdamW loop.

Usage: python bench/train_throughput.py [--quick] [--rounds N] [--steps N] [--ablate]

Same config (the issue's reference: vocab 8192, d 384, 6 layers, 6/2 heads, FFN 1024, tied), same initial weights,
same random batch (8 x 256), one process, variants alternating round by round (see `harness.alternate`):
- hf_fp32 / hf_bf16: what a user would write — `model(input_ids, labels=...).loss.backward()`, `torch.optim.AdamW`
  (its default foreach implementation), `zero_grad`; bf16 = the same under `torch.autocast("cpu", torch.bfloat16)`.
- slm: the step `slm.train.trainer.train` runs, with its automatic choices — precision "auto" (bf16 autocast on an
  AMX/bf16 CPU or CUDA), `torch.compile` of the model (`--train.compile=true`), fused AdamW with the trainer's param
  groups, the fused chunked cross-entropy, and the grad-norm clip the trainer always does.
- with --ablate also slm_fp32 (eager fp32) and slm_bf16 (eager bf16 autocast): how much each piece buys.

MFU = model FLOPs per token (`slm.model.model_flops_per_token`: 6N + attention) x tok/s / peak, with the bf16 and
fp32 GEMM peaks measured in the same run (`slm.train.metrics.measure_gemm_flops`, before and after the rounds; the
higher reading counts). Last line: slm_tok_s hf_fp32_tok_s hf_bf16_tok_s ratio_fp32 ratio_bf16 mfu_bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from harness import (add_timing_args, alternate, apply_timing_args, clock, emit, hf_twin, machine_line,
                     reference_config)

from slm.config import TrainConfig
from slm.model import Transformer, model_flops_per_token
from slm.train.metrics import measure_gemm_flops
from slm.train.optim import build_optimizer
from slm.train.trainer import resolve_precision


def hf_step_fn(model: torch.nn.Module, x: torch.Tensor, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def slm_step_fn(model: Transformer, x: torch.Tensor, y: torch.Tensor, precision: str, compile_model: bool):
    """The trainer's step (trainer.py): autocast per `precision`, summed loss / targets, clip, fused AdamW."""
    tc = TrainConfig(lr=1e-3, precision=precision, compile=compile_model)
    autocast_dtype, _ = resolve_precision(tc.precision, torch.device("cpu"))
    opt = build_optimizer(model, tc)
    fwd = torch.compile(model) if compile_model else model
    params = [p for p in model.parameters() if p.requires_grad]
    n_targets = y.numel()

    def step() -> None:
        ctx = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        with ctx:
            summed = fwd(x, targets=y, loss_chunk=tc.loss_chunk)
        (summed / n_targets).backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, autocast_dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny batch, 1 round, no compile")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per variant per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--ablate", action="store_true", help="also time slm eager fp32 and eager bf16")
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.quick:
        args.rounds, args.steps, args.batch, args.seq = 1, 1, 2, 64
    compile_model = not args.quick

    cfg = reference_config(seq_len=args.seq)
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    x, y = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    tokens = x.numel()
    print(f"# train throughput: {machine_line()}; batch {args.batch} x {args.seq}; {args.rounds} rounds x "
          f"{args.steps} steps", flush=True)

    def make_slm() -> Transformer:
        m = Transformer(cfg)
        m.reset_parameters(seed=0)
        return m.train()

    base = make_slm()
    steps: dict[str, object] = {}
    steps["hf_fp32"] = hf_step_fn(hf_twin(base).train(), x, bf16=False)
    steps["hf_bf16"] = hf_step_fn(hf_twin(base).train(), x, bf16=True)
    slm_step, autocast_dtype = slm_step_fn(make_slm(), x, y, "auto", compile_model)
    steps["slm"] = slm_step
    if args.ablate:
        steps["slm_fp32"] = slm_step_fn(make_slm(), x, y, "fp32", False)[0]
        steps["slm_bf16"] = slm_step_fn(make_slm(), x, y, "bf16", False)[0]
    print(f"# slm fast path: precision auto -> {autocast_dtype or 'fp32'}, compile={compile_model}", flush=True)

    for name, fn in steps.items():  # warm-up: kernel selection, torch.compile
        t0 = time.perf_counter()
        fn()
        fn()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)

    peak_reps = 2 if args.quick else 8

    def measure_peaks() -> tuple[float, float]:  # in the same clock (wall or CPU time) as the throughput
        return (measure_gemm_flops(torch.device("cpu"), torch.bfloat16, reps=peak_reps, clock=clock),
                measure_gemm_flops(torch.device("cpu"), torch.float32, reps=peak_reps, clock=clock))

    peaks = [measure_peaks()]

    def rate(fn):
        def run() -> float:
            t0 = clock()
            for _ in range(args.steps):
                fn()
            return args.steps * tokens / (clock() - t0)
        return run

    med = alternate({n: rate(f) for n, f in steps.items()}, args.rounds, label="tok/s ")
    peaks.append(measure_peaks())
    peak_bf16 = max(p[0] for p in peaks)
    peak_fp32 = max(p[1] for p in peaks)
    fpt = model_flops_per_token(cfg, args.seq)
    print(f"# GEMM peak: bf16 {peak_bf16 / 1e9:,.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:,.0f} GFLOP/s; "
          f"model {fpt / 1e6:.1f} MFLOP/token")
    for name, v in med.items():
        print(f"{name:>10}: {v:>9,.0f} tok/s  model {fpt * v / 1e9:6.0f} GFLOP/s  "
              f"MFU vs bf16 peak {fpt * v / peak_bf16:6.1%}  vs fp32 peak {fpt * v / peak_fp32:6.1%}")
    emit(save=not args.quick, slm_tok_s=med["slm"], hf_fp32_tok_s=med["hf_fp32"], hf_bf16_tok_s=med["hf_bf16"],
         ratio_fp32=med["slm"] / med["hf_fp32"], ratio_bf16=med["slm"] / med["hf_bf16"],
         mfu_bf16=fpt * med["slm"] / peak_bf16)


if __name__ == "__main__":
    main()
