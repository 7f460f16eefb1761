"""Dynamic Mask Attention (DMA), SmallDoge's attention: causal GQA whose logits get a learned per-key bias
dt = exp(A * softplus(W_dt vec(V_k))) (A zero-init, so dt = 1 and the bias is a no-op at init), and which keeps only
the top-`keep_window_size` keys per (kv head, query) once a query sees more keys than that.

Decisions:
- The bias rides inside the attention kernel, not in a float mask: queries get one extra coordinate 1 and keys the
  coordinate dt * sqrt(D), so with SDPA's scale fixed at 1/sqrt(D) the logits are q.k / sqrt(D) + dt exactly. The
  training path (no selection: T <= keep_window_size, SmallDoge's own setting) is then `is_causal=True` SDPA — the
  flash kernels on CPU and CUDA, no (B, H, T, T) mask tensor, and dt's gradient flows through the keys. transformers'
  DogeAttention materialises a (B, H, T, T) float mask instead. Extra coordinates are zero-padded to a multiple of 8
  (what CUDA's flash kernel requires). Compiled CPU training (T <= 512) takes slm's dense attention kernel
  (`slm.models.layers.attention`, the one Llama uses there) with the same augmented q/k, q pre-scaled for its scale.
- The selection is a boolean mask (a selection has no gradient). Ties are broken by recency: among keys with equal
  dt the most recent win, so at init (all dt = 1) DMA with a window W is exactly sliding-window attention over the
  last W keys. transformers uses `torch.topk` on the masked row, whose choice among ties is unspecified; with ties
  decided by position the selection depends only on (dt, order) of the visible keys, so the cached decode (keys in
  slot order, left padding first) selects the same keys as a full forward and "state decode == full forward" holds
  with keep_window_size below the sequence length.
- Selection cost: a top-k over each query's row plus a reverse cumulative sum for the ties, O(T x S) per kv head, and
  only when S > keep_window_size. The decode step scores its one query against the whole cache buffer (static shape);
  dt is recomputed from the cached values each step (a (Hkv*D -> Hkv) projection per key), so the decode state is
  slm's plain `KVCache` with no extra tensors.
- The decode step on CPU (one query) takes `slm.models.layers.attention.step_attention` with dt as its additive key
  bias and the per-kv-head selection as its mask, like Llama's step (SDPA's flash kernel is mostly per-call overhead
  for one query).
- Queries and keys get a per-head RMSNorm before RoPE (as transformers' DogeAttention does), same eps as the blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.attention import dense_causal_attention, step_attention, use_dense
from ..layers.kv_cache import KVCache
from ..layers.norm import RMSNorm
from ..layers.rope import apply_rope
from .config import DogeConfig

_SDPA_HAS_GQA = "enable_gqa" in F.scaled_dot_product_attention.__doc__


def keep_top_keys(dt: torch.Tensor, visible: torch.Tensor, window: int) -> torch.Tensor:
    """The dynamic mask's key selection.

    dt (B, Hk, S) per-key bias, visible (B, 1 or Hk, T, S) bool (causal / padding / document mask) -> (B, Hk, T, S)
    bool: for each (kv head, query) the `window` visible keys of largest dt, ties going to the later key (higher
    index). Rows with at most `window` visible keys keep all of them.
    """
    scores = dt[:, :, None, :].float().masked_fill(~visible, float("-inf"))  # (B, Hk, T, S)
    # min(window, S) branch-free (a symbolic S while exporting): with S <= window the threshold is the row's smallest
    # score, so every visible key is above it or a tie with room left, and the selection keeps them all
    top = torch.sym_min(window, scores.shape[-1])
    threshold = scores.topk(top, dim=-1).values[..., -1:]  # (B, Hk, T, 1) the top-th largest value
    above = scores > threshold
    tie = (scores == threshold) & visible  # candidates for the places left after the strictly larger ones
    room = window - above.sum(-1, keepdim=True)
    later_ties = tie.flip(-1).cumsum(-1).flip(-1) - tie.long()  # ties at a higher index than each key
    return (above | (tie & (later_ties < room))) & visible


class DynamicMaskAttention(nn.Module):
    def __init__(self, cfg: DogeConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.window = cfg.keep_window_size
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.A = nn.Parameter(torch.zeros(cfg.n_kv_heads))  # dt = exp(A * softplus(.)): zero-init, dt = 1
        self.dt_proj = nn.Linear(cfg.n_kv_heads * cfg.head_dim, cfg.n_kv_heads, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def dynamic_bias(self, v: torch.Tensor) -> torch.Tensor:
        """v (B, Hk, S, D) -> dt (B, Hk, S): the additive per-key logit bias."""
        B, Hk, S, D = v.shape
        dt = self.dt_proj(v.transpose(1, 2).reshape(B, S, Hk * D))  # (B, S, Hk)
        return torch.exp(self.A * F.softplus(dt)).transpose(1, 2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None, mask: torch.Tensor | None, step: bool = False,
                dense_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C). `mask` (B, 1, T, S) bool marks visible keys (None = plain causal, S = T)."""
        B, T, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(B, T, self.n_heads, self.head_dim)).transpose(1, 2)  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)).transpose(1, 2)  # (B, Hk, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            write = cache.update_step if step else cache.update
            k, v = write(layer, k.to(cache.k[layer].dtype), v.to(cache.v[layer].dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
        dt = self.dynamic_bias(v)  # (B, Hk, S)
        S = k.shape[2]
        # The dynamic mask selects keys (a per-kv-head boolean mask) once S > window. While exporting, S is symbolic
        # and cannot be branched on: a state's mask always goes through the selection, a no-op when S <= window.
        select = (mask is not None and torch.compiler.is_exporting()) or S > self.window
        if select:
            if mask is None:
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)[None, None]
            mask = keep_top_keys(dt, mask, self.window)  # (B, Hk, T, S)
        if step and q.device.type == "cpu":  # one query: SDPA's flash kernel is mostly overhead (as for Llama)
            return self.o_proj(step_attention(q, k, v, mask, bias=dt).transpose(1, 2).reshape(B, T, -1))
        if select and self.n_kv_heads != self.n_heads:
            mask = mask.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)  # (B, H, T, S)
        y = _attend_with_key_bias(q, k, v, dt, mask, dense_bias if cache is None else None)  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def _attend_with_key_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dt: torch.Tensor,
                          mask: torch.Tensor | None, dense_bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + dt[key] | mask) v, with dt folded into an extra q/k coordinate (module docstring).

    q (B, H, T, D), k, v (B, Hk, S, D), dt (B, Hk, S), mask None (causal) or bool broadcastable to (B, H, T, S).
    `dense_bias` (the model's causal bias) enables slm's dense CPU training kernel where it pays (`use_dense`)."""
    D = q.shape[-1]
    Da = 8 * -(-(D + 1) // 8)  # >= 1 extra coordinate, total a multiple of 8 (CUDA flash kernels need it)
    pad = (0, Da - D - 1)
    one = torch.ones(*q.shape[:-1], 1, dtype=q.dtype, device=q.device)
    dense = mask is None and dense_bias is not None and use_dense(q)
    # SDPA takes the scale 1/sqrt(D); the dense kernel scales by 1/sqrt(Da), so q is pre-scaled by sqrt(Da/D) there
    q_scale, key_scale = (math.sqrt(Da / D), math.sqrt(Da)) if dense else (1.0, math.sqrt(D))
    qa = F.pad(torch.cat([q * q_scale if dense else q, one], -1), pad)
    ka = F.pad(torch.cat([k, (dt * key_scale).to(k.dtype)[..., None]], -1), pad)
    va = F.pad(v, (0, Da - D))
    if dense:
        return dense_causal_attention(qa, ka, va, dense_bias)[..., :D]
    rep = q.shape[1] // k.shape[1]
    kwargs = {}
    if rep > 1:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:
            ka, va = ka.repeat_interleave(rep, dim=1), va.repeat_interleave(rep, dim=1)
    y = F.scaled_dot_product_attention(qa, ka, va, attn_mask=mask, is_causal=mask is None, scale=1.0 / math.sqrt(D),
                                       **kwargs)
    return y[..., :D]
