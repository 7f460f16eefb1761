"""`slm generate`: prompts from flags, a file or an interactive session; streams the first sample to the terminal.

--prompt-file holds one prompt per line (a .jsonl file: one {"prompt": ...} object per line); --out receives
one JSON object per generated sample: {"prompt", "sample", "completion"} — written to a temp file and renamed.
The library side (`slm.generate`) works on token ids and knows no terminal; text in and out, streaming to stdout and
the interactive loop (`slm.cli.repl`) are this package's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import SlmError, atomic_path, loads_json
from ..config import SamplingConfig
from .convention import take_out


def add_generate_args(p: argparse.ArgumentParser) -> None:
    d = SamplingConfig()
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir: its latest checkpoint)")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument("--prompt-file", default="", help="one prompt per line (or .jsonl with a 'prompt' field)")
    p.add_argument("--out", default=None, metavar="FILE", help="write samples as JSONL here")
    p.add_argument("--output-file", dest="legacy_output_file", default=None, help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal (/temp /topk /topp "
                   "/max /quit)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="0 = off")
    p.add_argument("--top-p", type=float, default=d.top_p, help="1.0 = off")
    p.add_argument("--repetition-penalty", type=float, default=d.repetition_penalty, help="1.0 = off")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--num-samples", type=int, default=d.num_samples)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="decode weights; auto: the "
                   "faster on this machine, timed once and cached (slm.generate.calibrate)")
    p.add_argument("--compile", nargs="?", const="true", default="auto", choices=["auto", "true", "false", "autotune"],
                   help="compile the decode step: tens of seconds (a minute for 135M) up front, then about 2-3x the "
                   "tokens/s on CPU; auto: when its measured compile time pays back over this request; autotune: "
                   "also inductor's autotuned C++ GEMM templates (faster on some CPUs, e.g. with AMX)")


def _read_prompts(path: str) -> list[str]:
    f = Path(path)
    if not f.is_file():
        raise SlmError(f"--prompt-file {path}: file not found")
    try:
        lines = f.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise SlmError(f"--prompt-file {path}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
    if f.suffix != ".jsonl":
        return [line for line in lines if line.strip()]
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = loads_json(line)
            prompt = record["prompt"]
        except json.JSONDecodeError as exc:
            raise SlmError(f"--prompt-file {path}:{n}: invalid JSON ({exc.msg})") from None
        except (KeyError, TypeError, IndexError):
            raise SlmError(f"--prompt-file {path}:{n}: expected a JSON object with a 'prompt' field") from None
        if isinstance(prompt, (dict, list)) or prompt is None:
            raise SlmError(f"--prompt-file {path}:{n}: 'prompt' must be text, got {type(prompt).__name__}")
        prompts.append(str(prompt))
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    from .. import checkpoint as ckpt
    from ..runtime import resolve_device
    from ..generate.calibrate import MEASURE_COMPILE_MIN_TOKENS, choose_decode
    from ..generate.engine import generate
    from .repl import TextStreamer, run_repl

    take_out(args, "slm generate", old="slm generate --output-file FILE", new="slm generate --out FILE",
             legacy="legacy_output_file", required=False)
    if args.out and Path(args.out).is_dir():  # before the model loads (atomic_path checks again when writing)
        raise SlmError(f"--out {args.out}: is a directory; pass a file path")
    cfg = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                         num_samples=args.num_samples, seed=args.seed)
    path = ckpt.resolve_checkpoint(args.checkpoint)
    model, _ = ckpt.load_model(path, device=resolve_device(args.device))
    tok = ckpt.load_tokenizer_of(path)
    if tok is None:
        raise SlmError(f"{path}: checkpoint has no tokenizer/; generate needs one to turn text into ids")
    prompts = (args.prompt or []) + (_read_prompts(args.prompt_file) if args.prompt_file else [])
    if not prompts and not args.interactive:
        raise SlmError("slm generate: give --prompt TEXT, --prompt-file FILE or --interactive")
    expected = MEASURE_COMPILE_MIN_TOKENS if args.interactive else len(prompts) * cfg.num_samples * cfg.max_new_tokens
    model, choice = choose_decode(model, dtype=args.dtype, compile=args.compile, batch=1 if args.interactive else
                                  len(prompts) * cfg.num_samples, expected_tokens=expected,
                                  log=lambda m: print(f"slm: {m}", file=sys.stderr))
    args.compile = choice.compile
    if args.interactive:
        run_repl(model, tok, cfg, compile=args.compile)
        return 0
    ids = [tok.encode(p) if p else [tok.eos_id] for p in prompts]
    stream = len(prompts) == 1 and cfg.num_samples == 1 and not args.out
    if stream:
        streamer = TextStreamer(tok.decode)
        sys.stdout.write(prompts[0])
        def show(row: int, token: int) -> None:
            sys.stdout.write(streamer.push(token))
            sys.stdout.flush()

        generate(model, ids, cfg, eos_id=tok.eos_id, on_token=show, compile=args.compile)
        sys.stdout.write(streamer.finish() + "\n")
        return 0
    outs = generate(model, ids, cfg, eos_id=tok.eos_id, compile=args.compile)
    records = [{"prompt": prompts[i // cfg.num_samples], "sample": i % cfg.num_samples,
                "completion": tok.decode(o)} for i, o in enumerate(outs)]
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(f"wrote {len(records)} samples to {args.out}")
    else:
        for r in records:
            print(f"--- sample {r['sample']} ---\n{r['prompt']}{r['completion']}")
    return 0


def add_generate(sub: Any) -> None:
    gen = sub.add_parser("generate", help="Sample text from a checkpoint (streams to the terminal)",
                         description="Sample from a checkpoint: --prompt, --prompt-file/--output-file or --interactive")
    add_generate_args(gen)
    gen.set_defaults(fn=run_generate)
