"""SLMS Pulse: Flow with leaky integrate-and-fire neurons on each block's attention and MLP outputs.

Per sublayer output I (B, T, C): m = mean_c |I| (per token), rate = LIF spike rate of I / m over `lif_steps` steps
(slm.models.layers.lif), output = rate * m * s (s a learnable scale), added to the residual through a learnable gate.

Decisions:
- The magnitude m is per token. SLMS keeps a running mean of |I| across training batches (a BatchNorm-like buffer);
  updated from the current batch it lets every token's output depend on the rest of the batch (future tokens and
  other rows: a leak), and in any form it makes 4 x 2 gradient accumulation differ from 1 x 8 and ties a model's
  function to the batches it last saw. A per-token magnitude keeps Pulse causal, batch-independent and resumable.
- The LIF is driven by I / m, not I: at initialisation |I| is ~0.02-0.1 (init std 0.02), far below the threshold of
  1, so a raw-input LIF never fires, its rate is 0 and the sublayer is dead (tests/models/test_pulse.py measures the
  rates both ways). Normalised, typical inputs sit near the threshold and the surrogate gradient flows.
- Spikes stay non-negative as in SLMS (the rate is in [0, 1]); the per-layer spike rates of the last training
  forward are kept in buffers and logged by the trainer (`step_metrics`) as the energy proxy.
- The LIF needs no state across tokens (its T steps run within one token), so Pulse decodes with Flow's state.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.lif import lif_rate
from ..llama.model import Block
from ..flow.model import Flow
from .config import PulseConfig


class LIF(nn.Module):
    """Rate-coded LIF on a sublayer output (module docstring)."""

    def __init__(self, cfg: PulseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.beta = nn.Parameter(torch.tensor(cfg.lif_beta))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("last_rate", torch.zeros(()), persistent=False)  # mean spike rate, last training pass

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        magnitude = current.abs().mean(dim=-1, keepdim=True)  # (B, T, 1)
        normalised = current / (magnitude + 1e-6)
        rate = lif_rate(normalised, self.beta.clamp(0.0, 1.0), steps=c.lif_steps, threshold=c.lif_threshold,
                        slope=c.surrogate_slope, arctan=c.surrogate == "arctan")
        if self.training:
            with torch.no_grad():
                self.last_rate.copy_(rate.detach().float().mean())
        return rate * magnitude * self.scale


class PulseBlock(Block):
    def __init__(self, cfg: PulseConfig) -> None:
        super().__init__(cfg)
        self.attn_lif = LIF(cfg)
        self.mlp_lif = LIF(cfg)
        self.attn_gate = nn.Parameter(torch.tensor(1.0))
        self.mlp_gate = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int, cache=None,
                mask: torch.Tensor | None = None, step: bool = False,
                dense_bias: torch.Tensor | None = None) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), cos, sin, layer, cache, mask, step, dense_bias)
        x = x + self.attn_gate * self.attn_lif(h)
        return x + self.mlp_gate * self.mlp_lif(self.mlp(self.post_attention_layernorm(x)))


class Pulse(Flow):
    cfg: PulseConfig
    block_class = PulseBlock

    def reset_parameters(self, seed: int | None = None) -> None:
        super().reset_parameters(seed)
        for name, p in self.named_parameters():
            if p.dim() == 0:  # LIF decay, output scales, residual gates
                nn.init.constant_(p, self.cfg.lif_beta if name.endswith(".beta") else 1.0)

    def materialize_buffers(self) -> None:
        super().materialize_buffers()
        for module in self.modules():
            if isinstance(module, LIF):
                module.last_rate = torch.zeros((), device=self.embed_tokens.weight.device)

    def step_metrics(self) -> dict[str, float]:
        """Spike rate per layer and sublayer of the last training forward, and their mean."""
        out = {}
        for i, block in enumerate(self.layers):
            if isinstance(block, PulseBlock):
                out[f"spike_rate_attn_{i}"] = float(block.attn_lif.last_rate)
                out[f"spike_rate_mlp_{i}"] = float(block.mlp_lif.last_rate)
        if out:
            out["spike_rate"] = sum(out.values()) / len(out)
        return out
