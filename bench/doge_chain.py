"""SmallDoge's path in slm on the CPU: base (pretrain) -> instruct (SFT, DPO) -> reason (GRPO), one figure per stage.

    python bench/doge_chain.py [--base RUN_DIR] [--quick]
    python bench/doge_chain.py --data-only          (only writes the post-training data)

Stages: `slm run recipes/doge.yaml` (skipped with --base: a finished Doge run, e.g. the comparison's), then
recipes/doge-sft.yaml, doge-dpo.yaml and doge-grpo.yaml, each starting from the previous stage's checkpoint. Figures:
val bits/byte of the base, held-out SFT loss before/after, held-out DPO preference accuracy before/after, and the
GRPO reward (greedy, held-out prompts) before/after plus the mean sampled train reward.

The post-training data are generated, not downloaded: a Shakespeare-sized model knows no instructions, so the demo
teaches it one narrow skill — adding two numbers below 50 — in SmallDoge's reasoning layout. SFT chats answer
"<think>a plus b</think> <answer>a+b</answer>"; DPO pairs prefer the right sum to a wrong one (off by 1-10); GRPO
prompts carry the sum for the `math_partial` reward and the layout earns the `format` reward. Held-out splits use pairs
(a, b) that training never sees. Writes runs/doge-chain.json and the README table between
`<!-- doge-chain:start -->` and `<!-- doge-chain:end -->` (figures generated, never typed).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from slm.errors import atomic_write_text  # noqa: E402

DATA = ROOT / "runs" / "doge-data"


def _question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def _reply(a: int, b: int, total: int) -> str:
    return f"<think>{a} plus {b}</think> <answer>{total}</answer>"


def write_data(out: Path = DATA, seed: int = 0) -> dict[str, int]:
    """sft/dpo/grpo _{train,val}.jsonl under `out`; val pairs (a, b) are disjoint from train. Returns row counts."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(50) for b in range(50)]
    rng.shuffle(pairs)
    splits = {"val": pairs[:200], "train": pairs[200:]}
    counts = {}
    for split, rows in splits.items():
        sft = [{"messages": [{"role": "user", "content": _question(a, b)},
                             {"role": "assistant", "content": _reply(a, b, a + b)}]} for a, b in rows]
        dpo = []
        for a, b in rows:
            wrong = a + b + rng.choice([d for d in range(-10, 11) if d and a + b + d >= 0])
            dpo.append({"prompt": _question(a, b), "chosen": _reply(a, b, a + b), "rejected": _reply(a, b, wrong)})
        grpo = [{"prompt": _question(a, b), "answer": str(a + b)} for a, b in rows]
        for name, recs in (("sft", sft), ("dpo", dpo), ("grpo", grpo)):
            atomic_write_text(out / f"{name}_{split}.jsonl", "".join(json.dumps(r) + "\n" for r in recs))
            counts[f"{name}_{split}"] = len(recs)
    return counts


def _slm(*args: str) -> None:
    print("$ slm " + " ".join(args), flush=True)
    proc = subprocess.run([sys.executable, "-m", "slm.cli", *args], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"slm {args[0]} failed (exit {proc.returncode})")


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _mean_train_reward(run_dir: Path) -> float | None:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rewards = [r["reward"] for r in rows if r.get("kind") == "train" and "reward" in r]
    return sum(rewards) / len(rewards) if rewards else None


def render(res: dict) -> str:
    s = res["stages"]
    def f(v, spec=".3f"):
        return "-" if v is None else format(v, spec)
    rows = [
        (f"base: {s['base']['source']}", "val bits/byte", None, s["base"]["val_bpb"], s["base"]["seconds"]),
        ("instruct: `slm sft recipes/doge-sft.yaml`", "held-out SFT loss", s["sft"]["before"], s["sft"]["after"],
         s["sft"]["seconds"]),
        ("instruct: `slm dpo recipes/doge-dpo.yaml`", "held-out preference accuracy", s["dpo"]["before"],
         s["dpo"]["after"], s["dpo"]["seconds"]),
        ("reason: `slm grpo recipes/doge-grpo.yaml`", "held-out reward (math_partial + format, greedy)", s["grpo"]["before"],
         s["grpo"]["after"], s["grpo"]["seconds"]),
    ]
    lines = ["| stage | figure | before | after | seconds |", "|---|---|---|---|---|"]  # seconds: whole command
    lines += [f"| {a} | {b} | {f(c)} | {f(d)} | {e:.0f} |" for a, b, c, d, e in rows]
    lines += ["", "Preference accuracy: the model gives the right sum a higher log-likelihood than the wrong one. After "
              f"DPO, the implicit reward (log-ratio to the SFT model) is higher for the right sum in "
              f"{f(s['dpo'].get('reward_accuracy_after'))} of held-out pairs (mean margin "
              f"{f(s['dpo'].get('margin_after'))}); DPO moves that ratio, not the likelihoods themselves.",
              "", f"GRPO mean sampled train reward: {f(s['grpo']['train_reward_mean'])} (of 2: math_partial + format); "
                  f"held-out math_partial reward (1 = the exact sum, up to 0.5 for a close one): "
                  f"{f(s['grpo'].get('math_before'))} before GRPO, {f(s['grpo']['math_after'])} after.", "",
              f"`{res['command']}` — {res['date']}; {res['machine']}"]
    return "\n".join(lines)


