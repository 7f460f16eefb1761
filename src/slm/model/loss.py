"""Next-token cross-entropy computed from hidden states in chunks.

The full (B*T, vocab) logits tensor in fp32 is the largest activation of a small LM (SmolLM2: 49152 x 2048 x 4 B =
400 MB per sequence, more than all its layers' activations). `chunked_cross_entropy` projects and reduces one chunk of
rows at a time and recomputes each chunk's logits in backward (a custom autograd function), so peak memory holds one
chunk of logits, not all of them. Targets are already aligned with positions (the data loader does the one shift);
this function never shifts. `ignore_index` positions count for nothing, in numerator and denominator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


class _ChunkedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        # hidden (N, C), weight (V, C), targets (N,) -> summed loss (scalar, fp32)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[s:s + chunk], weight).float()
            total += F.cross_entropy(logits, targets[s:s + chunk], ignore_index=IGNORE_INDEX, reduction="sum")
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets = ctx.saved_tensors
        grad_h = torch.empty_like(hidden)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, t = hidden[s:s + ctx.chunk], targets[s:s + ctx.chunk]
            probs = F.linear(h, weight).float().softmax(-1)  # d(sum CE)/d(logits) = softmax - onehot
            valid = t != IGNORE_INDEX
            probs[valid, t[valid]] -= 1.0
            probs[~valid] = 0.0
            g = (probs * grad_out).to(hidden.dtype)
            grad_h[s:s + ctx.chunk] = g @ weight
            grad_w += (g.t() @ h).float()
        return grad_h, grad_w.to(weight.dtype), None, None


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk: int = 4096, reduction: str = "mean") -> torch.Tensor:
    """hidden (B, T, C) or (N, C), weight (V, C), targets (B, T) or (N,) -> next-token CE ("mean" over valid or "sum")."""
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    total = _ChunkedCE.apply(h, weight, t, chunk)
    if reduction == "sum":
        return total
    return total / (t != IGNORE_INDEX).sum().clamp(min=1)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Plain next-token CE on already-aligned logits (B, T, V) and targets (B, T), computed in fp32."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction=reduction)
