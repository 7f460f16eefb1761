"""H-Net's innermost sliding-window attention layers: Simplified SLM's "hybrid" (`main_pattern` letter `a`).

Block (their CausalMHABlock): x + Attn(RMSNorm(x)), then x + BitMLP(RMSNorm(x)). Attn has full-precision Q, K, V, O
without bias (attention scores stay fp, as theirs), rotate-half RoPE (slm.models.layers.rope) over chunk positions,
and a causal window: the query at chunk position p sees the chunks at positions p - W + 1 .. p of its document.

Decisions:
- Positions count the real chunks of the row's document: a document start restarts them at 0 and nothing attends
  across it, so packed rows equal separate forwards. Masked inputs (H-Net's unused chunk slots, left padding) take
  no position and are never keys; a masked query sees its own key, so softmax never sees an empty row (its output
  is unused).
- The decode state is per row, in RecurrentState slots: a ring of the last W keys (rotated) and values at slot
  position % W, which ring slots hold a key, and the row's chunk count. slm.models.layers.window_cache.WindowCache
  does not fit: it has one write slot for the whole batch (rows advance together, one token per step), while the
  rows of H-Net's inner stage reach their n-th chunk at different bytes and a step writes only for rows with a
  boundary. As state slots, insert / release / reorder and the pure decode step work unchanged.
- RoPE angles come from the positions (rope_tables' formula), not from a table: a recurrent state has no length
  limit, so the chunk count has none either.
- SDPA with a boolean mask built from positions (B, T, ring + T); no cummax (the prefill stays ONNX-exportable).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..hgrn_bit.model import MixerBlock
from ..hgrn_bit.state import RecurrentState
from ..layers.rope import apply_rope, rope_at


class WindowAttention(nn.Module):
    """Sliding-window attention over chunk positions (module docstring). State slots: ring k, ring v (B, H, W, Dh)
    fp32, ring slot filled (B, W) bool, chunk count (B,) long."""

    def __init__(self, d: int, heads: int, window: int, theta: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.window, self.theta = heads, d // heads, window, theta
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.slots: list[int] = []  # assigned by the model

    def state_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        ring = ((self.heads, self.window, self.head_dim), torch.float32)
        return [ring, ring, ((self.window,), torch.bool), ((), torch.long)]

    def _split(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x (B, H, T, Dh) rotated to positions pos (B, T)."""
        cos, sin = rope_at(pos, self.head_dim, self.theta)  # (B, T, Dh)
        return apply_rope(x, cos[:, None], sin[:, None])

    def _merge(self, out: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, reset: torch.Tensor | None,
                state: RecurrentState | None) -> torch.Tensor:
        """x (B, T, D); valid (B, T) bool (False = masked) or None; reset (B, T) bool (document starts) or None."""
        B, T, _ = x.shape
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if valid is None else valid
        doc = torch.zeros_like(real, dtype=torch.long) if reset is None else (reset & real).long().cumsum(dim=1)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        earlier = (doc[:, :, None] == doc[:, None, :]) & causal & real[:, None, :]  # (B, T, T) real keys of its doc
        n0 = state.get(self.slots[3]) if state is not None else torch.zeros(B, dtype=torch.long, device=x.device)
        count = earlier.long().sum(dim=-1)  # (B, T) real chunks of its document up to t
        pos = torch.where(doc > 0, count - 1, n0[:, None] + count - 1)  # doc 0 continues the state's positions
        see = earlier & (pos[:, :, None] - pos[:, None, :] < self.window)
        see = see | (torch.eye(T, dtype=torch.bool, device=x.device) & ~real[:, :, None])  # masked: its own key
        q, k, v = self._rope(self._split(self.q_proj, x), pos), self._rope(self._split(self.k_proj, x), pos), \
            self._split(self.v_proj, x)
        if state is None:
            return self._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=see[:, None]))
        ring_k, ring_v, filled, _ = (state.get(i) for i in self.slots)
        slot = torch.arange(self.window, device=x.device)
        held = n0[:, None] - 1 - (n0[:, None] - 1 - slot) % self.window  # (B, W) position each ring slot holds
        see_ring = filled[:, None, :] & (doc == 0)[..., None] & (pos[:, :, None] - held[:, None, :] < self.window)
        keys, values = torch.cat([ring_k.to(k.dtype), k], dim=2), torch.cat([ring_v.to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=torch.cat([see_ring, see], dim=-1)[:, None])
        self._write(state, k, v, real, doc, pos, n0)
        return self._merge(out)

    def _write(self, state: RecurrentState, k: torch.Tensor, v: torch.Tensor, real: torch.Tensor, doc: torch.Tensor,
               pos: torch.Tensor, n0: torch.Tensor) -> None:
        """Keep each row's last W keys of its last document in the ring; k, v (B, H, T, Dh), the rest (B, T)."""
        B, H, T, Dh = k.shape
        W = self.window
        last = real & (doc == doc[:, -1:])  # real chunks of the row's last document
        restarted = doc[:, -1] > 0  # a document started in this call: what the ring held is gone
        n1 = torch.where(restarted, last.long().sum(dim=1), n0 + real.long().sum(dim=1))  # the next chunk's position
        stays = last & (pos >= (n1 - W)[:, None])  # (B, T)
        sel = stays[:, :, None] & ((pos % W)[:, :, None] == torch.arange(W, device=k.device))  # (B, T, W)
        written = sel.any(dim=1)  # (B, W)
        src = sel.long().argmax(dim=1)[:, None, :, None].expand(B, H, W, Dh)  # the one new key of each written slot
        ring_k, ring_v, filled, _ = (state.get(i) for i in self.slots)
        w4 = written[:, None, :, None]
        state.set(self.slots[0], torch.where(w4, k.gather(2, src).to(ring_k.dtype), ring_k))
        state.set(self.slots[1], torch.where(w4, v.gather(2, src).to(ring_v.dtype), ring_v))
        state.set(self.slots[2], written | (filled & ~restarted[:, None]))
        state.set(self.slots[3], n1)

    def step(self, x: torch.Tensor, real: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """x (B, 1, D), real (B,) bool -> (B, 1, D); rows with real False (no chunk here) keep their ring."""
        ring_k, ring_v, filled, n = (state.get(i) for i in self.slots)
        pos = n[:, None]  # (B, 1)
        q, k, v = self._rope(self._split(self.q_proj, x), pos), self._rope(self._split(self.k_proj, x), pos), \
            self._split(self.v_proj, x)
        here = torch.arange(self.window, device=x.device) == (n % self.window)[:, None]  # (B, W) this chunk's slot
        write = here & real[:, None]
        w4 = write[:, None, :, None]
        keys = torch.where(w4, k, ring_k.to(k.dtype))  # (B, H, W, Dh): k broadcasts over the ring
        values = torch.where(w4, v, ring_v.to(v.dtype))
        filled = filled | write
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=(filled | here)[:, None, None, :])
        state.set(self.slots[0], keys)
        state.set(self.slots[1], values)
        state.set(self.slots[2], filled)
        state.set(self.slots[3], n + real.long())
        return self._merge(out)


class AttentionBlock(MixerBlock):
    """x + WindowAttention(RMSNorm(x)), then x + BitMLP(RMSNorm(x)): an `a` layer of `main_pattern`."""

    def __init__(self, d: int, hidden: int, eps: float, heads: int, window: int, theta: float) -> None:
        super().__init__(WindowAttention(d, heads, window, theta), d, hidden, eps)
