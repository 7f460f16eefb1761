"""Rotary position embeddings in the rotate-half layout (HF's convention: export needs no q/k permutation).

Tables are fp32 and built once per model (max_len x head_dim); positions index them, so packed documents and
left-padded rows get their own positions by gathering rows.
"""

from __future__ import annotations

import torch


def rope_at(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (*positions.shape, head_dim) for rotate-half RoPE at any positions (e.g. per row), in fp32."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    freqs = positions.float()[..., None] * (1.0 / (theta ** exponent))  # (..., D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (..., D)
    return emb.cos(), emb.sin()


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables (max_len, head_dim) for rotate-half RoPE, in fp32."""
    return rope_at(torch.arange(max_len), head_dim, theta)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D); cos/sin broadcastable to it: (T, D) or (B, 1, T, D)."""
    d = x.shape[-1] // 2
    rotated = torch.cat((-x[..., d:], x[..., :d]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
