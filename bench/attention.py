"""Causal GQA attention, forward + backward of one layer: SDPA (eager, as PyTorch dispatches it) vs slm's dense
causal attention compiled (`slm.models.layers.attention`, the path a compiled CPU training step takes for T <= 512).

Usage: python bench/attention.py [--quick] [--batch 8 --seq 256 --heads 6 --kv-heads 2 --head-dim 64] [--rounds 7]

Checks first that both give the same output and gradients (bf16 tolerance), then times them alternating.
Last line: sdpa_ms=… dense_ms=… speedup=…
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from harness import add_timing_args, alternate, apply_timing_args, clock, emit, machine_line

from slm.models.layers.attention import causal_bias, dense_causal_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shapes, 1 round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--reps", type=int, default=5, help="forward+backward calls per timed sample")
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.quick:
        args.batch, args.seq, args.rounds, args.reps = 2, 32, 1, 1
    torch.manual_seed(0)
    dt = torch.bfloat16
    B, H, Hk, T, D = args.batch, args.heads, args.kv_heads, args.seq, args.head_dim
    q = torch.randn(B, H, T, D, dtype=dt, requires_grad=True)
    k = torch.randn(B, Hk, T, D, dtype=dt, requires_grad=True)
    v = torch.randn(B, Hk, T, D, dtype=dt, requires_grad=True)
    d_out = torch.randn(B, H, T, D, dtype=dt)
    print(f"# attention: {machine_line()}; B {B}, H {H}/{Hk}, T {T}, D {D}, bf16", flush=True)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    bias = causal_bias(T)
    compiled = torch.compile(dense_causal_attention, dynamic=False)

    def dense(q, k, v):
        return compiled(q, k, v, bias)
    ref = sdpa(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), d_out)
    got = dense(q, k, v)
    got_grads = torch.autograd.grad(got, (q, k, v), d_out)
    for name, a, b in zip(("out", "dq", "dk", "dv"), (ref, *ref_grads), (got, *got_grads)):
        err = ((a.float() - b.float()).norm() / a.float().norm()).item()
        print(f"  relative error {name}: {err:.2e}")
        if err > 2e-2:
            raise SystemExit(f"dense attention disagrees with SDPA on {name}: relative error {err:.3g}")

    def timer(fn):
        def run() -> float:
            t0 = clock()
            for _ in range(args.reps):
                torch.autograd.grad(fn(q, k, v), (q, k, v), d_out)
            return (clock() - t0) / args.reps * 1e3
        run()
        return run

    med = alternate({"sdpa": timer(sdpa), "dense": timer(dense)}, args.rounds, label="ms ")
    emit(save=not args.quick, sdpa_ms=med["sdpa"], dense_ms=med["dense"], speedup=med["sdpa"] / med["dense"])


if __name__ == "__main__":
    main()
