"""The decode state of recurrent models (HGRN-Bit, H-Net): a flat list of per-row tensors, no time axis.

A recurrence carries everything it needs in fixed-size rows: HGRN's hidden state h (B, C) per layer, and for H-Net
per stage the previous encoder output (for the router's cosine), whether the row has started, and the dechunking
EMA z̄. Each layer or stage owns fixed indices into the list (`slots`, assigned when the model is built), so the
state needs no knowledge of the architecture.

- There are no slots to run out of: `max_len` is only the size the engine asked for (its pool key); `advance`
  counts tokens on the host and never raises, so a server's running batch can decode forever.
- Rows are independent: a step that masks a row (padding, a finished request, an H-Net row with no chunk boundary
  at this byte) leaves that row's tensors as they were, so rows may disagree on chunk boundaries.
- `insert` / `release` copy or zero one row in place (continuous batching); the tensors keep their identity, so a
  compiled step stays valid. `functional=True` (the pure decode step) makes every write out of place.
"""

from __future__ import annotations

import torch


class RecurrentState:
    def __init__(self, tensors: list[torch.Tensor], max_len: int, *, functional: bool = False) -> None:
        self.t = list(tensors)
        self.max_len = max_len
        self.length = 0  # tokens advanced so far (host-side, informational)
        self.functional = functional

    @classmethod
    def new(cls, specs: list[tuple[tuple[int, ...], torch.dtype]], batch_size: int, max_len: int, *,
            device: torch.device | str = "cpu") -> RecurrentState:
        """specs: (per-row shape, dtype) of each slot."""
        return cls([torch.zeros((batch_size, *shape), dtype=dtype, device=device) for shape, dtype in specs], max_len)

    def get(self, slot: int) -> torch.Tensor:
        return self.t[slot]

    def set(self, slot: int, value: torch.Tensor) -> None:
        """Write slot `slot` (in place, keeping the tensor; out of place when functional)."""
        value = value.to(self.t[slot].dtype)
        if self.functional:
            self.t[slot] = value
        else:
            self.t[slot].copy_(value)

    # ------------------------------------------------------------------------------------------------------------ #
    # DecodeState protocol

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        for t in self.t:
            t.zero_()
        self.length = 0

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(self.t)

    def insert(self, row: int, src: RecurrentState) -> None:
        """Row `row` continues src's one (prefilled) row."""
        for dst, s in zip(self.t, src.t, strict=True):
            dst[row] = s[0]

    def release(self, row: int) -> None:
        """Row `row` forgets its request: back to the empty state (a newcomer starts from zeros)."""
        for t in self.t:
            t[row] = 0

    def reorder(self, index: torch.Tensor) -> None:
        self.t = [t.index_select(0, index) for t in self.t]

    @property
    def batch_size(self) -> int:
        return self.t[0].shape[0]
