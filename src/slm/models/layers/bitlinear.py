"""BitLinear (BitNet b1.58 / MatMul-free LM): a linear layer whose weights act as ternary {-1, 0, +1} * gamma and whose
inputs act as 8-bit integers per token, trained through straight-through estimators on fp32 latent weights.

    y = Q8(RMSNorm(x)) @ Q3(W)^T
    Q8(x) = round(clamp(x * 127 / max|x|, -128, 127)) * max|x| / 127     (per token, absmax)
    Q3(W) = round(clamp(W / gamma, -1, 1)) * gamma,  gamma = bf16(mean|W|)  (per tensor)

Decisions:
- The RMSNorm (with its own gain) is part of the layer, as in BitNet and MatMul-free LM: quantizing an unnormalised
  input would spend the 8 bits on outliers. It is computed in fp32 like every norm in slm.
- Straight-through: forward uses the quantized values, backward treats both quantizers as the identity (`x + (q(x)
  - x).detach()`). The optimizer updates the fp32 latent weights; only `Q3(W)` is ever used in a forward pass, so a
  model is exactly its ternary codes and one scale per matrix (slm.models.hgrn_bit.ternary packs them in 2 bits).
- The product is a float matmul of the integer codes (activations in [-128, 127], weights in {-1, 0, 1}), then one
  rescale by max|x|/127 * gamma: what an integer kernel computes. Sums of integers below 2^24 are exact in fp32 in
  any order, so a BitLinear's output does not depend on the GEMM's blocking, batch size or sequence length. That
  matters here: a rounding error upstream can flip an 8-bit rounding downstream, so shape-dependent float noise in
  every matmul made full forward, packed forward and stepwise decode disagree at ~1e-2 now and then; with exact
  integer products only the fp parts (norms, the recurrence, H-Net's routers) carry rounding noise. No custom
  kernel, so it runs on any device, compiles and exports.
- gamma is rounded to bf16. The ternary file stores it in 2 bytes, so the exported model is the trained one exactly;
  and a latent weight that moves by a rounding error (gradient accumulation sums in another order) no longer moves
  the whole matrix's scale, whose 1e-9 drift flipped 8-bit activation roundings downstream (measured: 2 steps of
  4 x 2 vs 1 x 8 accumulation then differ by 9e-5 instead of 4e-6).
- gamma and max|x| are clamped to 1e-5 so an all-zero weight or token does not divide by zero.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norm import RMSNorm

EPS = 1e-5


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x (..., C) -> per-token 8-bit absmax fake-quantized x (same shape and dtype), no gradient handling."""
    x32 = x.float()
    scale = 127.0 / x32.abs().amax(dim=-1, keepdim=True).clamp_min(EPS)
    return ((x32 * scale).round().clamp(-128, 127) / scale).to(x.dtype)


def ternary_scale(w: torch.Tensor) -> torch.Tensor:
    """gamma = mean|W|, clamped away from 0 and rounded to bf16 (a 0-dim fp32 tensor; module docstring)."""
    return w.float().abs().mean().clamp_min(EPS).to(torch.bfloat16).float()


def ternary_codes(w: torch.Tensor) -> torch.Tensor:
    """W -> its codes in {-1, 0, 1} (int8)."""
    return (w.float() / ternary_scale(w)).round().clamp(-1, 1).to(torch.int8)


def quantize_weights(w: torch.Tensor) -> torch.Tensor:
    """W -> ternary fake-quantized W (same dtype): codes * gamma."""
    gamma = ternary_scale(w)
    return ((w.float() / gamma).round().clamp(-1, 1) * gamma).to(w.dtype)


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Straight-through: the value of q, the gradient of x."""
    return x + (q - x).detach()


class BitLinear(nn.Module):
    """RMSNorm -> 8-bit activations x ternary weights (module docstring). No bias."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.norm = RMSNorm(in_features, eps)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as the matmul sees it: Q8(RMSNorm(x)) with a straight-through gradient."""
        xn = self.norm(x)
        return ste(xn, quantize_activations(xn))

    def quantized_weight(self) -> torch.Tensor:
        """Q3(W) with a straight-through gradient into the latent weight."""
        return ste(self.weight, quantize_weights(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Integer-valued operands (module docstring): codes_x in [-128, 127], codes_w in {-1, 0, 1}; the float matmul
        # of integers is exact in fp32, then one rescale by max|x|/127 * gamma. Gradients are the straight-through
        # ones of Q8(x) @ Q3(W)^T (the detached scales cancel).
        xn = self.norm(x)
        amax = xn.detach().float().abs().amax(dim=-1, keepdim=True).clamp_min(EPS)  # (..., 1)
        u = xn * (127.0 / amax).to(xn.dtype)
        codes_x = ste(u, u.detach().round().clamp(-128, 127))
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            gamma = ternary_scale(self.weight.detach())
            v = self.weight / gamma
            codes_w = ste(v, v.detach().round().clamp(-1, 1))
        else:
            codes_w, gamma = self._frozen_codes()
        return F.linear(codes_x, codes_w.to(codes_x.dtype)) * (amax * (gamma / 127.0)).to(codes_x.dtype)

    def _frozen_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, gamma) for inference, recomputed only when the weight changes (decode reads each weight once per
        token instead of re-quantizing it)."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        cache = self.__dict__.get("_codes_cache")
        if cache is None or cache[0] != key:
            gamma = ternary_scale(w)
            cache = (key, (w / gamma).round().clamp(-1, 1), gamma)
            self.__dict__["_codes_cache"] = cache
        return cache[1], cache[2]

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, ternary"
