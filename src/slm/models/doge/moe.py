"""CDMoE, SmallDoge's feed-forward: a dense shared SwiGLU expert plus N rank-1 experts chosen by product-key routing,
with a Switch-style load-balancing loss.

For a token x: r = W_r x in R^{2 sqrt(N)} is split into two halves r1, r2 (sqrt(N) keys each); expert (i, j) scores
s_ij = r1_i + r2_j; the token uses the top-K of the N sums, weighted by the softmax over those K; expert e adds
w_e * SiLU(d_e . x) * u_e (`down_embed` / `up_embed` rows). Only the top-K of each half can reach the top-K sums,
so K^2 candidates are scored, not N.

Decisions:
- Routing is strictly per token: r is viewed (tokens, 2, sqrt(N)). SmallDoge and transformers' `DogeCDMoE` view the
  (B, T, 2 sqrt(N)) logits as (2, B*T, sqrt(N)), which takes token t's two halves from tokens t/2 and B*T/2 + t/2:
  future tokens and other rows of the batch (tests/models/test_doge.py shows it on transformers' class). For a single
  token (B*T = 1) both views agree, which is why their token-by-token generation looked right.
- Balance loss in one index space: router probability of expert (i, j) is the softmax over all N sums, which
  factorises as softmax(r1)_i * softmax(r2)_j, so P (mean over tokens) is a (sqrt(N) x sqrt(N)) matrix product; f is
  the fraction of the tokens' K assignments that went to each expert (expert ids, not sorted-candidate positions as in
  transformers' `load_balancing_loss_func`). loss = N * sum_e f_e P_e (1 when balanced), times `moe_aux_coef`, mean
  over layers; it is a per-batch mean, so gradient accumulation over micro-batches approximates (does not equal) one
  big batch, as in every Switch-style loss.
- Expert usage is counted on every training forward (no host sync) and read once per optimizer step by
  `step_metrics`: the normalised entropy of the assignment counts (1 = uniform) and the fraction of experts used.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import DogeConfig


class SwiGLU(nn.Module):
    def __init__(self, cfg: DogeConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def route(router_logits: torch.Tensor, n_keys: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Product-key routing of each token on its own: router_logits (..., 2 * n_keys) -> (expert ids (..., K) long,
    softmax weights (..., K))."""
    halves = router_logits.unflatten(-1, (2, n_keys))  # (..., 2, n_keys): token t's own two halves
    k1 = min(top_k, n_keys)
    (s1, i1), (s2, i2) = halves[..., 0, :].topk(k1, dim=-1), halves[..., 1, :].topk(k1, dim=-1)
    sums = (s1[..., :, None] + s2[..., None, :]).flatten(-2)  # (..., k1*k1)
    ids = (i1[..., :, None] * n_keys + i2[..., None, :]).flatten(-2)
    scores, pos = sums.topk(top_k, dim=-1)
    return ids.gather(-1, pos), F.softmax(scores, dim=-1)


class CDMoE(SwiGLU):
    """The shared expert is this module's own SwiGLU (names as transformers' `DogeCDMoE`)."""

    def __init__(self, cfg: DogeConfig) -> None:
        super().__init__(cfg)
        self.n_experts, self.n_keys, self.top_k = cfg.n_experts, cfg.n_keys, cfg.moe_top_k
        self.router_gate = nn.Linear(cfg.d_model, 2 * cfg.n_keys, bias=False)
        self.down_embed = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))  # (N, C) expert input vectors d_e
        self.up_embed = nn.Parameter(torch.empty(cfg.n_experts, cfg.d_model))  # (N, C) expert output vectors u_e
        self.register_buffer("usage", torch.zeros(cfg.n_experts), persistent=False)  # assignments since last read
        self.balance_loss: torch.Tensor | None = None  # unweighted, of the last training forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        logits = self.router_gate(x)  # (B, T, 2*n_keys)
        ids, weights = route(logits, self.n_keys, self.top_k)  # (B, T, K)
        gate = torch.einsum("btkc,btc->btk", self.down_embed[ids], x)  # d_e . x
        routed = torch.einsum("btk,btkc->btc", F.silu(gate) * weights.to(gate.dtype), self.up_embed[ids])
        if self.training and torch.is_grad_enabled():
            counts = self._counts(ids)
            self.balance_loss = self._balance_loss(logits, counts)
            self.usage += counts
        return super().forward(x) + routed

    def _counts(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (..., K) -> (N,) fp32 assignments per expert (a static-shape scatter: bincount breaks torch.compile)."""
        flat = ids.flatten()
        return torch.zeros(self.n_experts, device=ids.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))

    def _balance_loss(self, logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Switch loss N * sum_e f_e P_e over expert ids (module docstring); logits (B, T, 2*n_keys), counts (N,)."""
        probs = F.softmax(logits.float().unflatten(-1, (2, self.n_keys)), dim=-1).flatten(0, -3)  # (M, 2, n_keys)
        mean_prob = probs[:, 0].t() @ probs[:, 1] / probs.shape[0]  # (n_keys, n_keys): P of expert i*n_keys + j
        fraction = counts / counts.sum()  # (N,) share of the tokens' K assignments
        return self.n_experts * (fraction * mean_prob.flatten()).sum()

    def read_usage(self) -> tuple[float, float]:
        """(normalised entropy of the expert assignments, fraction of experts used) since the last read; resets."""
        counts = self.usage.double()
        total = float(counts.sum())
        if total == 0:
            return float("nan"), float("nan")
        p = counts / total
        entropy = float(-(p[p > 0] * p[p > 0].log()).sum()) / math.log(self.n_experts) if self.n_experts > 1 else 1.0
        used = float((counts > 0).double().mean())
        self.usage.zero_()
        return entropy, used
