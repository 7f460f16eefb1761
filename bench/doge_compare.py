"""Doge dense, Doge CDMoE and the Llama baseline on the same data, tokenizer and token budget: val bits/byte at equal
tokens and at equal training time, train tok/s, peak memory, expert usage (normalised entropy, share of experts used)
and the weighted balance loss.

    python bench/doge_compare.py [--steps 200] [--quick]

A thin front end to bench/arch_compare.py (which trains each model with `slm train` in its own process, the first
one training the tokenizer and packing the data for all) over recipes/doge.yaml: the three models are
`llama` = preset tiny (4 x 256, 4/2 heads, SwiGLU 768: the same shape as doge-tiny), `doge` = preset doge-tiny and
`doge-moe` = preset doge-tiny-moe (shared SwiGLU 512 + 256 rank-1 experts, top-8, balance coefficient 0.01). Writes
runs/compare/doge.json and the README table between `<!-- compare-doge:start -->` and `<!-- compare-doge:end -->`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["llama=preset=tiny", "doge=preset=doge-tiny", "doge-moe=preset=doge-tiny-moe,moe_aux_coef=0.01"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per model (16 x 256 tokens each)")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps, no README update")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of every model's training (0 = all cores)")
    args = ap.parse_args()
    cmd = [sys.executable, str(ROOT / "bench" / "arch_compare.py"), "--name", "doge", "--recipe", "recipes/doge.yaml"]
    for spec in MODELS:
        cmd += ["--model", spec]
    if args.quick:
        cmd.append("--quick")
    cmd += ["--", f"--train.steps={args.steps}", f"--train.eval_every={max(1, args.steps // 8)}",
            "--train.checkpoint_every=0", *([f"--train.num_threads={args.threads}"] if args.threads else [])]
    print(" ".join(cmd[1:]), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
