"""`slm <command>`: the command table, the parser built from it, and the one place errors become exit codes.

Each command group lives in its own module of this package and adds its subcommands with an `add_*(sub)` function;
`COMMANDS` lists them in `--help` order, so a new command is one module and one line here. The modules import
torch, transformers and the library lazily inside their handlers, so building the parser (and `slm --help`) stays
fast. Known errors (SlmError) become one line on stderr and exit 2; Ctrl-C exits 130 without a traceback.

Recipe commands (`run`, `train`, `tokenizer train`, `data prepare`, post-training) take a YAML recipe and any number of
`--section.key=value` overrides (see `slm.cli.recipe`); every other command rejects arguments it does not know.

Every input mistake ends the same way — one `slm: error: ...` line and exit 2: argparse's own errors (its usage
block is replaced by a pointer to --help), arguments that are not valid UTF-8 (the OS hands them over as lone
surrogates, which no later encoder accepts), and OS errors a user fixes (disk full, permission, read-only file
system: `slm.errors.os_error`, naming the path). A preempted training run (SIGTERM/SIGUSR1, `--train.preempt_signals`)
saves a checkpoint and exits 128 + the signal number, so schedulers see it was stopped, not finished.

Inputs and outputs follow one convention (`slm.cli.convention`, shown at the end of `slm --help`). `--verbose`
(before or after the command) lets third-party log lines (datatrove's) through to the console; it travels to worker
processes as SLM_VERBOSE=1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from ..errors import Preempted, SlmError, os_error
from . import convert, data, evaluate, generate, posttrain, run, serve, ship
from .convention import EPILOG

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
    ship.add_push,  # push
    posttrain.register,  # sft | dpo | grpo | distill generate | distill kd | chat
    serve.add_serve,  # serve
    run.add_report,  # report
)


class Parser(argparse.ArgumentParser):
    """argparse with its errors raised as SlmError (one line) instead of a usage block and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SlmError(f"{self.prog}: {message} (see {self.prog} --help)")


def check_utf8(argv: list[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (decoded by Python into lone surrogates)."""
    for i, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise SlmError(f"argument {i} ({shown[:60]}) is not valid UTF-8; pass UTF-8 text and paths") from None


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="slm", description="Raw text -> a small language model: tokenizer, data, "
                                     "pretraining, evaluation, generation and export.",
                    epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verbose", action="store_true", help="third-party log lines (datatrove) on the console")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        check_utf8(argv)
        args, extra = parser.parse_known_args(argv)
        if "--verbose" in extra:  # also accepted after the command: `slm data prepare R --verbose`
            extra = [a for a in extra if a != "--verbose"]
            args.verbose = True
        if args.verbose:
            os.environ["SLM_VERBOSE"] = "1"
        if extra and not getattr(args, "takes_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        return args.fn(args) or 0
    except SlmError as exc:
        return _fail(str(exc))
    except OSError as exc:
        err = os_error(exc)
        if err is None:
            raise
        return _fail(str(err))
    except KeyboardInterrupt:
        print("slm: interrupted", file=sys.stderr)
        return 130
    except Preempted as exc:
        print(f"slm: {exc}", file=sys.stderr)
        return 128 + exc.signum


def _fail(message: str) -> int:
    """The one line of an error (a message that quotes a library's multi-line text is folded)."""
    print("slm: error: " + " ".join(message.split()), file=sys.stderr)
    return 2
