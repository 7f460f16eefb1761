"""KD vs CE alone: a small student sharing SmolLM2's tokenizer, trained the same steps on the same data twice.

    python bench/posttrain_kd.py [--steps 60] [extra --section.key=value overrides for both runs]

Run A is `slm distill kd` (forward KL to SmolLM2-135M-Instruct mixed with CE, alpha 0.5), run B is `slm sft` (CE
only) from the same random-init student checkpoint, same seed, data order and schedule. Both report the held-out
assistant-token CE ("loss"); the figures go to runs/posttrain-kd.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from slm.config import RunConfig
from slm.models import build_model
from slm.models.llama import LlamaConfig
from slm.posttrain.config import load_posttrain_config
from slm.posttrain.run import run_posttrain
from slm.checkpoint import load_tokenizer_of, save_checkpoint

STUDENT = Path("runs/kd-student-init")
TEACHER = Path("runs/smollm2-135m-instruct")


def make_student() -> None:
    tok = load_tokenizer_of(TEACHER)
    cfg = RunConfig()
    cfg.model = LlamaConfig(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=384, vocab_size=49152,
                            max_seq_len=512, tie_embeddings=True)
    cfg.tokenizer.kind, cfg.tokenizer.path = "pretrained", str((STUDENT / "tokenizer").resolve())
    model = build_model(cfg.model)
    model.reset_parameters(seed=0)
    save_checkpoint(STUDENT, model=model, config=cfg, tokenizer=tok, overwrite=True)  # its own scratch student


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    args, extra = p.parse_known_args()
    make_student()
    common = [f"--train.steps={args.steps}", "--train.batch_size=4", "--train.loss_chunk=512",
              "--train.eval_every=0", f"--posttrain.init_from={STUDENT}", *extra]
    results = {}
    for name, method, more in (("kd", "kd", []), ("ce", "sft", [])):
        t0 = time.perf_counter()
        cfg, post = load_posttrain_config("recipes/posttrain-kd.yaml", [*common, f"--run.out_dir=runs/kd-{name}",
                                                                        *more])
        s = run_posttrain(method, cfg, post)
        results[name] = {"val_loss_before": s["eval_before"]["loss"], "val_loss_after": s["eval_after"]["loss"],
                         "kl_to_teacher_after": s["eval_after"].get("kl_to_teacher"), "steps": s["steps"],
                         "seconds": round(time.perf_counter() - t0)}
    Path("runs/posttrain-kd.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
