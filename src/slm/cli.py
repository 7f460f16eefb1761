"""`slm <command>`: a map from subcommand to function. Known errors (SlmError) become one line on stderr and exit 2.

Recipe commands (`run`, `train`, `tokenizer train`, `data prepare`) take a YAML recipe and any number of
`--section.key=value` overrides; `slm run --help` lists every config key with its default and meaning. Heavy imports
(torch, transformers) happen inside the handlers so `slm --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from .errors import SlmError


def _config_epilog() -> str:
    from .config import config_help

    rows = config_help()
    width = max(len(r[0]) for r in rows)
    lines = ["config keys (override with --section.key=value):"]
    lines += [f"  {flag:<{width}}  {comment} [default {default}]" for flag, default, comment in rows]
    return "\n".join(lines)


def _load_cfg(args: argparse.Namespace):
    from .config import load_run_config

    return load_run_config(args.recipe, args.overrides)


# ------------------------------------------------------------------------------------------------------------ handlers


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    summary = run_pipeline(_load_cfg(args), progress=not args.quiet)
    if "val" in summary:
        _print_summary(summary)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    cfg = _load_cfg(args)
    cfg.export.hf = False
    summary = run_pipeline(cfg, progress=not args.quiet)
    if "val" in summary:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    val = summary.get("val") or {}
    print("\n=== samples ===")
    for text in summary.get("samples", []):
        print(text.rstrip(), "\n---")
    t = summary.get("timings", {})
    print("=== result ===")
    if val:
        print(f"val loss {val['loss']:.4f} | val bpb {val['bpb']:.4f} | ppl {val['perplexity']:.2f} | "
              f"acc {val['accuracy']:.3f} | top5 {val['top5_accuracy']:.3f}")
    print(f"train tok/s (median) {summary['tok_per_s']:,.0f} | steps {summary['steps']} | "
          f"total {t.get('total_s', 0):.1f}s (tokenizer {t.get('tokenizer_s', 0):.1f}s, data {t.get('data_s', 0):.1f}s,"
          f" train {t.get('train_s', 0):.1f}s)")
    print(f"run dir {summary['run_dir']} | report {summary.get('report')} | hf export {summary.get('hf_dir')}")


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .errors import atomic_dir
    from .pipeline import build_tokenizer

    tok = build_tokenizer(_load_cfg(args), progress=not args.quiet)
    with atomic_dir(args.out) as tmp:
        tok.save(tmp)
    print(f"tokenizer: vocab {tok.vocab_size}, saved to {args.out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from .pipeline import stage_data, stage_tokenizer
    from .tokenizer import load_tokenizer

    from .data.datacli import is_data_recipe, run_data_recipe

    if args.recipe and is_data_recipe(args.recipe):  # top-level `sources:`: the datatrove pipeline (recipes/data/)
        run_data_recipe(args.recipe, args.overrides + (["--progress=false"] if args.quiet else []), args.out or None)
        return 0
    if not args.out:
        raise SlmError("slm data prepare: --out DIR is required for a run recipe")
    cfg = _load_cfg(args)
    out = Path(args.out)
    tok = load_tokenizer(args.tokenizer) if args.tokenizer else stage_tokenizer(cfg, out.parent / f"{out.name}.tokenizer",
                                                                                 not args.quiet)
    stage_data(cfg, tok, out, progress=not args.quiet)
    from .data.stats import dataset_stats, format_stats

    print(format_stats(dataset_stats(str(out))))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from .data.stats import dataset_stats, format_stats
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    stats = dataset_stats(args.path, tokenizer=tok)
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.run import evaluate_checkpoint
    from .eval.metrics import format_table

    ckpts = args.compare or ([args.checkpoint] if args.checkpoint else [])
    if not ckpts:
        raise SlmError("slm eval: pass --checkpoint CKPT or --compare CKPT1 CKPT2 ...")
    rows = []
    for c in ckpts:
        rows.append((c, evaluate_checkpoint(c, data=args.data, split=args.split, seq_len=args.seq_len,
                                            batch_size=args.batch_size, max_batches=args.max_batches,
                                            device=args.device)))
    print(format_table(rows))
    if args.json:
        print(json.dumps({name: m for name, m in rows}, indent=2))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .generate.cli import run_generate

    return run_generate(args)


def cmd_export_hf(args: argparse.Namespace) -> int:
    from .export.hf import export_hf
    from .checkpoint import resolve_checkpoint

    out = export_hf(resolve_checkpoint(args.checkpoint), args.out, dtype=args.dtype)
    print(f"exported to {out} (load with transformers.AutoModelForCausalLM.from_pretrained('{out}'))")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from .export.hf import import_hf

    out = import_hf(args.src, args.out, dtype=args.dtype)
    print(f"imported {args.src} -> slm checkpoint {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run_dir))
    return 0


# ------------------------------------------------------------------------------------------------------------- parser


def _recipe_parser(sub, name: str, fn: Callable, help_text: str, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text, epilog=_config_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/); overrides follow as --section.key=value")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, opts in kw.items():
        p.add_argument(f"--{flag}", **opts)
    p.set_defaults(fn=fn, takes_overrides=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Raw text -> a small language model: tokenizer, data, "
                                     "pretraining, evaluation, generation and export.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _recipe_parser(sub, "run", cmd_run, "Run a recipe's whole pipeline: tokenizer, data, train, eval, samples, "
                   "HF export, report")
    _recipe_parser(sub, "train", cmd_train, "Train (preparing tokenizer and data first when missing); resume with "
                   "--train.resume=auto")

    tok = sub.add_parser("tokenizer", help="Tokenizer commands").add_subparsers(dest="sub", metavar="SUB", required=True)
    _recipe_parser(tok, "train", cmd_tokenizer_train, "Train/build the recipe's tokenizer and save it",
                   out={"required": True, "help": "output folder (tokenizer.json + HF config files)"})

    data = sub.add_parser("data", help="Data commands").add_subparsers(dest="sub", metavar="SUB", required=True)
    _recipe_parser(data, "prepare", cmd_data_prepare, "Tokenize and pack a recipe's corpus into token shards",
                   out={"default": "", "help": "output folder for shards + manifest.json (data recipes: default "
                        "from the recipe's out:)"},
                   tokenizer={"default": "", "help": "existing tokenizer (dir or tokenizer.json); default: build "
                              "the recipe's tokenizer next to --out"})
    st = data.add_parser("stats", help="Documents, bytes, tokens, bytes/token and length distribution",
                         description="Statistics of a prepared dataset dir, or of raw inputs with --tokenizer")
    st.add_argument("path", help="prepared dataset dir, or a text/jsonl/parquet file or folder")
    st.add_argument("--tokenizer", default="", help="tokenizer for token counts of raw inputs")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(fn=cmd_data_stats)
    from .data.datacli import register_upload

    register_upload(data)

    ev = sub.add_parser("eval", help="Loss, perplexity, bits/byte, accuracy of checkpoints",
                        description="Evaluate one checkpoint, or compare several in one table")
    ev.add_argument("--checkpoint", default="", help="checkpoint dir (or a run dir: its latest checkpoint)")
    ev.add_argument("--compare", nargs="+", default=None, metavar="CKPT", help="evaluate several checkpoints")
    ev.add_argument("--data", default="", help="a prepared dataset dir or a text file (default: the run's data)")
    ev.add_argument("--split", default="val", help="split of a prepared dataset (val | train)")
    ev.add_argument("--seq-len", type=int, default=0, help="context length (default: the checkpoint's training one)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-batches", type=int, default=0, help="0 = all")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--json", action="store_true", help="also print JSON")
    ev.set_defaults(fn=cmd_eval)

    gen = sub.add_parser("generate", help="Sample text from a checkpoint (streams to the terminal)",
                         description="Sample from a checkpoint: --prompt, --prompt-file/--output-file or --interactive")
    from .generate.cli import add_generate_args

    add_generate_args(gen)
    gen.set_defaults(fn=cmd_generate)

    exp = sub.add_parser("export", help="Export a checkpoint").add_subparsers(dest="sub", metavar="FORMAT",
                                                                              required=True)
    eh = exp.add_parser("hf", help="HF transformers folder (safetensors + config.json + tokenizer)",
                        description="Write a folder that transformers.AutoModelForCausalLM.from_pretrained loads")
    eh.add_argument("out", help="output folder")
    eh.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    eh.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    eh.set_defaults(fn=cmd_export_hf)

    imp = sub.add_parser("import", help="Import a model").add_subparsers(dest="sub", metavar="FORMAT", required=True)
    ih = imp.add_parser("hf", help="HF Llama-family folder (or a .gguf file) -> slm checkpoint",
                        description="Turn an HF Llama-family directory (e.g. SmolLM2) into an slm checkpoint")
    ih.add_argument("src", help="HF model folder with config.json + safetensors, or a .gguf file")
    ih.add_argument("out", help="output checkpoint dir")
    ih.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ih.set_defaults(fn=cmd_import_hf)

    from .posttrain.cli import register as register_posttrain

    register_posttrain(sub)

    rep = sub.add_parser("report", help="(Re)write a run's report.md with plots",
                         description="Rebuild report.md and plots/ of a run directory from its metrics")
    rep.add_argument("run_dir")
    rep.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "takes_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        return args.fn(args) or 0
    except SlmError as exc:
        print(f"slm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
