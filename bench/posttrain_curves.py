"""Post-training demo curves: SFT loss, DPO reward margin and GRPO mean reward per step, from real runs.

    python bench/posttrain_curves.py [--steps N] [--init CKPT] [--data DIR] [--no-readme] [--section.key=value ...]

Runs recipes/posttrain-demo.yaml (SFT), recipes/posttrain-dpo.yaml (DPO, from the SFT checkpoint) and
recipes/posttrain-grpo.yaml (GRPO, from the instruct model) with one train row per step, reads the curves back from
each run's metrics.jsonl, and writes runs/posttrain-curves.json plus the README block between
`<!-- posttrain-curves:start -->` and `<!-- posttrain-curves:end -->` (figures from the runs, never typed).
`--steps` shortens every run (the trend check on a busy CPU); without it each recipe runs at its shipped size.
Needs the starting model and the BIG-bench files (recipes/posttrain-demo.yaml says how to make them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAG = "posttrain-curves"
# method -> (recipe, metric logged per step, the direction that means learning)
METHODS = {"sft": ("recipes/posttrain-demo.yaml", "loss", "falls"),
           "dpo": ("recipes/posttrain-dpo.yaml", "rewards_margin", "rises"),
           "grpo": ("recipes/posttrain-grpo.yaml", "reward", "rises")}
# A per-step train metric mixes learning with which examples the step drew (SFT's natural_instructions subtasks
# differ in loss by more than a few steps of learning); the same held-out set before and after does not.
HELDOUT = {"sft": "loss", "dpo": "rewards_margin", "grpo": "reward"}


def heldout(run_dir: Path, method: str) -> dict | None:
    """{before, after} of the method's held-out metric from the run's summary.json (None when it has none)."""
    file = run_dir / "summary.json"
    if not file.is_file():
        return None
    summary = json.loads(file.read_text())
    key = HELDOUT[method]
    before, after = (summary.get("eval_before") or {}).get(key), (summary.get("eval_after") or {}).get(key)
    return {"key": key, "before": before, "after": after} if before is not None and after is not None else None


def curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], float(r[key])) for r in rows if r.get("kind") == "train" and isinstance(r.get(key), (int, float))]


def windows(points: list[tuple[int, float]], n: int = 4) -> list[tuple[str, float]]:
    """Mean of the curve over `n` consecutive step windows (single steps are noisy: 16 GRPO samples, 4 SFT rows)."""
    size = max(1, -(-len(points) // n))
    out = []
    for i in range(0, len(points), size):
        part = points[i : i + size]
        out.append((f"{part[0][0]}-{part[-1][0]}", sum(v for _, v in part) / len(part)))
    return out


def markdown(record: dict) -> str:
    n = max(len(run["windows"]) for run in record["runs"].values())
    lines = ["| method | train metric: mean over each quarter of the run (its steps) | " +
             " | ".join(f"Q{i + 1}" for i in range(n)) + " | trend | held-out before → after | time |",
             "|---|---|" + "---|" * (n + 3)]
    for method, run in record["runs"].items():
        cells = " | ".join(f"{v:.3f} ({label})" for label, v in run["windows"]) + " | -" * (n - len(run["windows"]))
        h = run.get("heldout")
        held = f"{h['key']} {h['before']:.3f} → {h['after']:.3f}" if h else "- (no held-out eval in this run)"
        lines.append(f"| {method} | {run['metric']} | {cells} | {run['trend']} | {held} | {run['seconds']:.0f} s |")
    lines.append("")
    lines += [f"- {method}: `{run['command']}` — {run['date']}; {run['machine']}" for method, run in
              record["runs"].items()]
    missing = [m for m in METHODS if m not in record["runs"]]
    if missing:
        lines.append(f"- not measured yet: {', '.join(missing)} (`python bench/posttrain_curves.py --methods "
                     f"{','.join(missing)}`)")
    return "\n".join(lines)


def torch_version() -> str:
    import torch

    return torch.__version__


def load_average() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def fill_readme(body: str, readme: Path = ROOT / "README.md") -> bool:
    """Replace the README block of this script's TAG (harness.fill_readme_block)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import fill_readme_block

    return fill_readme_block(TAG, body, readme)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=0, help="steps per run (0 = each recipe's own)")
    ap.add_argument("--init", default="runs/smollm2-135m-instruct", help="the instruct model SFT and GRPO start from")
    ap.add_argument("--data", default="runs/posttrain-data", help="folder of `python -m slm.posttrain.bigbench`")
    ap.add_argument("--out", default="runs/posttrain-curves", help="run dirs go here")
    ap.add_argument("--methods", default="sft,dpo,grpo", help="comma-separated subset; the others keep their rows")
    ap.add_argument("--no-readme", action="store_true", help="print the table; leave README.md alone")
    ap.add_argument("--readme-only", action="store_true",
                    help="rewrite the README block from runs/posttrain-curves.json and the runs' summary.json")
    args, extra = ap.parse_known_args()
    if args.readme_only:
        record_file = Path(args.out).parent / "posttrain-curves.json"
        record = json.loads(record_file.read_text())
        for method, run in record["runs"].items():
            run["heldout"] = heldout(Path(args.out) / method, method)
        record_file.write_text(json.dumps(record, indent=2))
        body = markdown(record)
        print(body)
        print("README.md updated" if fill_readme(body) else f"README.md has no <!-- {TAG}:start --> marker")
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS):
        ap.error(f"--methods: choose from {', '.join(METHODS)}")
    from slm.posttrain.config import load_posttrain_config
    from slm.posttrain.run import run_posttrain
    from slm.runtime import cpu_features

    t0 = time.perf_counter()
    runs: dict[str, dict] = {}
    start = {"sft": args.init, "dpo": f"{args.out}/sft", "grpo": args.init}
    for method in methods:
        recipe, key, direction = METHODS[method]
        t = time.perf_counter()
        overrides = [f"--posttrain.init_from={start[method]}", f"--run.out_dir={args.out}/{method}",
                     "--run.overwrite=true", "--train.log_every=1", "--train.eval_every=0",
                     f"--posttrain.train_data=[{args.data}/{method}_train.jsonl]",
                     f"--posttrain.val_data=[{args.data}/{method}_val.jsonl]"]
        overrides += [f"--train.steps={args.steps}"] if args.steps else []
        cfg, post = load_posttrain_config(recipe, overrides + extra)
        summary = run_posttrain(method, cfg, post, progress=False)
        points = curve(Path(summary["run_dir"]), key)
        held = heldout(Path(summary["run_dir"]), method)
        win = windows(points)
        rising = win[-1][1] > win[0][1]
        runs[method] = {"recipe": recipe, "metric": key, "steps": summary["steps"], "curve": points, "windows": win,
                        "trend": f"{direction}" if rising == (direction == "rises") else f"does not {direction[:-1]}",
                        "seconds": time.perf_counter() - t, "heldout": held,
                        "command": " ".join(["python", "bench/posttrain_curves.py", *sys.argv[1:]]),
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        print(f"{method}: {key} " + "  ".join(f"[{label}] {v:.3f}" for label, v in win) + f"  ({runs[method]['trend']})",
              flush=True)
    cpu = cpu_features()
    machine = f"CPU ({cpu.get('model', 'unknown')}), torch {torch_version()}, load average {load_average()}"
    for run in runs.values():
        run["machine"] = machine
    record_file = Path(args.out).parent / "posttrain-curves.json"
    earlier = json.loads(record_file.read_text()).get("runs", {}) if record_file.is_file() else {}
    record = {"runs": {m: runs.get(m) or earlier[m] for m in METHODS if m in runs or m in earlier},
              "seconds": time.perf_counter() - t0}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    record_file.write_text(json.dumps(record, indent=2))
    body = markdown(record)
    print(body)
    if not args.no_readme:
        print("README.md updated" if fill_readme(body) else f"README.md has no <!-- {TAG}:start --> marker")
    return 0


if __name__ == "__main__":
    sys.exit(main())
