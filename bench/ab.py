"""A/B of two checkouts: run one bench script in each, alternating, and compare their last-line figures.

Usage: python bench/ab.py --base DIR [--rounds 3] -- SCRIPT [script args...]
e.g.   git worktree add /tmp/base HEAD~1 && python bench/ab.py --base /tmp/base -- train_throughput.py --rounds 1

Each round runs `python <checkout>/bench/SCRIPT ARGS` for the base checkout, then for this one (the bench scripts
put their own checkout's src/ first on sys.path, so each measures its own code with the same interpreter and
packages). Alternating rounds spread a busy machine's slow spells over both sides (see bench/harness.py); figures
are medians over rounds, and each ratio is this checkout / base. Nothing is saved: it prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def last_line_figures(stdout: str) -> dict[str, float]:
    for line in reversed(stdout.strip().splitlines()):
        try:
            return {k: float(v) for k, v in (item.split("=", 1) for item in line.split())}
        except ValueError:
            continue
    return {}


def run(checkout: Path, script: str, args: list[str]) -> dict[str, float]:
    proc = subprocess.run([sys.executable, str(checkout / "bench" / script), *args], capture_output=True, text=True,
                          cwd=checkout)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}/bench/{script} failed:\n{proc.stderr[-2000:]}")
    return last_line_figures(proc.stdout)


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv:
        raise SystemExit("usage: python bench/ab.py --base DIR [--rounds N] -- SCRIPT [args...]")
    cut = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a git worktree of main)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv[:cut])
    script, script_args = argv[cut + 1], argv[cut + 2:]
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    for r in range(args.rounds):
        for side, checkout in (("base", args.base.resolve()), ("this", HERE)):
            for k, v in run(checkout, script, script_args).items():
                samples[side].setdefault(k, []).append(v)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"| figure | base ({args.base}) | this | this / base |\n|---|---|---|---|")
    for key in samples["this"]:
        if key in samples["base"]:
            a, b = statistics.median(samples["base"][key]), statistics.median(samples["this"][key])
            print(f"| {key} | {a:,.4g} | {b:,.4g} | {b / a:.3f} |" if a else f"| {key} | {a} | {b} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
