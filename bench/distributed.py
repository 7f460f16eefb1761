"""Data parallelism on one machine: throughput scaling 1 -> N processes and memory per rank, DDP vs FSDP2.

Usage: python bench/distributed.py [--preset smollm2-360m] [--procs 1 2] [--parallel ddp fsdp] [--steps 6]
                                   [--batch 2] [--seq 256] [--optimizer adamw]
       python bench/distributed.py --quick   (the `test` preset, a smoke run in seconds)

Each (procs, parallel) cell is a fresh `torchrun --standalone` job (gloo on CPU, nccl on CUDA) running this script
with --child: it lays the model out with `slm.train.parallel.parallelize` and builds the optimizer with
`slm.train.optim.build_optimizer` — the trainer's own calls — then times `--steps` optimizer steps on random tokens
(forward with the chunked loss, backward, clip, step), the first one excluded as warm-up. Reported per cell:
- tok/s over all ranks and the scaling efficiency tok/s(N) / (N x tok/s(1 process, same parallel));
- the state each rank holds: parameters + gradients + optimizer state, counting only local shards (the number that
  must fall as 1/N under FSDP2 and stay flat under DDP);
- peak RSS of rank 0 (CPU: the whole process, interpreter and activations included) or peak CUDA memory.
On a 2-core CPU machine the scaling figure measures the cores, not the method: two processes share them. Last line
(the largest process count N): ddp_efficiency fsdp_efficiency (at N) and fsdp_state_ratio = FSDP state per rank at N
/ at 1 process (~1/N when sharding works; DDP's stays 1).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness import emit  # (puts src/ on sys.path)


def state_mib(model: torch.nn.Module, optimizer) -> float:
    """Parameters + gradients + optimizer state held by this rank (local shards of DTensors), in MiB."""
    from slm.train.parallel import local

    n = 0
    for p in model.parameters():
        n += local(p).numel() * local(p).element_size()
        if p.grad is not None:
            n += local(p.grad).numel() * local(p.grad).element_size()
    for opt in optimizer.optimizers.values():
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    n += local(v).numel() * local(v).element_size()
    return n / 2**20


def child(args: argparse.Namespace) -> None:
    from slm.config import TrainConfig
    from slm.models import init_model
    from slm.models.registry import preset_config
    from slm.runtime import init_distributed, shutdown
    from slm.train.optim import build_optimizer
    from slm.train.parallel import full_value, parallelize

    dist = init_distributed("auto")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.world_size))
    over = {"vocab_size": args.vocab} if args.vocab else {}
    model = init_model(preset_config(args.preset, **over), dist.device, seed=0)
    model.train()
    tc = TrainConfig(parallel=args.parallel[0], optimizer=args.optimizer, compile="false", precision="fp32")
    par = parallelize(model, dist, tc)
    optimizer = build_optimizer(model, tc)
    gen = torch.Generator().manual_seed(dist.rank)
    vocab = model.cfg.vocab_size
    times = []
    for _ in range(args.steps):
        x = torch.randint(vocab, (args.batch, args.seq + 1), generator=gen).to(dist.device)
        t0 = time.perf_counter()
        loss = par.module(x[:, :-1], targets=x[:, 1:]) / x[:, 1:].numel()
        loss.backward()
        float(full_value(torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)))
        optimizer.step()
        held = state_mib(model, optimizer)  # before zero_grad: the step's high-water state
        optimizer.zero_grad(set_to_none=True)
        if dist.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    if args.verbose:
        print(f"rank {dist.rank} step times (s): {[round(t, 4) for t in times]}", flush=True)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dist.device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if dist.is_main:
        Path(args.out).write_text(json.dumps({
            "procs": dist.world_size, "parallel": par.kind, "sharded": par.sharded,
            "tok_s": args.batch * args.seq * dist.world_size / steady, "state_mib_per_rank": held,
            "peak_mib_rank0": peak}))
    shutdown(dist)


def run_cell(args: argparse.Namespace, procs: int, parallel: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", __file__,
           "--child", "--out", str(out), "--parallel", parallel, "--preset", args.preset, "--vocab", str(args.vocab),
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
           "--optimizer", args.optimizer, *(["--verbose"] if args.verbose else [])]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // procs))}
    subprocess.run(cmd, check=True, env=env, capture_output=not args.verbose)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smollm2-360m")
    ap.add_argument("--vocab", type=int, default=0, help="vocab size for presets without one (e.g. test)")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--parallel", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=2, help="rows per process per step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"])
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: the test preset, 3 steps of 2 x 32 tokens")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.preset, args.vocab, args.steps, args.seq = "test", 320, 3, 32
    import tempfile

    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for parallel in args.parallel:
            base = None
            for procs in args.procs:
                cell = run_cell(args, procs, parallel, Path(tmp) / f"{parallel}{procs}.json")
                cell["requested"] = parallel
                base = cell["tok_s"] if procs == 1 else base
                cell["efficiency"] = cell["tok_s"] / (procs * base) if base else None
                cells.append(cell)
                eff = f"{cell['efficiency']:.2f}" if cell["efficiency"] is not None else "-"
                print(f"{parallel:>4} x{procs}: {cell['tok_s']:>10,.0f} tok/s  efficiency {eff:>5}  state/rank "
                      f"{cell['state_mib_per_rank']:>9,.1f} MiB  peak rank0 {cell['peak_mib_rank0']:>9,.0f} MiB",
                      flush=True)
    top = max(args.procs)
    cell = {(c["requested"], c["procs"]): c for c in cells}
    figures = {f"{p}_efficiency": cell[(p, top)]["efficiency"] or 0.0 for p in args.parallel if (p, top) in cell}
    if ("fsdp", top) in cell and ("fsdp", 1) in cell:
        state = {n: cell[("fsdp", n)]["state_mib_per_rank"] for n in (1, top)}
        figures["fsdp_state_ratio"] = state[top] / state[1]
    emit(save=not args.quick, extra={"cells": cells, "preset": args.preset, "seq": args.seq, "batch": args.batch},
         **figures)


if __name__ == "__main__":
    main()
