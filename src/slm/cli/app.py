"""`slm <command>`: the command table, the parser built from it, and the one place errors become exit codes.

Each command group lives in its own module of this package and adds its subcommands with an `add_*(sub)` function;
`COMMANDS` lists them in `--help` order, so a new command is one module and one line here. The modules import
torch, transformers and the library lazily inside their handlers, so building the parser (and `slm --help`) stays
fast. Known errors (SlmError) become one line on stderr and exit 2; Ctrl-C exits 130 without a traceback.

Recipe commands (`run`, `train`, `tokenizer train`, `data prepare`, post-training) take a YAML recipe and any number of
`--section.key=value` overrides (see `slm.cli.recipe`); every other command rejects arguments it does not know.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from ..errors import SlmError
from . import convert, data, evaluate, generate, posttrain, run

# `slm` subcommands in --help order; each function adds its command (or command group) to the sub-parsers.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    run.add_run,  # run
    run.add_train,  # train
    run.add_tokenizer,  # tokenizer train
    data.add_data,  # data prepare | stats | upload
    evaluate.add_eval,  # eval
    generate.add_generate,  # generate
    convert.add_export,  # export hf
    convert.add_import,  # import hf
    posttrain.register,  # sft | dpo | grpo | distill generate | distill kd | chat
    run.add_report,  # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="Raw text -> a small language model: tokenizer, data, "
                                     "pretraining, evaluation, generation and export.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(sub)
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
