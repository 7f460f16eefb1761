"""Static key/value cache for batched incremental decoding.

Design: one preallocated (B, H_kv, T_max, D) buffer per layer, and one shared write index for the batch. Prompts of
different lengths are left-padded by the caller; `valid` marks which slots hold real tokens, so a padded slot is never
attended to, and each row's RoPE positions count only its real tokens. A shared index keeps every update a single
slice/`index_copy_` write, which a per-row ragged cache would not.

Two ways in:
- `reserve` + `update` (any number of new tokens: prefill, chunked prefill): attention sees the `length` slots written
  so far, so shapes grow with the sequence. Simple and exact; the host knows `length`.
- `reserve_step` + `update_step` (exactly one new token per row: the decode loop): the write slot is a device tensor
  (`index`), keys/values are written with `index_copy_` and attention always spans the whole T_max buffer with
  `valid` as the mask (unwritten slots are invalid). Every tensor shape is then the same at every step and no host
  value is read, so the step can be compiled once (torch.compile, CUDA graphs) and replayed for the whole generation.
  The price is attending over T_max instead of `length` slots, which for decode (one query row) is a memory read of
  the cache, smaller than the weights it sits next to. Host-side bookkeeping (`length`, the overflow check) is done
  by `advance`, outside anything compiled.

Continuous batching (a server's running batch, `slm.generate.batching`) needs rows to come and go between steps:
`insert(row, src)` copies a request's prefilled batch-1 cache into one row, right-aligned to the shared write slot
(moving every row right first when the newcomer holds more slots than have been written); `release(row)` marks a
row's slots unused. The shared index only moves forward, so when the buffer is full `advance` first drops the leading
slots no row uses any more (`compact`: one host read, one in-place copy per layer, amortised over the slots freed).
All three work in place, so a compiled step keeps seeing the same tensors.

The pure decode step (`CausalLM.decode_step`, what ONNX / Core ML export traces) rebuilds a cache from its tensors
with `functional=True`: every write is then out of place (`index_copy`, not `index_copy_`) and `advance` moves the
slot index on the device, so `(ids, state tensors) -> (logits, new state tensors)` mutates nothing it was given.
"""

from __future__ import annotations

import torch



