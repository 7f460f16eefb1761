"""Leaky integrate-and-fire neurons with a surrogate gradient, rate-coded over a fixed number of time steps.

U_t = beta * U_{t-1} + I - S_{t-1} * theta,  S_t = H(U_t - theta),  U_0 = S_0 = 0,  t = 1..T (reset by subtraction),
with the same input I at every step (SLMS's rate coding); the layer returns the spike rate (1/T) sum_t S_t.
The Heaviside step has no useful derivative, so backward uses a surrogate (`surrogate_grad`):
- fast_sigmoid (SuperSpike, Zenke & Ganguli 2018): dS/dU = 1 / (1 + k |U - theta|)^2,
- arctan (Fang et al. 2021): dS/dU = (k / 2) / (1 + (pi k (U - theta) / 2)^2),
both positive and peaked at the threshold, k the slope. (SLMS's own surrogate is odd — negative below threshold —
and cannot be constructed; its model ended up with snnTorch's `Leaky`.)

Written here rather than taken from snnTorch: `snn.Leaky` keeps its membrane in module state between calls
(`init_leaky`, hidden-state flags), which a compiled or exported (pure-function) step cannot carry, and the whole
neuron is ten lines over a custom autograd function. The loop runs over a Python constant T, so torch.compile and
tracing unroll it: no data-dependent control flow.
"""

from __future__ import annotations

import math

import torch


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float, arctan: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.slope, ctx.arctan = slope, arctan
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x, ctx.slope, ctx.arctan), None, None


def surrogate_grad(x: torch.Tensor, slope: float, arctan: bool) -> torch.Tensor:
    """d spike / d x of the surrogate at x = U - theta."""
    if arctan:
        return (slope / 2) / (1 + (math.pi * slope * x / 2) ** 2)
    return 1 / (1 + slope * x.abs()) ** 2


def spike(x: torch.Tensor, slope: float = 25.0, arctan: bool = False) -> torch.Tensor:
    """Heaviside H(x) forward, surrogate gradient backward."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        # No backward to shape: the same step without the autograd function, which torch.jit.trace would record as
        # an opaque PythonOp that exporters (Core ML) cannot convert.
        return (x > 0).to(x.dtype)
    return _Spike.apply(x, slope, arctan)


def lif_rate(current: torch.Tensor, beta: torch.Tensor, *, steps: int, threshold: float = 1.0, slope: float = 25.0,
             arctan: bool = False) -> torch.Tensor:
    """Spike rate in [0, 1] of LIF neurons driven by a constant `current` (any shape) for `steps` steps."""
    u = torch.zeros_like(current)
    s = torch.zeros_like(current)
    total = torch.zeros_like(current)
    for _ in range(steps):
        u = beta * u + current - s * threshold
        s = spike(u - threshold, slope, arctan)
        total = total + s
    return total / steps
