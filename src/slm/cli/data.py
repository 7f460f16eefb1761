"""`slm data prepare | stats | upload`: turn a corpus into token shards, describe it, publish it.

`slm data prepare` takes two kinds of YAML. One with a top-level `sources:` key is a data-pipeline recipe
(`slm.data.pipeline`, the datatrove DAG: clean, dedup, mix, pack) and runs here with its own `--section.key=value`
overrides (`--executor.workers=2`, `--mix.total_tokens=1e9`); any other YAML is a run recipe, whose tokenizer and
data stages (`slm.stages`) run alone. The library functions return reports; printing them is this module's job.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import SlmError, check_output_dir
from .convention import add_out, take_out
from .recipe import add_recipe_command, load_run_cfg, recipe_and_overrides


def is_data_recipe(path: str | Path) -> bool:
    """True when the YAML file has a top-level `sources:` key (a data-pipeline recipe)."""
    from ..config import read_yaml

    return "sources" in read_yaml(path)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.2f} MB"


def format_report(report: dict) -> str:
    """A few lines per stage: documents, bytes, removed counts, mix targets vs written tokens."""
    lines = [f"data pipeline report: {report.get('name', '')}"]
    for stage in ("read", "clean", "exact_dedup", "near_dedup"):
        info = report.get(stage) or {}
        removed = info.get("removed_documents")
        extra = f", removed {removed:,}" if removed is not None else ""
        lines.append(f"  {stage:<11} {info.get('documents', 0):>10,} docs  {_mb(info.get('bytes', 0)):>12}{extra}")
    for fid, removed in (report.get("clean") or {}).get("removed", {}).items():
        lines.append(f"    filter {fid}: removed {removed['documents']:,} docs ({_mb(removed['bytes'])})")
    contamination = (report.get("near_dedup") or {}).get("contamination")
    if contamination:
        lines.append(f"    train docs near-duplicating val (removed): {contamination['train_docs_matching_val']:,}")
    for p in report.get("mix", []):
        lines.append(f"  mix {p['source']}: weight {p['weight']:g} -> target {p['target_tokens']:,} tokens, "
                     f"written {p['written']['tokens']:,} ({100 * p['error']:+.2f}%)")
    for split, info in (report.get("pack") or {}).items():
        lines.append(f"  pack {split}: {info.get('tokens', 0):,} tokens in {info.get('shards', 0)} shard(s)")
    if "timings_s" in report:
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in report["timings_s"].items()))
    return "\n".join(lines)


def run_data_recipe(path: str, overrides: list[str], out: str | None) -> dict:
    """Run (or resume) the pipeline of a data recipe; `out` overrides the recipe's output folder. Prints a summary."""
    from ..data.pipeline import load_data_recipe, run_data_pipeline

    recipe = load_data_recipe(path, overrides)
    if out:
        recipe.out = str(out)
    report = run_data_pipeline(recipe)
    if "submitted" in report:
        print(f"submitted stages {', '.join(report['submitted'])}; dataset will be written to {report['out']}")
    else:
        print(format_report(report))
        print(f"dataset: {recipe.out_dir()} (report.json beside the shards)")
    return report


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from ..data.stats import dataset_stats, format_stats
    from ..stages import stage_data, stage_tokenizer
    from ..tokenizer import load_tokenizer

    args.recipe, args.overrides = recipe_and_overrides(args)
    if args.recipe and is_data_recipe(args.recipe):  # top-level `sources:`: the datatrove pipeline (recipes/data/)
        run_data_recipe(args.recipe, args.overrides + (["--progress=false"] if args.quiet else []), args.out or None)
        return 0
    if not args.out:
        raise SlmError("slm data prepare: --out DIR is required for a run recipe")
    cfg = load_run_cfg(args)
    out = Path(args.out)
    check_output_dir(out, overwrite=True)  # the cwd, a file, a folder slm did not write: refused before any work
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer)
    else:
        tok = stage_tokenizer(cfg, out.parent / f"{out.name}.tokenizer", not args.quiet)
    stage_data(cfg, tok, out, progress=not args.quiet, overwrite=args.overwrite)
    print(format_stats(dataset_stats(str(out))))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from ..data.stats import dataset_stats, format_stats
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer) if args.tokenizer else None
    stats = dataset_stats(args.path, tokenizer=tok)
    print(json.dumps(stats, indent=2, default=str) if args.json else format_stats(stats))
    return 0


def cmd_data_upload(args: argparse.Namespace) -> int:
    from ..data.upload import upload_dataset

    take_out(args, "slm data upload", old="slm data upload FOLDER TARGET", new="slm data upload FOLDER --out TARGET",
             legacy="target")
    where = upload_dataset(args.folder, args.out, private=args.private, revision=args.revision,
                           message=args.message)
    print(f"uploaded {args.folder} -> {where}")
    return 0


def register_upload(data_sub: argparse._SubParsersAction) -> None:
    """Add `slm data upload FOLDER --out TARGET` to the `slm data` subcommands (the old positional TARGET is
    deprecated)."""
    p = data_sub.add_parser("upload", help="Push a prepared dataset folder to the HF Hub (or copy it to a path)",
                            description="Upload a prepared dataset folder (manifest.json, shards, tokenizer, report) "
                                        "to a Hub dataset repo with huggingface_hub, or copy it to a local path")
    p.add_argument("folder", help="prepared dataset folder (holds manifest.json)")
    add_out(p, "Hub dataset repo id owner/name, or a local path (./dir, /abs/dir, file://...)")
    p.add_argument("target", nargs="?", default=None, help=argparse.SUPPRESS)  # deprecated: --out TARGET
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument("--revision", default="", help="branch to upload to (default: main)")
    p.add_argument("--message", default="", help="commit message")
    p.set_defaults(fn=cmd_data_upload)


def add_data(sub: Any) -> None:
    data = sub.add_parser("data", help="Data commands").add_subparsers(dest="sub", metavar="SUB", required=True)
    add_recipe_command(data, "prepare", cmd_data_prepare, "Tokenize and pack a recipe's corpus into token shards",
                       out={"default": "", "help": "output folder for shards + manifest.json (data recipes: default "
                            "from the recipe's out:)"},
                       tokenizer={"default": "", "help": "existing tokenizer (dir or tokenizer.json); default: build "
                                  "the recipe's tokenizer next to --out"},
                       overwrite={"action": "store_true", "help": "replace --out when it holds a dataset prepared "
                                  "from other settings (only an slm dataset is ever replaced)"})
    st = data.add_parser("stats", help="Documents, bytes, tokens, bytes/token and length distribution",
                         description="Statistics of a prepared dataset dir, or of raw inputs with --tokenizer")
    st.add_argument("path", help="prepared dataset dir, or a text/jsonl/parquet file or folder")
    st.add_argument("--tokenizer", default="", help="tokenizer for token counts of raw inputs")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(fn=cmd_data_stats)
    register_upload(data)