class KVCache:
    def __init__(self, n_layers: int, n_kv_heads: int, head_dim: int, batch_size: int, max_len: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # (B, T_max) real-token slots
        self.next_pos = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,) RoPE position of the next token
        self.index = torch.zeros(1, dtype=torch.long, device=device)  # (1,) last reserved slot (the step path writes it)
        self.length = 0  # slots written so far (shared by all rows; host-side)
        self.max_len = max_len
        self.functional = False  # out-of-place writes, device-side advance (the pure decode step)

    def reset(self) -> None:
        """Empty the cache for reuse (a state pool hands the same buffers to the next request)."""
        for t in (*self.k, *self.v, self.valid, self.next_pos, self.index):
            t.zero_()
        self.length = 0

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """Everything a decode step reads and writes, flat: k_0..k_{L-1}, v_0..v_{L-1}, valid, next_pos, index."""
        return (*self.k, *self.v, self.valid, self.next_pos, self.index)

    @classmethod
    def from_tensors(cls, tensors: tuple[torch.Tensor, ...], *, functional: bool = True) -> KVCache:
        """A cache over `tensors()` of another (no copy); `functional` makes every write out of place."""
        n_layers = (len(tensors) - 3) // 2
        cache = cls.__new__(cls)
        cache.k, cache.v = list(tensors[:n_layers]), list(tensors[n_layers:2 * n_layers])
        cache.valid, cache.next_pos, cache.index = tensors[2 * n_layers:]
        cache.max_len = cache.valid.shape[1]
        cache.length = 0  # unknown on the host; a functional cache advances on the device only
        cache.functional = functional
        return cache

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def reserve(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Claim slots for T new tokens; returns their RoPE positions (B, T) and the attention mask (B, 1, T, length).

        `attention_mask` (B, T) is True for real tokens, False for left padding.
        """
        T = attention_mask.shape[1]
        start = self.length
        self.advance(T)
        self.valid[:, start:start + T] = attention_mask
        positions = self.next_pos[:, None] + attention_mask.long().cumsum(dim=1) - 1  # (B, T)
        positions = positions.clamp(min=0)
        self.next_pos += attention_mask.long().sum(dim=1)
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

    def advance(self, n: int) -> None:
        """Host-side bookkeeping for n new slots: overflow check and `length` (no device value is read unless the
        buffer is full: then slots no row uses are dropped first, see `compact`). A functional cache moves `index` on
        the device instead (the caller keeps the step within the cache)."""
        if self.functional:
            self.index = self.index + n
            return
        if self.length + n > self.max_len:
            self.compact()
        if self.length + n > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length + n} tokens > cache length {self.max_len}")
        self.length += n
        self.index.fill_(self.length - 1)

    def reserve_step(self, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Static-shape reserve of ONE new slot per row at `index` (call `advance(1)` first, outside compiled code).

        attention_mask (B, 1) -> RoPE positions (B, 1) and the attention mask (B, 1, 1, T_max). A padded row (False)
        sees only its own slot, like `reserve`.
        """
        slot = self.index  # (1,) set by advance(1)
        real = attention_mask[:, 0]  # (B,)
        positions = self.next_pos[:, None].clone()  # (B, 1)
        if self.functional:
            self.valid = self.valid.index_copy(1, slot, real[:, None])
            self.next_pos = self.next_pos + real.long()
        else:
            self.valid.index_copy_(1, slot, real[:, None])
            self.next_pos += real.long()
        own = torch.arange(self.max_len, device=self.valid.device) == slot  # (T_max,)
        mask = self.valid | (own[None, :] & ~real[:, None])  # (B, T_max)
        return positions, mask[:, None, None, :]

    def update_step(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, H_kv, 1, D) at the reserved slot; return the whole (B, H_kv, T_max, D) buffers."""
        slot = self.index
        if self.functional:
            self.k[layer] = self.k[layer].index_copy(2, slot, k)
            self.v[layer] = self.v[layer].index_copy(2, slot, v)
        else:
            self.k[layer].index_copy_(2, slot, k)
            self.v[layer].index_copy_(2, slot, v)
        return self.k[layer], self.v[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep/reorder batch rows (e.g. to drop finished sequences)."""
        self.k = [t.index_select(0, index) for t in self.k]
        self.v = [t.index_select(0, index) for t in self.v]
        self.valid = self.valid.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)

    # ------------------------------------------------------------------------------------------------------------ #
    # continuous batching: rows join and leave between steps (all in place)

    def insert(self, row: int, src: KVCache) -> None:
        """Make row `row` continue the one row of `src` (a batch-1 cache holding a prefilled prompt), replacing what
        the row held. Its slots are right-aligned to the shared write position; when `src` holds more slots than this
        cache has written, every row first moves right to make room."""
        n = src.length
        if n > self.max_len:
            raise ValueError(f"KV cache insert: {n} slots > cache length {self.max_len}")
        if n > self.length:
            self._shift(n - self.length)
        start, end = self.length - n, self.length
        self.valid[row] = False
        self.valid[row, start:end] = src.valid[0, :n]
        for dst_k, dst_v, src_k, src_v in zip(self.k, self.v, src.k, src.v):
            dst_k[row, :, start:end] = src_k[0, :, :n]
            dst_v[row, :, start:end] = src_v[0, :, :n]
        self.next_pos[row] = src.next_pos[0]

    def release(self, row: int) -> None:
        """Row `row` holds nothing any more: its slots stop counting as used (see `compact`)."""
        self.valid[row] = False
        self.next_pos[row] = 0

    def compact(self) -> int:
        """Drop the leading written slots that no row uses (released rows, rows inserted after them); returns how
        many. Positions (RoPE) are per row and unaffected."""
        used = self.valid[:, :self.length].any(dim=0)  # (length,)
        first = int(used.int().argmax()) if bool(used.any()) else self.length
        if first:
            self._shift(-first)
        return first

    def _shift(self, d: int) -> None:
        """Move the written slots [0, length) by d (> 0: right, < 0: left) along time; vacated slots are invalid."""
        L = self.length
        src, dst = (slice(0, L), slice(d, L + d)) if d > 0 else (slice(-d, L), slice(0, L + d))
        vacated = slice(0, d) if d > 0 else slice(L + d, L)
        for t in (*self.k, *self.v):
            t[:, :, dst] = t[:, :, src].clone()
        self.valid[:, dst] = self.valid[:, src].clone()
        self.valid[:, vacated] = False
        self.length = L + d
        self.index.fill_(max(self.length - 1, 0))
