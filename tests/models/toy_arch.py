"""A second architecture that exists only in the tests: a Llama whose MLP is a plain (ungated) GELU MLP.

It proves the model contract: registered here and nowhere else, it passes every invariant of test_invariants.py and
trains, checkpoints, resumes and generates through slm's unchanged trainer, engine, optimizer and checkpoint code.
It has no transformers class (no HF adapter), so HF export must refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from slm.models import ArchSpec, Preset, register
from slm.models.llama.config import LlamaConfig
from slm.models.llama.model import Llama

NAME = "toy-gelu"


@dataclass(kw_only=True)
class ToyConfig(LlamaConfig):
    arch: str = NAME
    mlp_bias: bool = True  # biases on the two MLP projections (a role Llama does not have)

    def num_parameters(self) -> int:
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd + self.n_heads * hd * d
        mlp = 2 * d * self.ffn_hidden + ((self.ffn_hidden + d) if self.mlp_bias else 0)
        per_layer = attn + (2 * hd if self.qk_norm else 0) + mlp + 2 * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_layer + d + head


class GeluMLP(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=cfg.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class ToyGelu(Llama):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__(cfg)
        for block in self.layers:
            block.mlp = GeluMLP(cfg)
        self.reset_parameters()

    def reset_parameters(self, seed: int | None = None) -> None:
        super().reset_parameters(seed)
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                nn.init.zeros_(p)

    def param_roles(self):
        roles = super().param_roles()
        return {k: ("bias" if k.endswith(".bias") else r) for k, r in roles.items()}


SPEC = ArchSpec(
    name=NAME, config=ToyConfig, model=ToyGelu,
    presets={"toy-test": Preset(dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                                     max_seq_len=128, vocab_size=256), params=74_432)},
    summary="test-only: Llama attention with an ungated GELU MLP with biases",
    hf=None, supports_packing=True, state_kind="kv_cache", test_preset="toy-test",
    test_variants={"biased": {}, "untied-nobias": dict(tie_embeddings=False, mlp_bias=False)},
)


def ensure_registered() -> None:
    register(SPEC)
