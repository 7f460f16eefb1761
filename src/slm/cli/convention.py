"""The one convention every `slm` command follows for what it reads and what it writes, and the old forms it replaced.

- What a command reads is positional: a recipe (`slm run RECIPE`), a source folder or file (`slm import hf SRC`,
  `slm data stats PATH`, `slm data upload FOLDER`, `slm push EXPORT`), a run dir (`slm report RUN_DIR`).
- A checkpoint it reads is always `--checkpoint CKPT` (a checkpoint dir, or a run dir: its latest checkpoint).
- What it writes is always `--out PATH`: a folder, a file, or a Hub repo id (`slm push`, `slm data upload`).
  Recipe commands take `--out DIR` as the run dir (`--run.out_dir`).

The forms this replaced (an output as a positional argument, `slm generate --output-file`, `slm push USER/NAME
--export PATH`) still work for one release: each prints one deprecation line to stderr naming the new form. The
legacy positionals are hidden from `--help`, so only the convention is documented.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import SlmError

EPILOG = """convention (every command):
  inputs are positional       slm run RECIPE, slm import hf SRC, slm data stats PATH, slm report RUN_DIR
  checkpoints: --checkpoint   slm eval|generate|chat|serve|export|push --checkpoint CKPT (or a run dir)
  the output: --out PATH      slm export hf --checkpoint CKPT --out DIR, slm import hf SRC --out DIR,
                              slm run RECIPE --out RUN_DIR, slm push --checkpoint CKPT --out USER/NAME
  recipe overrides            slm run RECIPE --section.key=value ... (each command's --help lists the keys)
  --verbose                   third-party log lines (datatrove) on the console"""


def deprecated(old: str, new: str) -> None:
    """The one line an old form prints (it still runs, for one release)."""
    print(f"slm: `{old}` is deprecated; use `{new}`", file=sys.stderr)


def add_out(p: argparse.ArgumentParser, help_text: str, *, legacy_positional: bool = False) -> None:
    """A required `--out PATH` (checked by `take_out`, since the old form may give it instead), and with `legacy_positional` the hidden positional OUT of the old form."""
    p.add_argument("--out", default=None, metavar="PATH", help=f"{help_text} (required)")
    if legacy_positional:
        p.add_argument("legacy_out", nargs="?", default=None, metavar="OUT", help=argparse.SUPPRESS)


def take_out(args: argparse.Namespace, command: str, *, old: str, new: str, legacy: str = "legacy_out",
             required: bool = True) -> str | None:
    """The output path: `--out`, or (deprecated, with one line on stderr) the old form's `legacy` argument."""
    value = getattr(args, legacy, None)
    if value is not None:
        if args.out is not None:
            raise SlmError(f"{command}: output given twice ({value} and --out {args.out}); give only --out PATH")
        deprecated(old, new)
        args.out = value
    if required and not args.out:
        raise SlmError(f"{command}: --out PATH is required (where to write); e.g. `{new}`")
    return args.out
