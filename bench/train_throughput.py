"""Training throughput: slm's training step vs HF transformers' `LlamaForCausalLM` with a plain AdamW loop.

Usage: python bench/train_throughput.py [--quick] [--rounds N] [--steps N] [--ablate]

Same config (the issue's reference: vocab 8192, d 384, 6 layers, 6/2 heads, FFN 1024, tied), same initial weights,
same random batch (8 x 256), variants alternating round by round (see `harness.alternate`):
- hf_fp32 / hf_bf16: what a user would write — `model(input_ids, labels=...).loss.backward()`, `torch.optim.AdamW`
  (its default foreach implementation), `zero_grad`; bf16 = the same under `torch.autocast("cpu", torch.bfloat16)`.
- slm: the step `slm.train.trainer.train` runs, with its automatic choices — precision and compile "auto", timed on
  this model and batch by `slm.train.calibrate` (its timings are printed at warm-up), fused AdamW with the trainer's param
  groups, the fused chunked cross-entropy, the grad-norm clip the trainer always does, and freed host memory kept
  in the process between steps (`--train.keep_freed_memory`, `slm.train.hostmem`).
- hf_bf16_keepmem: HF's bf16 loop with that same allocator setting. It is not specific to slm, so its ratio is
  printed too: the share of slm's lead that comes from the setting is visible.
- with --ablate also every candidate of the calibration forced: slm_fp32, slm_bf16, slm_bf16_matmul (eager),
  slm_fp32_compiled, slm_bf16_compiled, and slm_glibc (slm's choice with glibc's allocator defaults): how much each
  piece buys, and whether the calibration picked the fastest.

One worker process per variant, all alive for the whole run and driven in turn by this process (each round asks
each worker for `--steps` timed steps). Separate processes because the allocator setting is per process and sticks:
in one shared process, one variant's setting and grown heap leak into the others' timings (measured: HF's plain loop
ran ~7 % faster beside slm than in its own process), and a user's script does not share slm's process either.

MFU = model FLOPs per token (`CausalLM.flops_per_token`: 6N + attention) x tok/s / peak, with the bf16 and
fp32 GEMM peaks measured in the same run (`slm.train.metrics.measure_gemm_flops`, before and after the rounds; the
higher reading counts). Last line: slm_tok_s hf_fp32_tok_s hf_bf16_tok_s ratio_fp32 ratio_bf16 mfu_bf16.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness import (add_timing_args, alternate, apply_timing_args, clock, emit, hf_twin, machine_line,
                     reference_config)

from slm.config import TrainConfig
from slm.models import CausalLM, build_model
from slm.train.hostmem import retain_freed_memory
from slm.train.metrics import measure_gemm_flops
from slm.runtime import resolve_precision
from slm.train.calibrate import PRECISIONS, calibrate, step_timer, train_step


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


def slm_step_fn(model: CausalLM, x: torch.Tensor, y: torch.Tensor, precision: str, compile_model: bool):
    """The trainer's step (slm.train.calibrate.train_step: autocast per `precision`, summed loss / targets, clip,
    fused AdamW, compiled as the trainer compiles an unsharded run)."""
    tc = TrainConfig(lr=1e-3, precision=precision, compile=compile_model)
    autocast_dtype, _ = resolve_precision(tc.precision, torch.device("cpu"))
    if precision == "bf16-matmul":  # the worker process does nothing else: set for its life, as the trainer's fit
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    return train_step(model, tc, x, y, precision, compile_model, torch.device("cpu")), autocast_dtype


def batch(cfg, args) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1))
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


def build_step(name: str, args: argparse.Namespace):
    """Variant `name` (module docstring) in this process -> (step function, one-line description)."""
    cfg = reference_config(seq_len=args.seq)
    x, y = batch(cfg, args)

    def make_slm() -> CausalLM:
        m = build_model(cfg)
        m.reset_parameters(seed=0)  # the same weights in every worker
        return m.train()

    if name.endswith("keepmem") or (name.startswith("slm") and name != "slm_glibc"):
        retain_freed_memory()  # as `slm.train.trainer.train` does on CPU (--train.keep_freed_memory=true)
    if name.startswith("hf_"):
        return hf_step_fn(hf_twin(make_slm()).train(), x, bf16="bf16" in name), "plain AdamW loop"
    model = make_slm()
    if name in ("slm", "slm_glibc"):  # the trainer's `auto`: timed on this model and batch (slm.train.calibrate)
        timer = step_timer(model, TrainConfig(lr=1e-3), args.batch, args.seq, torch.device("cpu"))
        choice, timings = calibrate(timer, PRECISIONS, (False,) if args.quick else (False, True), steps=10_000)
        precision, compiled = choice.precision, choice.compile
        how = "auto: " + ", ".join(f"{c.name} {args.batch * args.seq / t.step_s:,.0f}" for c, t in timings.items())
    else:
        precision, compiled = {"slm_fp32": ("fp32", False), "slm_bf16": ("bf16", False),
                               "slm_bf16_matmul": ("bf16-matmul", False), "slm_fp32_compiled": ("fp32", True),
                               "slm_bf16_compiled": ("bf16", True)}[name]
        how = "forced"
    step, autocast_dtype = slm_step_fn(model, x, y, precision, compiled)
    return step, f"precision {precision} -> {autocast_dtype or 'fp32'}, compile={compiled} ({how})"


def child_main(args: argparse.Namespace) -> None:
    """Worker: build the variant, then answer each stdin line ("warm" or a step count) with the seconds taken."""
    step, info = build_step(args.child, args)
    print(f"ready {info}", flush=True)
    for line in sys.stdin:
        warm = line.strip() == "warm"
        now = time.perf_counter if warm else clock  # warm-up in wall time; rounds in the chosen clock
        t0 = now()
        for _ in range(2 if warm else int(line)):
            step()
        print(now() - t0, flush=True)


class Worker:
    """The parent's handle on one variant's worker process."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--batch", str(args.batch),
               "--seq", str(args.seq), "--threads", str(torch.get_num_threads())]
        cmd += ["--cpu-time"] if args.cpu_time else []
        cmd += ["--quick"] if args.quick else []
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read().removeprefix("ready ")

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (code {self.proc.wait()}); its stderr is above")
        return line.strip()

    def ask(self, command: str) -> float:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny batch, 1 round, no compile")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per variant per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--ablate", action="store_true", help="also time slm eager fp32, eager bf16, and the fast path "
                    "with glibc's allocator defaults")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.child:
        return child_main(args)
    if args.quick:
        args.rounds, args.steps, args.batch, args.seq = 1, 1, 2, 64

    cfg = reference_config(seq_len=args.seq)
    tokens = args.batch * args.seq
    print(f"# train throughput: {machine_line()}; batch {args.batch} x {args.seq}; {args.rounds} rounds x "
          f"{args.steps} steps", flush=True)

    names = ["hf_fp32", "hf_bf16", "hf_bf16_keepmem", "slm"]
    if args.ablate:
        names += ["slm_fp32", "slm_bf16", "slm_bf16_matmul", "slm_fp32_compiled", "slm_bf16_compiled", "slm_glibc"]
    workers = {name: Worker(name, args) for name in names}
    for name, w in workers.items():  # one at a time: kernel selection, torch.compile
        print(f"  warm-up {name}: {w.ask('warm'):.1f} s ({w.info})", flush=True)

    peak_reps = 2 if args.quick else 8

    def measure_peaks() -> tuple[float, float]:  # in the same clock (wall or CPU time) as the throughput
        return (measure_gemm_flops(torch.device("cpu"), torch.bfloat16, reps=peak_reps, clock=clock),
                measure_gemm_flops(torch.device("cpu"), torch.float32, reps=peak_reps, clock=clock))

    peaks = [measure_peaks()]

    def rate(w: "Worker"):
        return lambda: args.steps * tokens / w.ask(str(args.steps))

    try:
        med = alternate({n: rate(w) for n, w in workers.items()}, args.rounds, label="tok/s ")
    finally:
        for w in workers.values():
            w.close()
    peaks.append(measure_peaks())
    peak_bf16 = max(p[0] for p in peaks)
    peak_fp32 = max(p[1] for p in peaks)
    fpt = cfg.flops_per_token(args.seq)
    print(f"# GEMM peak: bf16 {peak_bf16 / 1e9:,.0f} GFLOP/s, fp32 {peak_fp32 / 1e9:,.0f} GFLOP/s; "
          f"model {fpt / 1e6:.1f} MFLOP/token")
    for name, v in med.items():
        print(f"{name:>15}: {v:>9,.0f} tok/s  model {fpt * v / 1e9:6.0f} GFLOP/s  "
              f"MFU vs bf16 peak {fpt * v / peak_bf16:6.1%}  vs fp32 peak {fpt * v / peak_fp32:6.1%}")
    print(f"# HF's bf16 loop with slm's allocator setting: {med['hf_bf16_keepmem']:,.0f} tok/s; slm is "
          f"{med['slm'] / med['hf_bf16_keepmem']:.2f}x that ({med['slm'] / med['hf_bf16']:.2f}x HF's plain loop)")
    emit(save=not args.quick, extra={"hf_bf16_keepmem_tok_s": med["hf_bf16_keepmem"],
                                     "ratio_bf16_keepmem": med["slm"] / med["hf_bf16_keepmem"]},
         slm_tok_s=med["slm"], hf_fp32_tok_s=med["hf_fp32"], hf_bf16_tok_s=med["hf_bf16"],
         ratio_fp32=med["slm"] / med["hf_fp32"], ratio_bf16=med["slm"] / med["hf_bf16"],
         mfu_bf16=fpt * med["slm"] / peak_bf16)


if __name__ == "__main__":
    main()
