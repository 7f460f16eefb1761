"""How the Llama family maps onto llama.cpp's GGUF: the `llama` architecture, or `qwen3` with QK-norm.

- Tensor names come from the HF adapter (slm.models.llama.hf) and the `gguf` package's name map, so nothing here
  lists a tensor name twice.
- llama.cpp's `llama` architecture rotates adjacent pairs (dims 2i, 2i+1) where slm and HF rotate halves (i, i+D/2),
  so each query/key head's rows are interleaved on the way out; transformers' GGUF reader undoes exactly this, which
  is what the round-trip test checks. `qwen3` rotates halves like slm: its q/k rows are written unchanged.
- Hyperparameters are GGUF keys with an `{arch}` placeholder; the exporter fills in the architecture name.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import GGUFAdapter
from .config import LlamaConfig


def arch_name(cfg: LlamaConfig) -> str:
    return "qwen3" if cfg.qk_norm else "llama"


def hparams(cfg: LlamaConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "{arch}.context_length": cfg.max_seq_len,
        "{arch}.embedding_length": cfg.d_model,
        "{arch}.block_count": cfg.n_layers,
        "{arch}.feed_forward_length": cfg.ffn_hidden,
        "{arch}.attention.head_count": cfg.n_heads,
        "{arch}.attention.head_count_kv": cfg.n_kv_heads,
        "{arch}.attention.layer_norm_rms_epsilon": float(cfg.norm_eps),
        "{arch}.rope.freq_base": float(cfg.rope_theta),
        "{arch}.rope.dimension_count": cfg.head_dim,
        "{arch}.vocab_size": cfg.vocab_size,
    }
    if cfg.qk_norm:  # qwen3 reads the head size from these (it need not be d_model / heads there)
        out.update({"{arch}.attention.key_length": cfg.head_dim, "{arch}.attention.value_length": cfg.head_dim})
    return out


def _interleave_rotary_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(H*D, C) rows in rotate-half order per head -> adjacent-pair order: row 2i <- i, row 2i+1 <- i + D/2."""
    rows, cols = w.shape
    half = rows // n_heads // 2
    return w.reshape(n_heads, 2, half, cols).transpose(1, 2).reshape(rows, cols)


def to_gguf_tensor(hf_name: str, tensor: torch.Tensor, cfg: LlamaConfig) -> torch.Tensor:
    if cfg.qk_norm:
        return tensor
    if hf_name.endswith("self_attn.q_proj.weight"):
        return _interleave_rotary_rows(tensor, cfg.n_heads)
    if hf_name.endswith("self_attn.k_proj.weight"):
        return _interleave_rotary_rows(tensor, cfg.n_kv_heads)
    return tensor


ADAPTER = GGUFAdapter(arch_name=arch_name, hparams=hparams, to_gguf_tensor=to_gguf_tensor)
