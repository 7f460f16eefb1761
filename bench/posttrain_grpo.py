"""GRPO on BIG-bench arithmetic with SmolLM2-135M-Instruct: prints the training reward curve (mean per eval window).

    python bench/posttrain_grpo.py [--section.key=value overrides of recipes/posttrain-grpo.yaml]

The curve is read back from the run's metrics.jsonl (eval rows carry train_reward = mean reward of the completions
sampled since the previous eval). Figures go to runs/posttrain-grpo-curve.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from slm.posttrain.config import load_posttrain_config
from slm.posttrain.run import run_posttrain


def main() -> None:
    t0 = time.perf_counter()
    cfg, post = load_posttrain_config("recipes/posttrain-grpo.yaml", sys.argv[1:])
    summary = run_posttrain("grpo", cfg, post)
    rows = [json.loads(line) for line in (cfg.run_dir() / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: r.get(k) for k in ("step", "train_reward", "train_reward_std", "train_completion_length",
                                    "train_stopped")} for r in rows if r["kind"] == "eval" and "train_reward" in r]
    half = max(1, len(curve) // 2)
    first = sum(c["train_reward"] for c in curve[:half]) / half
    last = sum(c["train_reward"] for c in curve[-half:]) / half
    out = {"steps": summary["steps"], "seconds": round(time.perf_counter() - t0), "curve": curve,
           "mean_reward_first_half": first, "mean_reward_second_half": last}
    Path("runs/posttrain-grpo-curve.json").write_text(json.dumps(out, indent=2))
    for c in curve:
        print(f"step {c['step']:4d}  reward {c['train_reward']:.3f} ± {c['train_reward_std']:.3f}  "
              f"len {c['train_completion_length']:.1f}")
    print(f"mean reward: first half {first:.3f} -> second half {last:.3f} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
