"""How a recipe command takes its arguments: a YAML recipe, then any number of `--section.key=value` overrides.

argparse cannot know the override keys (they are the config's dataclass fields, and the model section depends on the
architecture), so recipe commands accept unknown flags (`takes_overrides`) and hand them to `slm.config`, which names
a wrong key or value itself. `--help` ends with every key, its default and its one-line comment (`config_help`), so
the fields' source comments are the only documentation to keep up to date.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any, Callable, Iterable

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
                       **flags: dict) -> argparse.ArgumentParser:
    """Add subcommand `name`: a recipe positional, --quiet, the given extra flags, and overrides after them."""
    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog=run_config_epilog() if epilog is None else epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs=None if recipe_required else "?", help=recipe_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    for flag, opts in flags.items():
        p.add_argument(f"--{flag}", **opts)
    p.set_defaults(fn=fn, takes_overrides=True)
    return p


def recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The recipe path and the overrides. argparse takes an argument that starts with "-" but holds a space
    (`--train.phases=[{seq_len: 32, steps: 9}]`) for a positional, i.e. for the recipe: give it back to the
    overrides."""
    recipe, overrides = args.recipe, list(getattr(args, "overrides", None) or [])
    if recipe is not None and recipe.startswith("--"):
        return None, [recipe, *overrides]
    return recipe, overrides


def load_run_cfg(args: argparse.Namespace, *forced: str):
    """The run config of a recipe command: recipe, then the user's overrides, then `forced` ones (the command's own)."""
    from ..config import load_run_config

    recipe, overrides = recipe_and_overrides(args)
    return load_run_config(recipe, [*overrides, *forced])
