"""`slm export gguf|onnx|coreml` and `slm push`: a checkpoint in the formats people run (llama.cpp, ONNX Runtime,
Core ML) and on the Hugging Face Hub.

The writers live in `slm.export.{gguf,onnx,coreml,hub}`; this module maps flags to arguments. Every exporter
writes to a temp path and renames; an existing OUT is replaced only with `--overwrite` (and a folder only when slm
wrote it). The output is always `--out` (`slm.cli.convention`): an export's file or folder, or push's Hub repo id;
the old forms (positional OUT, `slm push USER/NAME --checkpoint|--export`) still work for one release.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import SlmError
from .convention import add_out, deprecated, take_out

OVERWRITE_FILE_HELP = "replace an existing output file"
OVERWRITE_DIR_HELP = ("replace an existing output folder — only one slm wrote earlier; a folder slm did not write is "
                      "never replaced")


# The exporters' dtype names, spelled here so `slm --help` needs no torch import (a test checks they agree).
GGUF_DTYPES = ("f32", "f16", "q8_0")
ONNX_DTYPES = ("fp32", "fp16")
COREML_DTYPES = ("fp32", "fp16")
COREML_STATE_MODES = ("stateful", "io")


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.gguf import export_gguf

    take_out(args, "slm export gguf", old="slm export gguf OUT.gguf --checkpoint CKPT",
             new="slm export gguf --checkpoint CKPT --out OUT.gguf")
    out = export_gguf(resolve_checkpoint(args.checkpoint), args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported to {out} ({out.stat().st_size / 2**20:.1f} MiB; run with llama.cpp: llama-cli -m {out})")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.onnx import export_onnx

    take_out(args, "slm export onnx", old="slm export onnx OUT --checkpoint CKPT",
             new="slm export onnx --checkpoint CKPT --out OUT")
    out = export_onnx(resolve_checkpoint(args.checkpoint), args.out, dtype=args.dtype, max_len=args.max_len,
                      overwrite=args.overwrite)
    print(f"exported to {out} (prefill.onnx + decode.onnx; inputs/outputs in {out}/slm_onnx.json)")
    return 0


def cmd_export_coreml(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.coreml import export_coreml

    take_out(args, "slm export coreml", old="slm export coreml OUT.mlpackage --checkpoint CKPT",
             new="slm export coreml --checkpoint CKPT --out OUT.mlpackage")
    out = export_coreml(resolve_checkpoint(args.checkpoint), args.out, seq_len=args.seq_len, dtype=args.dtype,
                        minimum_deployment_target=args.minimum_deployment_target, overwrite=args.overwrite,
                        state=args.state, notify=lambda line: print(f"note: {line}", file=sys.stderr))
    print(f"exported to {out} (decode step; running it needs macOS 15 / iOS 18)")
    return 0


def add_export_formats(exp: Any) -> None:
    """Add `gguf`, `onnx` and `coreml` to the `slm export` sub-parsers."""
    eg = exp.add_parser("gguf", help="one GGUF file for llama.cpp / Ollama / LM Studio (Llama-family models)",
                        description="Write weights, llama.cpp metadata, tokenizer and chat template into one .gguf")
    eg.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    add_out(eg, "output .gguf file", legacy_positional=True)
    eg.add_argument("--dtype", default="f16", choices=GGUF_DTYPES,
                    help="f32, f16 (matrices f16, norms f32) or q8_0 (llama.cpp's 8-bit blocks)")
    eg.add_argument("--overwrite", action="store_true", help=OVERWRITE_FILE_HELP)
    eg.set_defaults(fn=cmd_export_gguf)

    eo = exp.add_parser("onnx", help="ONNX Runtime folder: prefill + decode graphs with the state as inputs/outputs",
                        description="Write prefill.onnx and decode.onnx (dynamic batch and length), the tokenizer "
                                    "and slm_onnx.json describing the state tensors")
    eo.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    add_out(eo, "output folder", legacy_positional=True)
    eo.add_argument("--dtype", default="fp32", choices=list(ONNX_DTYPES))
    eo.add_argument("--max-len", type=int, default=None,
                    help="decode state length (prompt + generated tokens); default model.max_seq_len")
    eo.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    eo.set_defaults(fn=cmd_export_onnx)

    ec = exp.add_parser("coreml", help="Core ML package (iOS 18 / macOS 15): the decode step with a stateful KV cache",
                        description="Write OUT.mlpackage: one token per call, the decode state kept in Core ML "
                                    "states (or passed as inputs/outputs with --state io). Converts on Linux; "
                                    "running it needs macOS.")
    ec.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    add_out(ec, "output OUT.mlpackage", legacy_positional=True)
    ec.add_argument("--seq-len", type=int, default=None, help="decode state length; default min(max_seq_len, 1024)")
    ec.add_argument("--dtype", default="fp16", choices=COREML_DTYPES, help="compute precision")
    ec.add_argument("--minimum-deployment-target", default="iOS18", choices=("iOS18", "macOS15"))
    ec.add_argument("--state", default=None, choices=COREML_STATE_MODES,
                    help="stateful: KV cache in fp16 Core ML states, --seq-len <= 2048; io: the state as "
                         "inputs/outputs. Default: stateful where the architecture allows (attention caches), else io")
    ec.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    ec.set_defaults(fn=cmd_export_coreml)


def push_arguments(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """(repo id, checkpoint, export) of `slm push [EXPORT] [--checkpoint CKPT] --out USER/NAME`, or of the old
    `slm push USER/NAME --checkpoint CKPT | --export PATH` (deprecated: one line on stderr)."""
    if args.out is None and args.src is not None:  # the old form: the positional is the repo
        repo, export = args.src, args.export
        old_what = f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--export {export or 'PATH'}"
        new_what = f"--checkpoint {args.checkpoint}" if args.checkpoint else (export or "PATH")
        deprecated(f"slm push {repo} {old_what}", f"slm push {new_what} --out {repo}")
    else:
        repo, export = args.out, args.src
        if args.export is not None:
            if export is not None:
                raise SlmError(f"slm push: two exports ({export} and --export {args.export}); give one")
            export = args.export
            deprecated(f"slm push --export {export} --out {repo or 'USER/NAME'}",
                       f"slm push {export} --out {repo or 'USER/NAME'}")
    if not repo:
        raise SlmError("slm push: --out USER/NAME is required (the Hub repo); e.g. "
                       "`slm push --checkpoint CKPT --out USER/NAME`")
    if bool(args.checkpoint) == bool(export):
        raise SlmError("slm push: give what to upload, one of: --checkpoint CKPT, or an export (folder or .gguf) as "
                       "the positional argument")
    return repo, args.checkpoint, export


def cmd_push(args: argparse.Namespace) -> int:
    from ..export.hub import push

    repo_id, checkpoint, export = push_arguments(args)
    url = push(repo_id, checkpoint=checkpoint, export=export, private=args.private, license=args.license)
    print(f"pushed to {url}")
    return 0


def add_push(sub: Any) -> None:
    p = sub.add_parser("push", help="Upload a checkpoint or an export to the Hugging Face Hub with a model card",
                       description="Upload a checkpoint (as an HF folder) or an export (HF/ONNX folder, .gguf file) "
                                   "in one commit, with a model card generated from the run. The token comes from "
                                   "HF_TOKEN or the cached `hf auth login`, never from the command line.")
    p.add_argument("src", nargs="?", default=None, metavar="EXPORT",
                   help="an export to upload as is: a folder (slm export hf|onnx) or a .gguf file")
    p.add_argument("--checkpoint", default=None, help="or a checkpoint dir (or a run dir): exported as an HF "
                   "folder first")
    add_out(p, "USER/NAME on the Hub (created if missing)")
    p.add_argument("--export", default=None, help=argparse.SUPPRESS)  # deprecated: the positional EXPORT
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--license", default="apache-2.0", help="license field of the model card (a Hub license id)")
    p.set_defaults(fn=cmd_push)
