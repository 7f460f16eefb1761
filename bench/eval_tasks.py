"""Checkpoints on slm's offline BIG-bench tasks (lm-eval), beside the random-guess baseline: the README's task table.

    python bench/eval_tasks.py [--limit 20] [--checkpoint LABEL=CKPT ...] [--tasks T1,T2] [--no-readme]

Default checkpoint: the quickstart run (`make demo`, runs/quickstart). The post-training demo's models are added with
`--checkpoint quickstart=runs/quickstart --checkpoint sft=runs/posttrain-demo-sft
--checkpoint dpo=runs/posttrain-demo-dpo` (bench/posttrain_demo.py writes them). Scores come from `slm.eval.harness.run_tasks`, the code `slm eval --tasks`
runs, with its fixed seeds (0-shot, greedy generation: the same checkpoint gives the same numbers twice).

`--limit N` scores at most N examples of every (sub)task, so a table takes minutes on a CPU; the random-guess baseline
(mean of 1/#choices) is over all of a task's examples, and a group's is weighted by the examples scored in each
member, like its accuracy. Figures go to runs/eval_tasks.json and to the README between `<!-- eval-tasks:start -->`
and `<!-- eval-tasks:end -->` (generated, never typed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

from slm.errors import atomic_write_text  # noqa: E402

DEFAULT_TASKS = ("slm_bb_hhh_alignment", "slm_bb_logical_deduction", "slm_bb_causal_judgment",
                 "slm_bb_date_understanding", "slm_bb_sports_understanding", "slm_bb_physical_intuition",
                 "slm_bb_general_knowledge", "slm_bb_anachronisms", "slm_bb_common_morpheme", "slm_bb_arithmetic",
                 "slm_bb_arithmetic_gen")
OUT_JSON = ROOT / "runs" / "eval_tasks.json"
TAG = "eval-tasks"


def parse_checkpoint(spec: str) -> tuple[str, str]:
    """"LABEL=PATH" or "PATH" (labelled by its folder) -> (label, path)."""
    label, sep, path = spec.partition("=")
    return (label, path) if sep else (Path(spec).name, spec)


def checkpoint_step(path: str) -> int | None:
    from slm import checkpoint as ckpt

    meta = ckpt.resolve_checkpoint(path) / "meta.json"
    try:
        return int(json.loads(meta.read_text()).get("step"))
    except (OSError, ValueError, TypeError):
        return None


def task_scores(results: dict, tasks: list[str]) -> dict[str, dict]:
    """{task: {"metrics": {metric: value}, "n": examples scored, "baseline": random-guess acc or None}} of the
    requested (top-level) tasks from lm-eval's results dict."""
    baselines = results.get("slm_random_baseline", {})
    members = results.get("group_subtasks", {})
    out = {}
    for task in tasks:
        entry = results["results"].get(task, {})
        metrics = {k.split(",")[0]: float(v) for k, v in entry.items()
                   if "," in k and "stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
        base = baselines.get(task)
        if base is None and members.get(task):  # a group: its members' baselines, weighted like its accuracy
            weighted = [(results["results"][m].get("sample_len", 0), baselines[m]) for m in members[task]
                        if m in baselines and m in results["results"]]
            total = sum(n for n, _ in weighted)
            base = sum(n * b for n, b in weighted) / total if total else None
        out[task] = {"metrics": metrics, "n": entry.get("sample_len"), "baseline": base}
    return out


def render(record: dict) -> str:
    """The README block: one row per (task, metric), a column per model, the random-guess baseline last."""
    models = record["models"]
    header = [f"{label} (step {m['step']})" if m.get("step") is not None else label for label, m in models.items()]
    lines = [f"| task | metric | examples | {' | '.join(header)} | random guess |",
             "|---|---|---|" + "---|" * len(models) + "---|"]
    for task in record["tasks"]:
        first = next(iter(models.values()))["scores"].get(task, {})
        metric_names = sorted({k for m in models.values() for k in m["scores"].get(task, {}).get("metrics", {})})
        for metric in metric_names:
            cells = []
            for m in models.values():
                value = m["scores"].get(task, {}).get("metrics", {}).get(metric)
                cells.append("-" if value is None else f"{value:.3f}")
            base = first.get("baseline") if metric in ("acc", "acc_norm") else None
            lines.append(f"| `{task}` | {metric} | {first.get('n', '-')} | {' | '.join(cells)} | "
                         f"{'-' if base is None else f'{base:.3f}'} |")
    return "\n".join(lines + [
        "",
        f"`{record['command']}` — {record['date']}; 0-shot, at most {record['limit']} examples per (sub)task "
        f"(`--limit {record['limit']}`); {record['seconds']:.0f} s on {record['machine']}."])


def fill_readme(body: str, readme: Path = ROOT / "README.md") -> bool:
    """Replace the README block of this script's TAG (harness.fill_readme_block)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import fill_readme_block

    return fill_readme_block(TAG, body, readme)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", action="append", default=None, metavar="[LABEL=]CKPT",
                    help="a checkpoint or run dir; repeat for several (default: quickstart=runs/quickstart)")
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated offline task names")
    ap.add_argument("--limit", type=int, default=20, help="at most N examples per (sub)task")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-readme", action="store_true", help="print the table; leave README.md alone")
    args = ap.parse_args()
    if args.limit < 1:
        ap.error("--limit must be >= 1")
    import torch

    from slm.eval.harness import run_tasks
    from slm.runtime import cpu_features

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    specs = [parse_checkpoint(s) for s in (args.checkpoint or ["quickstart=runs/quickstart"])]
    t0 = time.perf_counter()
    models = {}
    for label, path in specs:
        results = run_tasks(path, tasks, limit=args.limit, batch_size=args.batch_size, device=args.device)
        models[label] = {"checkpoint": path, "step": checkpoint_step(path), "scores": task_scores(results, tasks)}
        print(f"{label}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    cpu = cpu_features()
    record = {"command": " ".join(["python", "bench/eval_tasks.py", *sys.argv[1:]]),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "limit": args.limit, "tasks": tasks,
              "seconds": time.perf_counter() - t0, "models": models,
              "machine": f"{cpu['model']}, {torch.get_num_threads()} threads, torch {torch.__version__}"}
    atomic_write_text(OUT_JSON, json.dumps(record, indent=2))
    body = render(record)
    print(body)
    if not args.no_readme:
        print("README.md updated" if fill_readme(body) else f"README.md has no <!-- {TAG}:start --> marker; "
              "table not inserted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