def fill_readme(body: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = r"(<!-- doge-chain:start -->\n).*?(\n<!-- doge-chain:end -->)"
    if not re.search(pattern, text, flags=re.S):
        print("README.md has no <!-- doge-chain:start --> marker; table not inserted")
        return
    atomic_write_text(readme, re.sub(pattern, lambda m: m.group(1) + body + m.group(2), text, flags=re.S))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="", help="a finished Doge pretraining run to start from (skips stage 1)")
    ap.add_argument("--data-only", action="store_true", help="only write runs/doge-data/*.jsonl")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps per stage, no README update")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of every stage (0 = all cores)")
    args = ap.parse_args()
    print(write_data())
    if args.data_only:
        return 0
    from harness import machine_line  # noqa: E402  (bench/ is on sys.path when run as a script)

    quick = ["--train.steps=2", "--train.eval_every=0", "--train.eval_batches=2", "--train.compile=false"]
    threads = [f"--train.num_threads={args.threads}"] if args.threads else []
    out = ROOT / "runs" / ("doge-chain-quick" if args.quick else "doge-chain")
    stages: dict[str, dict] = {}
    t0 = time.perf_counter()
    base = Path(args.base) if args.base else out / "base"
    if not args.base:
        _slm("run", "recipes/doge.yaml", f"--run.out_dir={base}", "--run.overwrite=true", *threads,
             *(quick + ["--train.phases=[]", "--tokenizer.vocab_size=512"] if args.quick else []))
    source = f"`{args.base}` (`--base`)" if args.base else "`slm run recipes/doge.yaml`"
    seconds = _summary(base).get("timings", {}).get("total_s", 0.0) if args.base else time.perf_counter() - t0
    stages["base"] = {"val_bpb": _summary(base)["val"]["bpb"], "seconds": seconds, "source": source}
    prev = base
    for method in ("sft", "dpo", "grpo"):
        t = time.perf_counter()
        run_dir = out / method
        _slm(method, f"recipes/doge-{method}.yaml", f"--posttrain.init_from={prev}", f"--run.out_dir={run_dir}",
             "--run.overwrite=true", *threads, *(quick + (["--posttrain.grpo.eval_prompts=2"] if method == "grpo" else [])
                                       if args.quick else []))
        summ = _summary(run_dir)
        key = {"sft": "loss", "dpo": "pref_accuracy", "grpo": "reward"}[method]
        stages[method] = {"before": summ["eval_before"].get(key), "after": summ["eval_after"].get(key),
                          "seconds": time.perf_counter() - t}
        if method == "dpo":  # the DPO objective's own accuracy: implicit reward of chosen > rejected (vs the SFT model)
            stages[method]["reward_accuracy_after"] = summ["eval_after"].get("rewards_accuracy")
            stages[method]["margin_after"] = summ["eval_after"].get("rewards_margin")
        if method == "grpo":
            stages[method]["train_reward_mean"] = _mean_train_reward(run_dir)
            stages[method]["math_before"] = summ["eval_before"].get("reward_math_partial")
            stages[method]["math_after"] = summ["eval_after"].get("reward_math_partial")
        prev = run_dir
    res = {"command": "python bench/doge_chain.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "stages": stages}
    body = render(res)
    print(body)
    if not args.quick:
        atomic_write_text(out.with_suffix(".json"), json.dumps(res, indent=2))
        fill_readme(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
