"""Ternary export of BitLinear models (hgrn_bit, hnet_bit): every BitLinear weight as 2-bit codes, four per byte, plus
its bf16 scale; everything else (embedding, norms, H-Net's fp routers and residual) as stored. One safetensors file
that also carries the run config and the tokenizer, so it turns back into a normal slm checkpoint.

    python -m slm.models.hgrn_bit.ternary export CHECKPOINT OUT.safetensors    # prints the size vs fp16
    python -m slm.models.hgrn_bit.ternary import OUT.safetensors CHECKPOINT_DIR  # then: slm generate CHECKPOINT_DIR

Decisions:
- A BitLinear's forward only ever uses codes * gamma, and gamma is a bf16 number (slm.models.layers.bitlinear), so
  the codes and a 2-byte scale are the whole matrix: the imported model computes the same function, and greedy
  generation is identical (tested).
- Import writes latent weights W = codes * gamma / (fraction of non-zero codes): then mean|W| = gamma, and
  round(clamp(W / gamma, -1, 1)) gives the codes back, so the usual BitLinear (and training, if resumed from it)
  needs no special "frozen" mode.
- Codes are stored as code + 1 in {0, 1, 2}, little-end first within each byte; the last byte is zero-padded.
- HF: transformers' `BitNetForCausalLM` is a Llama-style attention model (its AutoBitLinear quantizes the same way:
  absmax 8-bit activations per token, ternary weights with a mean-|W| scale), but there is no HGRN token mixer or
  H-Net chunking in transformers, so no HF export exists for these architectures (`slm export hf` refuses them).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from ...errors import SlmError
from ..layers.bitlinear import BitLinear, ternary_codes, ternary_scale

FORMAT = "slm-ternary-1"


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """int8 codes in {-1, 0, 1} (any shape) -> uint8 (ceil(n / 4),): four 2-bit codes per byte."""
    flat = (codes.flatten().to(torch.int16) + 1).to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 4)]).view(-1, 4)
    return flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)


def unpack_codes(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `pack_codes`: uint8 -> int8 codes of `shape`."""
    parts = torch.stack([(packed >> s) & 3 for s in (0, 2, 4, 6)], dim=1).flatten()
    n = int(torch.tensor(shape).prod()) if shape else 1
    return (parts[:n].to(torch.int8) - 1).view(shape)


def ternary_tensors(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """The file's tensors ({name}.codes / {name}.gamma for BitLinear weights, the rest as is) and code shapes."""
    bit = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, BitLinear)}
    tensors, shapes = {}, {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if name in bit:
            tensors[f"{name}.codes"] = pack_codes(ternary_codes(value))
            tensors[f"{name}.gamma"] = ternary_scale(value).to(torch.bfloat16).reshape(1)
            shapes[name] = list(value.shape)
        else:
            tensors[name] = value
    return tensors, shapes


def export_ternary(checkpoint: str | Path, out: str | Path) -> dict[str, float]:
    """Write the ternary file of a checkpoint; returns its size and the fp16 size of the same model."""
    from safetensors.torch import save_file

    from ... import checkpoint as ckpt

    checkpoint = ckpt.resolve_checkpoint(checkpoint)  # a run dir means its latest checkpoint, as in `slm generate`
    model, cfg = ckpt.load_model(checkpoint)
    if not any(isinstance(m, BitLinear) for m in model.modules()):
        raise SlmError(f"{checkpoint}: model.arch={cfg.model.arch} has no BitLinear layers; ternary export is for "
                       f"hgrn_bit / hnet_bit checkpoints")
    tensors, shapes = ternary_tensors(model)
    tok_dir = Path(checkpoint) / "tokenizer"
    tokenizer = {p.name: p.read_text(encoding="utf-8") for p in sorted(tok_dir.glob("*")) if p.is_file()}
    meta = {"format": FORMAT, "shapes": json.dumps(shapes), "config": json.dumps(cfg.to_dict()),
            "tokenizer": json.dumps(tokenizer)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(out)
    size = out.stat().st_size
    fp16 = 2 * model.num_parameters()
    return {"bytes": size, "fp16_bytes": fp16, "ratio_vs_fp16": fp16 / size}


def load_ternary(path: str | Path) -> tuple[torch.nn.Module, object, dict[str, str]]:
    """(model in eval mode, its RunConfig, tokenizer files) from a ternary file."""
    from safetensors import safe_open

    from ...config import build_run_config
    from ..registry import build_model

    path = Path(path)
    if not path.is_file():
        raise SlmError(f"{path}: no such ternary file; write one with `python -m slm.models.hgrn_bit.ternary export`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise SlmError(f"{path}: not an slm ternary file (format {meta.get('format')!r}, expected {FORMAT})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    cfg = build_run_config(json.loads(meta["config"]))
    state = {k: v for k, v in tensors.items() if not k.endswith((".codes", ".gamma"))}
    for name, shape in json.loads(meta["shapes"]).items():
        codes = unpack_codes(tensors[f"{name}.codes"], tuple(shape)).float()
        gamma = tensors[f"{name}.gamma"].float()[0]
        nonzero = codes.abs().mean().clamp_min(1e-12)
        state[name] = codes * (gamma / nonzero)  # mean|W| == gamma, codes recovered (module docstring)
    model = build_model(cfg.model, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    model.materialize_buffers()
    return model.eval(), cfg, json.loads(meta["tokenizer"])


def import_ternary(path: str | Path, out_dir: str | Path) -> Path:
    """A normal slm checkpoint (for `slm generate`, `slm eval`, ...) from a ternary file."""
    from ... import checkpoint as ckpt

    model, cfg, tokenizer = load_ternary(path)
    with tempfile.TemporaryDirectory() as tmp:
        tok = None
        if tokenizer:
            tok = Path(tmp) / "tokenizer"
            tok.mkdir()
            for name, text in tokenizer.items():
                (tok / name).write_text(text, encoding="utf-8")
        return ckpt.save_checkpoint(out_dir, model=model, config=cfg, tokenizer=tok)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("export", "import"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    try:
        if argv[0] == "export":
            info = export_ternary(argv[1], argv[2])
            print(f"{argv[2]}: {info['bytes']:,} bytes; fp16 {info['fp16_bytes']:,} bytes; "
                  f"{info['ratio_vs_fp16']:.2f}x smaller")
        else:
            print(import_ternary(argv[1], argv[2]))
    except SlmError as exc:
        print(f"slm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
