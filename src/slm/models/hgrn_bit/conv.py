"""HGRN-Bit's optional short convolution: a causal depthwise convolution over each channel's last `kernel` inputs,
then SiLU (MatMul-free LM's `ShortConvolution`; Simplified SLM's configs switch it on from their HEAD commit).

    y_t = SiLU(b + sum_{j < K} w[:, K-1-j] * x_{t-j})

where x_{t-j} is the j-th real input before t of the same document, and zero before the row's (or document's) first
input, so a packed row equals separate forwards and nothing after t is ever read.

Decisions:
- A sum over the K lags (K = 4: four multiply-adds over (B, T, C)), not F.conv1d: a per-lag mask drops inputs of an
  earlier document exactly, and the decode step runs the same sum over its window of K inputs, so decode computes the
  forward's arithmetic.
- Masked positions (left padding, the unused chunk slots of H-Net's inner stage, rows without a boundary) are identity
  steps, as in the recurrence: each row's real inputs are moved to the front, in order, before the sum and the
  outputs moved back after it, so a masked input neither enters nor shifts any window. The move is one scatter by
  running counts, not a stable argsort (which ONNX lacks).
- The decode state is each row's last K - 1 real inputs, oldest first (one RecurrentState slot, fp32); a masked row's
  step keeps it. After a call with document starts it holds only the last document's inputs (zeros before them).
- Weights in nn.Conv1d's layout (C, 1, K), so the reference's tensors load as they are; initialised as nn.Conv1d
  does (uniform in ±1/sqrt(K)): the model's normal(init_std) init would make every gate input ~0 through this conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .state import RecurrentState


def front_dest(mask: torch.Tensor) -> torch.Tensor:
    """mask (B, T) bool -> (B, T) long: where each position goes when the True positions move to the front, in
    order, and the others after them, in order (a stable partition written with running counts: ONNX has no stable
    sort). Scatter by it to move, gather by it to move back."""
    ones, rest = mask.long().cumsum(dim=1), (~mask).long().cumsum(dim=1)  # (B, T) running counts of each kind
    return torch.where(mask, ones - 1, ones[:, -1:] + rest - 1)


@dataclass(frozen=True)
class ConvSpec:
    """The short convolution of an HGRN-Bit mixer (slm.models.hgrn_bit.config: use_short_conv and friends)."""

    kernel: int  # inputs in the window, the current one included
    bias: bool
    shared: bool  # True: one conv on the mixer input; False: one on each of the i and f projections


class ShortConv(nn.Module):
    """Causal depthwise conv + SiLU (module docstring). Owns one state slot: the last kernel - 1 inputs (B, K-1, C)."""

    def __init__(self, channels: int, kernel: int, bias: bool) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel))  # (C, 1, K): tap k multiplies x_{t-(K-1-k)}
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.slots: list[int] = []  # assigned by the model
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        bound = 1.0 / math.sqrt(self.kernel)  # nn.Conv1d's default for a depthwise kernel (fan_in = K)
        nn.init.uniform_(self.weight, -bound, bound, generator=generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def state_specs(self) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((self.kernel - 1, self.weight.shape[0]), torch.float32)]

    def _conv(self, seq: torch.Tensor, doc: torch.Tensor | None) -> torch.Tensor:
        """seq (B, K-1+T, C) = [window; inputs], doc (B, K-1+T) document index or None -> (B, T, C)."""
        K = self.kernel
        T = seq.shape[1] - (K - 1)
        w = self.weight[:, 0].to(seq.dtype)  # (C, K)
        y = seq[:, K - 1:] * w[:, K - 1]
        for k in range(K - 2, -1, -1):  # older inputs, lag K-1-k
            term = seq[:, k:k + T]
            if doc is not None:  # an input of an earlier document counts as the zero before a document's start
                term = torch.where((doc[:, k:k + T] == doc[:, K - 1:])[..., None], term, 0.0)
            y = y + term * w[:, k]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return F.silu(y)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None, reset: torch.Tensor | None,
                state: RecurrentState | None) -> torch.Tensor:
        """x (B, T, C); valid (B, T) bool (False = identity step) or None; reset (B, T) bool (document starts)."""
        B, T, C = x.shape
        K = self.kernel
        prev = state.get(self.slots[0]).to(x.dtype) if state is not None else x.new_zeros(B, K - 1, C)
        dest = None
        if valid is not None:  # real inputs first, in order (masked ones after: they never enter a window)
            dest = front_dest(valid)  # (B, T) a permutation
            x = torch.zeros_like(x).scatter(1, dest[..., None].expand(B, T, C), x)
            reset = None if reset is None else torch.zeros_like(reset).scatter(1, dest, reset)
        seq = torch.cat([prev, x], dim=1)  # (B, K-1+T, C)
        doc = None if reset is None else F.pad(reset.long().cumsum(dim=1), (K - 1, 0))  # the carried window: doc 0
        y = self._conv(seq, doc)  # (B, T, C), real inputs first
        if dest is not None:  # back to the original positions (a masked position's value is finite and unused)
            y = y.gather(1, dest[..., None].expand(B, T, C))
        if state is not None:
            n = valid.long().sum(dim=1) if valid is not None else torch.full((B,), T, device=x.device)
            idx = n[:, None] + torch.arange(K - 1, device=x.device)  # (B, K-1) the window ending at the last input
            window = seq.gather(1, idx[..., None].expand(B, K - 1, C))
            if doc is not None:
                last = doc.gather(1, (n + K - 2)[:, None])  # (B, 1) document of the row's last input
                window = torch.where((doc.gather(1, idx) == last)[..., None], window, 0.0)
            state.set(self.slots[0], window)
        return y

    def step(self, x: torch.Tensor, real: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """x (B, 1, C), real (B,) bool -> (B, 1, C); rows with real False keep their window."""
        window = state.get(self.slots[0])
        seq = torch.cat([window.to(x.dtype), x], dim=1)  # (B, K, C)
        state.set(self.slots[0], torch.where(real[:, None, None], seq[:, 1:].to(window.dtype), window))
        return self._conv(seq, None)
