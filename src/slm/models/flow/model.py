"""SLMS Flow: the Llama decoder (same blocks, same parameter names) with Gemma-style local/global attention.

Decisions:
- Local layers attend to a causal sliding window, global layers to the whole causal prefix; each kind rotates with
  its own RoPE table (SLMS: theta 1e4 local, 1e6 global). Positions are fp32 and every head uses rotate-half
  (slm.models.layers.rope) — SLMS computed them in bf16 (641 distinct positions of 2,048) and mixed two layouts.
- Kernels: SDPA with a boolean window mask (any device; on CUDA, SDPA's memory-efficient kernel takes the mask);
  under torch.compile on CPU at T <= 512, local layers take the dense attention of slm.models.layers.attention with a
  window bias instead of the causal one, so compiled CPU training handles windows too. Packed documents combine the
  window with the document mask. FlexAttention's block-sparse window would skip the masked blocks on CUDA; it is not
  used because this machine cannot test it and SDPA computes the same function.
- Decoding keeps a full KV cache only for the global layers and a window-sized ring buffer for the local ones
  (slm.models.flow.state), so memory per row grows with the context only for 1 layer in 6.
- No transformers class computes exactly this function, so Flow has no HF adapter: Ministral / Qwen2 / Qwen3 have
  sliding layers but one RoPE base for all layers; Gemma 2/3 have per-type RoPE bases but (1 + w) norms, post-norms,
  GeLU MLPs and scaled embeddings; the others with per-layer-type RoPE add q/k norms or attention sinks.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from ..base import check_positions, document_causal_mask
from ..layers.attention import MAX_LEN as DENSE_MAX_LEN
from ..layers.attention import window_bias
from ..layers.rope import rope_tables
from ..llama.model import Llama
from .config import FlowConfig
from .state import FlowState


class Flow(Llama):
    cfg: FlowConfig

    def __init__(self, cfg: FlowConfig) -> None:
        n = min(DENSE_MAX_LEN, cfg.max_seq_len)
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.global_rope_theta)
        super().__init__(cfg)
        self.register_buffer("global_rope_cos", cos, persistent=False)
        self.register_buffer("global_rope_sin", sin, persistent=False)
        self.register_buffer("dense_window_bias", window_bias(n, cfg.window), persistent=False)

    def materialize_buffers(self) -> None:
        super().materialize_buffers()
        if "dense_window_bias" not in self._buffers:  # called from Llama.__init__, before Flow registers its own
            return
        device = self.embed_tokens.weight.device
        with torch.device(device):
            self.global_rope_cos, self.global_rope_sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len,
                                                                     self.cfg.global_rope_theta)
        self.dense_window_bias = window_bias(min(DENSE_MAX_LEN, self.cfg.max_seq_len), self.cfg.window, device)

    def new_state(self, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> FlowState:
        return FlowState.new(self.cfg, batch_size, max_len, dtype=dtype, device=device)

    def state_from_tensors(self, tensors: tuple[torch.Tensor, ...]) -> FlowState:
        state = FlowState.from_tensors(self.cfg, tuple(tensors))
        state.kv.functional = state.ring.functional = True
        return state

    def flops_per_token(self, seq_len: int) -> float:
        return self.cfg.flops_per_token(seq_len)

    def _tables(self, positions: torch.Tensor | None, T: int) -> tuple[tuple, tuple]:
        """(local cos, sin), (global cos, sin): (T, D) rows, or gathered at positions (B, T) -> (B, 1, T, D)."""
        if positions is None:
            return (self.rope_cos[:T], self.rope_sin[:T]), (self.global_rope_cos[:T], self.global_rope_sin[:T])
        return ((self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]),
                (self.global_rope_cos[positions][:, None], self.global_rope_sin[positions][:, None]))

    def hidden_states(self, input_ids: torch.Tensor, *, state: FlowState | None = None,
                      attention_mask: torch.Tensor | None = None, doc_ids: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        x = self.embed_tokens(input_ids)  # (B, T, C)
        if state is not None:
            if attention_mask is None:
                attention_mask = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
            positions, global_mask, local_mask = state.reserve(attention_mask.bool())
            check_positions(positions, self.cfg.max_seq_len)
            local, glob = self._tables(positions, T)
            for i, layer in enumerate(self.layers):
                g = self.cfg.is_global(i)
                cache = state.kv if g else state.ring
                cos, sin = glob if g else local
                x = layer(x, cos, sin, state.cache_index[i], cache, global_mask if g else local_mask, False, None)
            return self.norm(x)
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds model.max_seq_len={self.cfg.max_seq_len}")
        idx = torch.arange(T, device=input_ids.device)
        dist = idx[:, None] - idx[None, :]
        window = (dist >= 0) & (dist < self.cfg.window)  # (T, T)
        if doc_ids is None:
            local, glob = self._tables(None, T)
            masks = {True: None, False: window}
            biases = {True: self.dense_bias, False: self.dense_window_bias}
        else:  # packed rows: each document attends only to itself (a document is contiguous, so window = distance)
            local, glob = self._tables(position_ids, T)
            doc = document_causal_mask(doc_ids)  # (B, 1, T, T)
            masks = {True: doc, False: doc & window}
            biases = {True: None, False: None}
        for i, layer in enumerate(self.layers):
            g = self.cfg.is_global(i)
            cos, sin = glob if g else local
            args = (x, cos, sin, i, None, masks[g], False, biases[g])
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, *args, use_reentrant=False)
            else:
                x = layer(*args)
        return self.norm(x)

    def hidden_step(self, input_ids: torch.Tensor, state: FlowState, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, 1, C)
        positions, global_mask, local_mask = state.reserve_step(attention_mask)
        local, glob = self._tables(positions, 1)
        for i, layer in enumerate(self.layers):
            g = self.cfg.is_global(i)
            cos, sin = glob if g else local
            x = layer(x, cos, sin, state.cache_index[i], state.kv if g else state.ring,
                      global_mask if g else local_mask, True)
        return self.norm(x)
