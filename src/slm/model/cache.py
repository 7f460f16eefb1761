"""Static key/value cache for batched incremental decoding.

Design: one preallocated (B, H_kv, T_max, D) buffer per layer, and one shared write index for the batch. Prompts of
different lengths are left-padded by the caller; `valid` marks which slots hold real tokens, so a padded slot is never
attended to, and each row's RoPE positions count only its real tokens. A shared index keeps every update a single
`index_copy_`/slice write with static shapes (friendly to torch.compile and CUDA graphs), which a per-row ragged cache
would not be.
"""

from __future__ import annotations

import torch

from .config import ModelConfig


class KVCache:
    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layers)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # (B, T_max) real-token slots
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,) RoPE position of the next token
        self.length = 0  # slots written so far (shared by all rows)
        self.max_len = max_len

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def reserve(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Claim slots for T new tokens; returns their RoPE positions (B, T) and the attention mask (B, 1, T, length).

        `attention_mask` (B, T) is True for real tokens, False for left padding.
        """
        T = attention_mask.shape[1]
        start = self.length
        if start + T > self.max_len:
            raise ValueError(f"KV cache overflow: {start + T} tokens > cache length {self.max_len}")
        self.valid[:, start:start + T] = attention_mask
        positions = self.next_pos[:, None] + attention_mask.long().cumsum(dim=1) - 1  # (B, T)
        positions = positions.clamp(min=0)
        self.next_pos += attention_mask.long().sum(dim=1)
        self.length = start + T
        q_idx = torch.arange(start, start + T, device=self.valid.device)
        k_idx = torch.arange(self.length, device=self.valid.device)
        causal = k_idx[None, :] <= q_idx[:, None]  # (T, length)
        mask = causal[None, None] & self.valid[:, None, None, :self.length]  # (B, 1, T, length)
        # A padded query row would have no key at all (softmax of all -inf = NaN); let it see itself.
        own = torch.zeros_like(mask)
        own[:, 0, torch.arange(T), q_idx] = True
        mask = mask | (own & ~attention_mask[:, None, :, None])
        return positions, mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, T, D) at the slots just reserved; return all keys/values so far."""
        T = k.shape[2]
        end = self.length
        self.k[layer][:, :, end - T:end] = k
        self.v[layer][:, :, end - T:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder batch rows (e.g. to drop finished sequences)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.valid = self.valid.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
