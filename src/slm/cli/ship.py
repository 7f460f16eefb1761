"""`slm export gguf|onnx|coreml` and `slm push`: a checkpoint in the formats people run (llama.cpp, ONNX Runtime,
Core ML) and on the Hugging Face Hub.

The writers live in `slm.export.{gguf,onnx,coreml,hub}`; this module maps flags to arguments. Every exporter
writes to a temp path and renames; an existing OUT is replaced only with `--overwrite` (and a folder only when slm
wrote it).
"""

from __future__ import annotations

import argparse
from typing import Any

OVERWRITE_FILE_HELP = "replace an existing output file"
OVERWRITE_DIR_HELP = ("replace an existing output folder — only one slm wrote earlier; a folder slm did not write is "
                      "never replaced")


# The exporters' dtype names, spelled here so `slm --help` needs no torch import (a test checks they agree).
GGUF_DTYPES = ("f32", "f16", "q8_0")
ONNX_DTYPES = ("fp32", "fp16")
COREML_DTYPES = ("fp32", "fp16")


def cmd_export_gguf(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.gguf import export_gguf

    out = export_gguf(resolve_checkpoint(args.checkpoint), args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"exported to {out} ({out.stat().st_size / 2**20:.1f} MiB; run with llama.cpp: llama-cli -m {out})")
    return 0


def cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.onnx import export_onnx

    out = export_onnx(resolve_checkpoint(args.checkpoint), args.out, dtype=args.dtype, max_len=args.max_len,
                      overwrite=args.overwrite)
    print(f"exported to {out} (prefill.onnx + decode.onnx; inputs/outputs in {out}/slm_onnx.json)")
    return 0


def cmd_export_coreml(args: argparse.Namespace) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..export.coreml import export_coreml

    out = export_coreml(resolve_checkpoint(args.checkpoint), args.out, seq_len=args.seq_len, dtype=args.dtype,
                        minimum_deployment_target=args.minimum_deployment_target, overwrite=args.overwrite)
    print(f"exported to {out} (decode step with the state in/out; running it needs macOS 15 / iOS 18)")
    return 0


def add_export_formats(exp: Any) -> None:
    """Add `gguf`, `onnx` and `coreml` to the `slm export` sub-parsers."""
    eg = exp.add_parser("gguf", help="one GGUF file for llama.cpp / Ollama / LM Studio (Llama-family models)",
                        description="Write weights, llama.cpp metadata, tokenizer and chat template into one .gguf")
    eg.add_argument("out", help="output .gguf file")
    eg.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    eg.add_argument("--dtype", default="f16", choices=GGUF_DTYPES,
                    help="f32, f16 (matrices f16, norms f32) or q8_0 (llama.cpp's 8-bit blocks)")
    eg.add_argument("--overwrite", action="store_true", help=OVERWRITE_FILE_HELP)
    eg.set_defaults(fn=cmd_export_gguf)

    eo = exp.add_parser("onnx", help="ONNX Runtime folder: prefill + decode graphs with the state as inputs/outputs",
                        description="Write prefill.onnx and decode.onnx (dynamic batch and length), the tokenizer "
                                    "and slm_onnx.json describing the state tensors")
    eo.add_argument("out", help="output folder")
    eo.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    eo.add_argument("--dtype", default="fp32", choices=list(ONNX_DTYPES))
    eo.add_argument("--max-len", type=int, default=None,
                    help="decode state length (prompt + generated tokens); default model.max_seq_len")
    eo.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    eo.set_defaults(fn=cmd_export_onnx)

    ec = exp.add_parser("coreml", help="Core ML package (iOS 18 / macOS 15): the decode step with the state in/out",
                        description="Write OUT.mlpackage: one token per call, the decode state as inputs/outputs. "
                                    "Converts on Linux; running it needs macOS.")
    ec.add_argument("out", help="output OUT.mlpackage")
    ec.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir)")
    ec.add_argument("--seq-len", type=int, default=None, help="decode state length; default min(max_seq_len, 1024)")
    ec.add_argument("--dtype", default="fp16", choices=COREML_DTYPES, help="compute precision")
    ec.add_argument("--minimum-deployment-target", default="iOS18", choices=("iOS18", "macOS15"))
    ec.add_argument("--overwrite", action="store_true", help=OVERWRITE_DIR_HELP)
    ec.set_defaults(fn=cmd_export_coreml)


def cmd_push(args: argparse.Namespace) -> int:
    from ..export.hub import push

    url = push(args.repo_id, checkpoint=args.checkpoint, export=args.export, private=args.private,
               license=args.license)
    print(f"pushed to {url}")
    return 0


def add_push(sub: Any) -> None:
    p = sub.add_parser("push", help="Upload a checkpoint or an export to the Hugging Face Hub with a model card",
                       description="Upload a checkpoint (as an HF folder) or an export (HF/ONNX folder, .gguf file) "
                                   "in one commit, with a model card generated from the run. The token comes from "
                                   "HF_TOKEN or the cached `hf auth login`, never from the command line.")
    p.add_argument("repo_id", help="USER/NAME on the Hub (created if missing)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint dir (or a run dir): exported as an HF folder first")
    src.add_argument("--export", help="an export to upload as is: a folder (slm export hf|onnx) or a .gguf file")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--license", default="apache-2.0", help="license field of the model card (a Hub license id)")
    p.set_defaults(fn=cmd_push)
