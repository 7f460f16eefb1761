"""How a recipe command takes its arguments: a YAML recipe, then any number of `--section.key=value` overrides.

argparse cannot know the override keys (they are the config's dataclass fields, and the model section depends on the
architecture), so recipe commands accept unknown flags (`takes_overrides`) and hand them to `slm.config`, which names
a wrong key or value itself. `--help` ends with every key, its default and its one-line comment (`config_help`), so
the fields' source comments are the only documentation to keep up to date.

A recipe command's output is `--out PATH` like every other command's (`slm.cli.convention`): it is shorthand for the
config key that names the output (`--run.out_dir` for training commands), added as one more override so that the
saved config records it.
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Callable, Iterable

from ..errors import SlmError

RUN_RECIPE_HELP = "YAML recipe (see recipes/); overrides follow as --section.key=value"


def format_config_keys(rows: Iterable[tuple[str, str, str]], title: str) -> str:
    """The epilog of a recipe command: one `--flag  comment [default ...]` line per config key."""
    rows = list(rows)
    width = max(len(r[0]) for r in rows)
    lines = [title]
    lines += [f"  {flag:<{width}}  {comment} [default {default}]" for flag, default, comment in rows]
    return "\n".join(lines)


@functools.lru_cache(maxsize=1)
def run_config_epilog() -> str:
    """Built once per process: it reads the source of every config dataclass (~0.3 s), and four commands show it."""
    from ..config import config_help

    return format_config_keys(config_help(), "config keys (override with --section.key=value):")


def add_recipe_command(sub: Any, name: str, fn: Callable[[argparse.Namespace], int], help_text: str, *,
                       epilog: str | None = None, recipe_help: str = RUN_RECIPE_HELP, recipe_required: bool = False,
                       out_key: str | None = "run.out_dir", **flags: dict) -> argparse.ArgumentParser:
    """Add subcommand `name`: a recipe positional, --quiet, the given extra flags, and overrides after them.

    `--out PATH` sets config key `out_key` (None: the command has no `--out`, or defines its own in `flags`)."""
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog=run_config_epilog() if epilog is None else epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs=None if recipe_required else "?", help=recipe_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, opts in flags.items():
        p.add_argument(f"--{flag}", **opts)
    if out_key is not None and "out" not in flags:
        what = {"run.out_dir": "the run dir"}.get(out_key, "the output")
        p.add_argument("--out", default=None, metavar="PATH", help=f"{what} (same as --{out_key})")
    else:
        out_key = None
    p.set_defaults(fn=fn, takes_overrides=True, out_key=out_key)
    return p


def recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The recipe path and the overrides. argparse takes an argument that starts with "-" but holds a space
    (`--train.phases=[{seq_len: 32, steps: 9}]`) for a positional, i.e. for the recipe: give it back to the
    overrides."""
    recipe, overrides = args.recipe, list(getattr(args, "overrides", None) or [])
    if recipe is not None and recipe.startswith("--"):
        recipe, overrides = None, [recipe, *overrides]
    out_key = getattr(args, "out_key", None)
    if out_key and args.out:
        if any(o.startswith(f"--{out_key}=") for o in overrides):
            raise SlmError(f"--out {args.out} and --{out_key}: the same setting twice; give only --out PATH")
        overrides.append(f"--{out_key}={json.dumps(str(args.out))}")  # quoted: a path YAML would read as a number
    return recipe, overrides


def load_run_cfg(args: argparse.Namespace, *forced: str):
    """The run config of a recipe command: recipe, then the user's overrides, then `forced` ones (the command's own).
    A recipe's `sft:` section belongs to `slm run`'s SFT stage (`load_run_and_sft`); other commands ignore it."""
    return load_run_and_sft(args, *forced)[0]


def load_run_and_sft(args: argparse.Namespace, *forced: str):
    """(run config, SFT stage or None) of a recipe command (`slm.posttrain.stage.load_run_recipe`)."""
    from ..posttrain.stage import load_run_recipe

    recipe, overrides = recipe_and_overrides(args)
    return load_run_recipe(recipe, [*overrides, *forced])
