"""The Llama-family decoder: token embedding, N x (RMSNorm -> GQA attention with RoPE -> RMSNorm -> SwiGLU), RMSNorm,
output head. No biases anywhere.

Decisions:
- Parameter names and the RoPE layout (rotate-half, HF's convention) match transformers' `LlamaForCausalLM`, so export is
  a renaming with no permutation of q/k weights, and HF checkpoints import the same way.
- Attention is `F.scaled_dot_product_attention`: flash/memory-efficient kernels on CUDA, a fused kernel on CPU. The
  training path passes `is_causal=True` (no mask tensor); the cached path passes an explicit boolean mask built by
  `KVCache.reserve`, which also hides left padding. GQA uses SDPA's `enable_gqa` (K/V are never copied per query
  head); `repeat_interleave` only when that is unavailable. The exception is compiled CPU training at T <= 512, where
  `slm.models.layers.attention.dense_causal_attention` (bf16 GEMMs, a hand-written backward, elementwise work fused by
  inductor) runs a layer's forward + backward in about half SDPA's time.
- One-token calls with a cache go through `hidden_step`, the static-shape decode step (see
  `slm.models.layers.kv_cache`): the same maths over the whole cache buffer, with no host reads, so it can be
  compiled once and replayed per token. On CPU its one-query attention is `step_attention` (two small GEMMs and a
  softmax), not SDPA, whose flash kernel is mostly per-call overhead for a single query.
- The shared `CausalLM.forward` (slm.models.base) turns the final hidden states into logits or the chunked loss;
  this class supplies `hidden_states`, `hidden_step` and its decode state (a `KVCache`).
- This module knows nothing about tokenizers, data or training.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..base import CausalLM, check_positions, document_causal_mask
from ..layers.attention import MAX_LEN as DENSE_MAX_LEN
from ..layers.attention import causal_bias, dense_causal_attention, step_attention, use_dense
from ..layers.kv_cache import KVCache
from ..layers.norm import RMSNorm
from ..layers.rope import apply_rope, rope_tables
from .config import LlamaConfig

_SDPA_HAS_GQA = "enable_gqa" in F.scaled_dot_product_attention.__doc__


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None, mask: torch.Tensor | None, step: bool = False,
                dense_bias: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            write = cache.update_step if step else cache.update
            k, v = write(layer, k.to(cache.k[layer].dtype), v.to(cache.v[layer].dtype))
            k, v = k.to(q.dtype), v.to(q.dtype)
        if cache is None and dense_bias is not None and use_dense(q):  # the bias encodes the same mask
            y = dense_causal_attention(q, k, v, dense_bias)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        if step and q.device.type == "cpu":  # one query: SDPA's flash kernel is mostly overhead here
            y = step_attention(q, k, v, mask)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        gqa = self.n_heads != self.n_kv_heads
        if gqa and not _SDPA_HAS_GQA:
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
            gqa = False
        kwargs = {"enable_gqa": True} if gqa else {}
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, C)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None = None, mask: torch.Tensor | None = None, step: bool = False,
                dense_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, mask, step, dense_bias)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(CausalLM):
    cfg: LlamaConfig
    block_class: type[nn.Module] = Block  # architectures that change only the block (e.g. Pulse) set their own

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(self.block_class(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # causal mask of the dense CPU training attention (slm.models.layers.attention), <= 1 MB
        self.register_buffer("dense_bias", causal_bias(min(DENSE_MAX_LEN, cfg.max_seq_len)), persistent=False)
        self.reset_parameters()

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, d_model) matrix of the output head (the embedding when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layers), generator=gen)
            else:
                nn.init.normal_(p, 0.0, std, generator=gen)
        self.materialize_buffers()

    def materialize_buffers(self) -> None:
        """(Re)build the non-persistent buffers (RoPE tables, causal bias) on the parameters' device: after `to_empty`
        or an `assign=True` load onto a meta model they hold no data."""
        device = self.embed_tokens.weight.device
        with torch.device(device):
            cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        self.rope_cos, self.rope_sin = cos, sin
        self.dense_bias = causal_bias(min(DENSE_MAX_LEN, self.cfg.max_seq_len), device)

    def new_state(self, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> KVCache:
        c = self.cfg
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, batch_size, max_len, dtype=dtype, device=device)

    def state_from_tensors(self, tensors: tuple[torch.Tensor, ...]) -> KVCache:
        return KVCache.from_tensors(tensors, functional=True)

    def flops_per_token(self, seq_len: int) -> float:
        return self.cfg.flops_per_token(seq_len)

    def hidden_states(self, input_ids: torch.Tensor, *, state: KVCache | None = None,
                      attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)  # (B, T, C)
        if state is None:
            if T > self.cfg.max_seq_len:
                raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.cfg.max_seq_len}")
            if doc_ids is None:
                cos, sin, mask = self.rope_cos[:T], self.rope_sin[:T], None
            else:  # packed rows: attend only within the same document
                mask = document_causal_mask(doc_ids)  # (B, 1, T, T)
                cos, sin = self.rope_cos[position_ids][:, None], self.rope_sin[position_ids][:, None]  # (B, 1, T, D)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
            positions, mask = state.reserve(attention_mask.bool())  # (B, T), (B, 1, T, S)
            check_positions(positions, self.cfg.max_seq_len)
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, D)
        for i, layer in enumerate(self.layers):
            bias = self.dense_bias if mask is None else None  # the dense path knows no document masks
            if self.gradient_checkpointing and self.training and state is None:
                x = checkpoint(layer, x, cos, sin, i, None, mask, False, bias, use_reentrant=False)
            else:
                x = layer(x, cos, sin, i, state, mask, False, bias)
        return self.norm(x)

    def hidden_step(self, input_ids: torch.Tensor, state: KVCache, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, 1, C)
        positions, mask = state.reserve_step(attention_mask)  # (B, 1), (B, 1, 1, T_max)
        cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, 1, D)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, i, state, mask, True)
        return self.norm(x)
