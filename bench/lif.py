"""slm's LIF neuron (slm.models.layers.lif) vs snnTorch's `snn.Leaky`: the same spike rates, and the time of a
rate-coded forward + backward on a Pulse-sized activation. The evidence behind writing the neuron by hand.

Usage: python bench/lif.py [--quick] [--rounds 5] [--tokens 2048 --width 1024 --steps 3]
Needs snntorch for the comparison (`pip install --no-deps snntorch`; it is not a dependency of slm): without it only
slm's neuron is timed. Last line: slm_ms=… snntorch_ms=… speedup=… max_rate_diff=…
"""

from __future__ import annotations

import argparse

import torch

from harness import add_timing_args, alternate, apply_timing_args, clock, emit, machine_line

from slm.models.layers.lif import lif_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small tensor, 1 round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3, help="LIF time steps per token (SLMS: 3)")
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.quick:
        args.tokens, args.width, args.rounds = 64, 64, 1
    torch.manual_seed(0)
    current = (torch.randn(args.tokens, args.width) * 1.2).requires_grad_()
    beta = torch.tensor(0.95)
    print(f"# lif: {machine_line()}; {args.tokens} x {args.width}, {args.steps} steps", flush=True)

    def ours() -> torch.Tensor:
        return lif_rate(current, beta, steps=args.steps)

    variants = {"slm_ms": ours}
    try:
        import snntorch as snn
        from snntorch import surrogate
    except ImportError:
        snn = None
    if snn is not None:
        leaky = snn.Leaky(beta=0.95, threshold=1.0, reset_mechanism="subtract",
                          spike_grad=surrogate.fast_sigmoid(slope=25))

        def theirs() -> torch.Tensor:
            mem = leaky.init_leaky()
            total = 0
            for _ in range(args.steps):
                spk, mem = leaky(current, mem)
                total = total + spk
            return total / args.steps

        variants["snntorch_ms"] = theirs
        diff = (ours() - theirs()).abs().max().item()
        print(f"  max |rate difference| vs snn.Leaky: {diff:.3g}")

    def timed(fn):
        def run() -> float:
            fn().sum().backward()  # warm
            t0 = clock()
            fn().sum().backward()
            return (clock() - t0) * 1000
        return run

    med = alternate({name: timed(fn) for name, fn in variants.items()}, args.rounds)
    figures = {"slm_ms": med["slm_ms"]}
    if "snntorch_ms" in med:
        figures.update(snntorch_ms=med["snntorch_ms"], speedup=med["snntorch_ms"] / med["slm_ms"],
                       max_rate_diff=diff)
    emit(save=not args.quick, **figures)


if __name__ == "__main__":
    main()
