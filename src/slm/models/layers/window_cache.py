"""Ring-buffer key/value cache for sliding-window attention layers: `window` slots per layer, not the whole context.

It runs beside a `KVCache` (slm.models.layers.kv_cache), which keeps the shared bookkeeping: the write slot of each
new token (one index for the whole batch; prompts are left-padded), which slots hold real tokens, RoPE positions.
Slot s lives at ring position s % window, so the ring always holds the last `window` slots, which is exactly what a
query at the newest slot may see (the window includes the query itself). `slot` records which absolute slot each
ring position holds (-1 = never written) and `valid` whether it is a real token.

- Prefill / chunked prefill (`reserve` + `update`): T new tokens attend to [the ring as it was; the T new keys] under
  a mask built from absolute slots (causal, within the window, real keys only); afterwards the last min(T, window)
  new keys are written into the ring. Layers share `reserve`'s mask; each layer's `update` concatenates before
  it writes, so no layer sees another chunk's keys too early.
- Decode step (`reserve_step` + `update_step`): static shapes, no host reads, compilable like the KV cache's step:
  the new key is written at ring position index % window, then attention spans the whole ring masked by `valid`.
- `functional=True` (the pure decode step of exporters) makes every write out of place.
A padded query (a finished or left-padding row) sees only its own slot, as in the KV cache, so softmax never sees an
all-masked row.
"""

from __future__ import annotations

import torch


class WindowCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, batch_size: int, window: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch_size, n_kv_heads, window, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.valid = torch.zeros(batch_size, window, dtype=torch.bool, device=device)  # (B, W) real token held
        self.slot = torch.full((window,), -1, dtype=torch.long, device=device)  # (W,) absolute slot held
        self.window = window
        self.functional = False
        self._write: tuple[torch.Tensor, int] | None = None  # (ring positions, count) of the reserved chunk

    def reset(self) -> None:
        for t in (*self.k, *self.v, self.valid):
            t.zero_()
        self.slot.fill_(-1)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (*self.k, *self.v, self.valid, self.slot)

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...], *, functional: bool = True) -> WindowCache:
        n_layers = (len(tensors) - 2) // 2
        cache = cls.__new__(cls)
        cache.k, cache.v = list(tensors[:n_layers]), list(tensors[n_layers:2 * n_layers])
        cache.valid, cache.slot = tensors[2 * n_layers:]
        cache.window = cache.valid.shape[1]
        cache.functional = functional
        cache._write = None
        return cache

    # ------------------------------------------------------------------------------------------------------------ #
    # continuous batching: follow the KV cache's slot moves, take a prefilled row, free a row (all in place)

    def shift(self, d: int) -> None:
        """The absolute slots moved by d (the KV cache shifted right to make room, or compacted left): slot s is now
        s + d and lives at ring position (s + d) % window. Entries pushed below slot 0 are dropped."""
        for t in (*self.k, *self.v):
            t.copy_(t.roll(d, dims=2))
        valid, slot = self.valid.roll(d, dims=1), self.slot.roll(d, dims=0)
        slot = torch.where(slot >= 0, slot + d, slot)
        gone = slot < 0
        self.valid.copy_(valid & ~gone[None, :])
        self.slot.copy_(slot.masked_fill(gone, -1))

    def insert(self, row: int, src: WindowCache, offset: int) -> None:
        """Row `row` takes the one row of `src` (a batch-1 ring), whose slot s is slot s + offset here."""
        held = (src.slot >= 0).nonzero().flatten()  # src ring positions holding a slot
        dst = (src.slot[held] + offset) % self.window
        self.valid[row] = False
        self.valid[row, dst] = src.valid[0, held]
        self.slot[dst] = src.slot[held] + offset
        for dst_k, dst_v, src_k, src_v in zip(self.k, self.v, src.k, src.v):
            dst_k[row, :, dst] = src_k[0, :, held].to(dst_k.dtype)
            dst_v[row, :, dst] = src_v[0, :, held].to(dst_v.dtype)

    def release(self, row: int) -> None:
        self.valid[row] = False

    def reorder(self, index: torch.Tensor) -> None:
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.valid = self.valid.index_select(0, index)

    # ------------------------------------------------------------------------------------------------------------ #
    # prefill

    def reserve(self, attention_mask: torch.Tensor, start: int) -> torch.Tensor:
        """T new tokens at absolute slots start .. start+T-1; attention_mask (B, T) True for real tokens.
        Returns the mask (B, 1, T, W + T) over [ring; new keys] and records where the new keys go."""
        B, T = attention_mask.shape
        device = attention_mask.device
        q_slot = torch.arange(start, start + T, device=device)  # (T,)
        k_slot = torch.cat([self.slot, q_slot])  # (W + T,)
        k_real = torch.cat([self.valid & (self.slot >= 0)[None], attention_mask], dim=1)  # (B, W + T)
        dist = q_slot[:, None] - k_slot[None, :]  # (T, W + T)
        seen = (dist >= 0) & (dist < self.window) & (k_slot[None, :] >= 0)
        mask = seen[None, None] & k_real[:, None, None, :]  # (B, 1, T, W + T)
        own = torch.zeros_like(mask)
        own[:, 0, torch.arange(T), self.window + torch.arange(T)] = True
        mask = mask | (own & ~attention_mask[:, None, :, None])
        n = min(T, self.window)
        pos = q_slot[T - n:] % self.window  # ring positions of the last n new tokens (distinct: n <= W)
        self._write = (pos, n)
        self.valid = self._put(self.valid, 1, pos, attention_mask[:, T - n:])
        self.slot = self._put(self.slot, 0, pos, q_slot[T - n:])
        return mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H_kv, T, D) of the reserved chunk -> keys/values to attend over, (B, H_kv, W + T, D)."""
        pos, n = self._write
        k_all = torch.cat([self.k[layer], k], dim=2)
        v_all = torch.cat([self.v[layer], v], dim=2)
        self.k[layer] = self._put(self.k[layer], 2, pos, k[:, :, -n:])
        self.v[layer] = self._put(self.v[layer], 2, pos, v[:, :, -n:])
        return k_all, v_all

    # ------------------------------------------------------------------------------------------------------------ #
    # decode step

    def reserve_step(self, attention_mask: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One new token per row at absolute slot `index` (1,) (a device tensor: no host read).
        attention_mask (B, 1) -> the mask (B, 1, 1, W) over the ring after the write."""
        pos = index % self.window  # (1,)
        real = attention_mask[:, 0]  # (B,)
        self.valid = self._put(self.valid, 1, pos, real[:, None])
        self.slot = self._put(self.slot, 0, pos, index)
        self._write = (pos, 1)
        own = torch.arange(self.window, device=real.device) == pos  # (W,)
        mask = self.valid | (own[None, :] & ~real[:, None])  # (B, W)
        return mask[:, None, None, :]

    def update_step(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, 1, D) at the reserved ring position; return the whole ring (B, H_kv, W, D)."""
        pos, _ = self._write
        self.k[layer] = self._put(self.k[layer], 2, pos, k)
        self.v[layer] = self._put(self.v[layer], 2, pos, v)
        return self.k[layer], self.v[layer]

    def _put(self, target: torch.Tensor, dim: int, index: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        if self.functional:
            return target.index_copy(dim, index, source.to(target.dtype))
        return target.index_copy_(dim, index, source.to(target.dtype))
