"""`slm export hf` and `slm import hf`: a checkpoint to a transformers folder and back (or from a .gguf file).

The file formats and the name mapping live in `slm.export.hf` and each architecture's adapter; this module only maps
flags to arguments. `--dtype` takes the choices of the config's `Dtype` Literal, so it and `--export.dtype` agree.
An existing OUT is refused unless `--overwrite` is given and OUT is a previous slm output (`slm.errors.atomic_dir`).
Inputs are positional, the checkpoint is `--checkpoint`, the output `--out` (`slm.cli.convention`); the old
positional OUT still works for one release, with a deprecation line.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from .convention import add_out, take_out

OVERWRITE_HELP = ("replace an existing output folder — only one slm wrote earlier; a folder slm did not write is "
                  "never replaced")


def _dtypes() -> list[str]:
    from ..config import Dtype

    return list(typing.get_args(Dtype))


def cmd_export_hf(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.hf import export_hf

    take_out(args, "slm export hf", old="slm export hf OUT --checkpoint CKPT",
             new="slm export hf --checkpoint CKPT --out OUT")
    out = export_hf(resolve_checkpoint(args.checkpoint), args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported to {out} (load with transformers.AutoModelForCausalLM.from_pretrained('{out}'))")
    return 0


def cmd_import_hf(args: argparse.Namespace) -> int:
    from ..export.hf import import_hf

    take_out(args, "slm import hf", old="slm import hf SRC OUT", new="slm import hf SRC --out OUT")
    out = import_hf(args.src, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"imported {args.src} -> slm checkpoint {out}")
    return 0


def add_export(sub: Any) -> None:
    exp = sub.add_parser("export", help="Export a checkpoint").add_subparsers(dest="sub", metavar="FORMAT",
                                                                              required=True)
    eh = exp.add_parser("hf", help="HF transformers folder (safetensors + config.json + tokenizer)",
                        description="Write a folder that transformers.AutoModelForCausalLM.from_pretrained loads")
    eh.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    add_out(eh, "output folder", legacy_positional=True)
    eh.add_argument("--dtype", default="float32", choices=_dtypes())
    eh.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    eh.set_defaults(fn=cmd_export_hf)
    from .ship import add_export_formats

    add_export_formats(exp)  # gguf, onnx


def add_import(sub: Any) -> None:
    imp = sub.add_parser("import", help="Import a model").add_subparsers(dest="sub", metavar="FORMAT", required=True)
    ih = imp.add_parser("hf", help="HF Llama-family folder (or a .gguf file) -> slm checkpoint",
                        description="Turn an HF Llama-family directory (e.g. SmolLM2) into an slm checkpoint")
    ih.add_argument("src", help="HF model folder with config.json + safetensors, or a .gguf file")
    add_out(ih, "output checkpoint dir", legacy_positional=True)
    ih.add_argument("--dtype", default="float32", choices=_dtypes())
    ih.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    ih.set_defaults(fn=cmd_import_hf)
