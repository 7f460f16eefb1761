"""`slm run | train | tokenizer train | report`: a pretraining recipe's stages (`slm.stages`) from the terminal.

`slm train` is `slm run` without the HF export: it adds `--export.hf=false` after the user's overrides, so the config
is still resolved in one place (`slm.config`) and the saved config.yaml says what ran. The handlers import torch and
the stages lazily so that `slm --help` stays instant, and print a short summary of what the stages returned.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from .recipe import add_recipe_command, format_config_keys, load_run_and_sft, load_run_cfg


def cmd_run(args: argparse.Namespace) -> int:
    from ..stages import run_pipeline

    cfg, sft = load_run_and_sft(args)
    summary = run_pipeline(cfg, progress=not args.quiet, sft=sft)
    if "val" in summary:
        print_summary(summary)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..stages import run_pipeline

    cfg, sft = load_run_and_sft(args, "--export.hf=false")
    summary = run_pipeline(cfg, progress=not args.quiet, sft=sft)
    if "val" in summary:
        print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
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
    sft = summary.get("sft")
    if sft:
        before, after = (sft.get("eval_before") or {}).get("loss"), (sft.get("eval_after") or {}).get("loss")
        loss = f"held-out chat loss {before:.4f} -> {after:.4f} | " if before is not None and after is not None else ""
        print(f"sft: {loss}steps {sft['steps']} | chat with: slm serve --checkpoint {Path(sft['run_dir'])}")
    print(f"run dir {summary['run_dir']} | report {summary.get('report')} | hf export {summary.get('hf_dir')}")


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from ..errors import atomic_dir, check_output_dir
    from ..stages import build_tokenizer

    check_output_dir(args.out, overwrite=args.overwrite)  # before training a tokenizer
    tok = build_tokenizer(load_run_cfg(args), progress=not args.quiet)
    with atomic_dir(args.out, overwrite=args.overwrite, kind="tokenizer") as tmp:
        tok.save(tmp)
    print(f"tokenizer: vocab {tok.vocab_size}, saved to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One run without --out: its report.md; several runs (or --out): one HTML page comparing them."""
    if len(args.run_dirs) == 1 and args.out is None:
        from ..report import write_report

        print(write_report(args.run_dirs[0]))
        return 0
    from ..report_compare import DEFAULT_OUT, write_comparison

    print(write_comparison(args.run_dirs, args.out or DEFAULT_OUT))
    return 0


@functools.lru_cache(maxsize=1)
def _run_epilog() -> str:
    """The run config's keys, then the optional SFT stage's (`slm.posttrain.stage`)."""
    from ..config import config_help
    from ..posttrain.stage import sft_config_help

    return format_config_keys([*config_help(), *sft_config_help()], "config keys (override with --section.key=value):")


def add_run(sub: Any) -> None:
    add_recipe_command(sub, "run", cmd_run, "Run a recipe's whole pipeline: tokenizer, data, train, [SFT], eval, "
                       "samples, HF export, report", epilog=_run_epilog())


def add_train(sub: Any) -> None:
    add_recipe_command(sub, "train", cmd_train, "Train (preparing tokenizer and data first when missing); resume "
                       "with --train.resume=auto")


def add_tokenizer(sub: Any) -> None:
    tok = sub.add_parser("tokenizer", help="Tokenizer commands").add_subparsers(dest="sub", metavar="SUB",
                                                                                required=True)
    add_recipe_command(tok, "train", cmd_tokenizer_train, "Train/build the recipe's tokenizer and save it",
                       out={"required": True, "help": "output folder (tokenizer.json + HF config files)"},
                       overwrite={"action": "store_true", "help": "replace OUT if it is a previous slm output"})


def add_report(sub: Any) -> None:
    rep = sub.add_parser("report", help="(Re)write a run's report.md, or an HTML page comparing runs",
                         description="With one run dir: rebuild its report.md and plots/ from its metrics. With "
                         "several (or --out): one self-contained HTML page comparing them — loss, bits/byte, "
                         "throughput and learning-rate curves, final and lm-eval results, config differences.")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (they hold metrics.jsonl)")
    rep.add_argument("--out", default=None, metavar="FILE.html",
                     help="the comparison page (default with several runs: ./report-compare.html)")
    rep.set_defaults(fn=cmd_report)
