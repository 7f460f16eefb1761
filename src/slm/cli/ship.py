"""`slm export gguf|onnx`: a checkpoint in the formats people run (llama.cpp, ONNX Runtime).

The writers live in `slm.export.gguf` and `slm.export.onnx`; this module maps flags to arguments. Every exporter
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


def add_export_formats(exp: Any) -> None:
    """Add `gguf` and `onnx` to the `slm export` sub-parsers."""
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
