"""SFT -> DPO demo on SmolLM2-135M-Instruct with BIG-bench data; prints held-out preference accuracy before/after DPO.

    python bench/posttrain_demo.py [--sft-steps 15] [--dpo-steps 24] [--dpo-seq-len 512] [--section.key=value ...]

Needs `slm import hf <gguf> --out runs/smollm2-135m-instruct` and `python -m slm.posttrain.bigbench --out
runs/posttrain-data` first (recipes/posttrain-demo.yaml says how). Figures go to runs/posttrain-demo.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from slm.posttrain.config import load_posttrain_config
from slm.posttrain.run import run_posttrain

KEYS = ("loss", "pref_accuracy", "pref_accuracy_norm", "rewards_accuracy", "rewards_margin", "pairs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sft-steps", type=int, default=15)
    p.add_argument("--dpo-steps", type=int, default=24)
    p.add_argument("--dpo-seq-len", type=int, default=512, help="longer pairs are skipped (train and held-out)")
    args, extra = p.parse_known_args()
    t0 = time.perf_counter()
    sft = {"eval_before": {}, "eval_after": {}, "steps": 0, "checkpoint": "runs/smollm2-135m-instruct"}
    if args.sft_steps:  # 0 = DPO straight from the imported instruct model
        sft_cfg, sft_post = load_posttrain_config("recipes/posttrain-demo.yaml", [
            f"--train.steps={args.sft_steps}", "--train.batch_size=2", "--train.seq_len=384",
            "--train.eval_every=0", "--train.eval_batches=4", "--run.out_dir=runs/posttrain-demo-sft", *extra])
        sft = run_posttrain("sft", sft_cfg, sft_post)
    t1 = time.perf_counter()
    dpo_cfg, dpo_post = load_posttrain_config("recipes/posttrain-dpo.yaml", [
        f"--train.steps={args.dpo_steps}", "--train.grad_accum=1", "--train.eval_every=0", "--train.lr=1e-5",
        f"--train.seq_len={args.dpo_seq_len}", f"--posttrain.init_from={sft['checkpoint']}",
        "--run.out_dir=runs/posttrain-demo-dpo", *extra])
    dpo = run_posttrain("dpo", dpo_cfg, dpo_post)
    t2 = time.perf_counter()
    out = {"sft": {"val_loss_before": sft["eval_before"].get("loss"), "val_loss_after": sft["eval_after"].get("loss"),
                   "steps": sft["steps"], "seconds": round(t1 - t0)},
           "dpo": {"before": {k: dpo["eval_before"].get(k) for k in KEYS},
                   "after": {k: dpo["eval_after"].get(k) for k in KEYS},
                   "steps": dpo["steps"], "seconds": round(t2 - t1), "skipped": dpo["skipped_examples"]}}
    Path("runs/posttrain-demo.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
