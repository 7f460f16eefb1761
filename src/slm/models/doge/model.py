"""The Doge decoder (SmallDoge): token embedding, N x blocks, RMSNorm, output head. A block is

    h = alpha_attn * h + DynamicMaskAttention(RMSNorm(h))
    h = alpha_ffn  * h + (SwiGLU or CDMoE)(RMSNorm(h))

with learnable per-channel residual scales alpha (init 1). No biases anywhere.

Decisions:
- Parameter names follow transformers' `DogeForCausalLM` (minus its `model.` prefix), RoPE is the rotate-half layout:
  dense export/import is a renaming (slm.models.doge.hf), checked to 1e-4 on logits against transformers.
- Attention and its decode-time selection live in `attention.py`; the MoE in `moe.py`. The decode state is slm's
  `KVCache` (the dynamic bias is recomputed from cached values), so the engine, the pure decode step and the
  exporters see the same state as for Llama.
- Initialisation: normal(init_std) for matrices and expert tables, the residual-writing matrices (o_proj, down_proj,
  up_embed) scaled by 1/sqrt(2 n_layers) as in slm's Llama; A = 0 (dt = 1), norms and residual scales = 1.
- `aux_losses()` returns the MoE balance loss of the last training forward (mean over layers, times moe_aux_coef);
  `step_metrics()` the expert-usage entropy and coverage since the previous optimizer step.
- This module knows nothing about tokenizers, data or training.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..base import CausalLM, Role, check_positions, document_causal_mask
from ..layers.attention import MAX_LEN as DENSE_MAX_LEN
from ..layers.attention import causal_bias
from ..layers.kv_cache import KVCache
from ..layers.norm import RMSNorm
from ..layers.rope import rope_tables
from .attention import DynamicMaskAttention
from .config import DogeConfig
from .moe import CDMoE, SwiGLU


class Block(nn.Module):
    def __init__(self, cfg: DogeConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = DynamicMaskAttention(cfg)
        self.input_residual = nn.Parameter(torch.ones(cfg.d_model))  # alpha of the attention residual
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = CDMoE(cfg) if cfg.is_moe else SwiGLU(cfg)
        self.post_attention_residual = nn.Parameter(torch.ones(cfg.d_model))  # alpha of the feed-forward residual

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None = None, mask: torch.Tensor | None = None, step: bool = False,
                dense_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, mask, step, dense_bias)
        x = self.input_residual * x + h
        return self.post_attention_residual * x + self.mlp(self.post_attention_layernorm(x))


class Doge(CausalLM):
    cfg: DogeConfig

    def __init__(self, cfg: DogeConfig) -> None:
        super().__init__(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # causal mask of slm's dense CPU training attention (slm.models.layers.attention), <= 1 MB
        self.register_buffer("dense_bias", causal_bias(min(DENSE_MAX_LEN, cfg.max_seq_len)), persistent=False)
        self.reset_parameters()

    @property
    def output_weight(self) -> torch.Tensor:
        """(vocab, d_model) matrix of the output head (the embedding when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def _moe_layers(self) -> list[CDMoE]:
        return [block.mlp for block in self.layers if isinstance(block.mlp, CDMoE)]

    def reset_parameters(self, seed: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith(".A"):
                nn.init.zeros_(p)
            elif p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight", "up_embed")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.cfg.n_layers), generator=gen)
            else:
                nn.init.normal_(p, 0.0, std, generator=gen)
        self.materialize_buffers()

    def materialize_buffers(self) -> None:
        """(Re)build the non-persistent buffers (RoPE tables, causal bias, expert usage) on the parameters' device."""
        device = self.embed_tokens.weight.device
        with torch.device(device):
            self.rope_cos, self.rope_sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
            self.dense_bias = causal_bias(min(DENSE_MAX_LEN, self.cfg.max_seq_len))
            for moe in self._moe_layers():
                moe.usage = torch.zeros(moe.n_experts)
                moe.balance_loss = None

    def param_roles(self) -> dict[str, Role]:
        """Default roles, with the routed experts' tables as "expert" and A (one per kv head) as "scalar"."""
        roles = super().param_roles()
        for name in roles:
            if name.endswith(("down_embed", "up_embed")):
                roles[name] = "expert"
            elif name.endswith(".A"):
                roles[name] = "scalar"
        return roles

    def new_state(self, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> KVCache:
        c = self.cfg
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, batch_size, max_len, dtype=dtype, device=device)

    def state_from_tensors(self, tensors: tuple[torch.Tensor, ...]) -> KVCache:
        return KVCache.from_tensors(tensors, functional=True)

    def flops_per_token(self, seq_len: int) -> float:
        return self.cfg.flops_per_token(seq_len)

    def aux_losses(self) -> dict[str, torch.Tensor]:
        losses = [moe.balance_loss for moe in self._moe_layers() if moe.balance_loss is not None]
        if not losses or self.cfg.moe_aux_coef == 0:
            return {}
        return {"moe_balance": self.cfg.moe_aux_coef * torch.stack(losses).mean()}

    def step_metrics(self) -> dict[str, float]:
        layers = self._moe_layers()
        if not layers:
            return {}
        usage = [moe.read_usage() for moe in layers]
        return {"expert_entropy": sum(u[0] for u in usage) / len(usage),
                "experts_used": sum(u[1] for u in usage) / len(usage)}

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
            else:  # packed rows: attend (and select keys) only within the same document
                mask = document_causal_mask(doc_ids)  # (B, 1, T, T)
                cos, sin = self.rope_cos[position_ids][:, None], self.rope_sin[position_ids][:, None]  # (B, 1, T, D)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
            positions, mask = state.reserve(attention_mask.bool())  # (B, T), (B, 1, T, S)
            check_positions(positions, self.cfg.max_seq_len)
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, D)
        bias = self.dense_bias if mask is None else None  # the dense kernel knows no document masks
        for i, layer in enumerate(self.layers):
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
