"""HGRN-Bit (MatMul-free LM / Simplified SLM's flat model) configuration and presets.

A block is x + HGRN(RMSNorm(x)), then x + MLP(RMSNorm(x)); every projection is a ternary BitLinear
(slm.models.layers.bitlinear), and the output head is a BitLinear too unless tied to the embedding. Counts are
exact (closed form, checked against the built model):

    block(d, I) = 4d^2 (i, f, g, o) + 3dI (gate|up, down) + 8d (4 BitLinear norms in the mixer, g_norm, the MLP's
                  gate|up norm, 2 block norms) + I (the down projection's norm)
    model       = V d (embedding) + L block + d (final norm) + [V d + d (BitLinear head and its norm), untied]

Simplified SLM's flat `slm_base.json` (d 512, 6 layers, heads 1, expand 1, no short conv, byte vocab 256, SwiGLU
width 256 * ceil(512 * 4 * 2/3 / 256) = 1536) is the `simplified-slm` preset: 20,744,192 parameters (their docs say
"~25M" and "~50M"). slm's byte tokenizer puts its specials after the 256 bytes (ids 256..260), so a model trained
with it has vocab 320 (`--model.vocab_size=0`): 20,809,728 parameters at that size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import SlmError
from ..base import ModelConfig
from ..registry import Preset


def mlp_hidden(d: int, ratio: float, multiple: int) -> int:
    """SwiGLU width: `multiple` * ceil(d * ratio * 2/3 / multiple) (MatMul-free LM's rounding)."""
    return multiple * math.ceil(d * ratio * 2 / 3 / multiple)


def block_params(d: int, hidden: int) -> int:
    """Parameters of one HGRN-Bit block of width d with SwiGLU width `hidden` (module docstring)."""
    return 4 * d * d + 3 * d * hidden + 8 * d + hidden


@dataclass(kw_only=True)
class HGRNBitConfig(ModelConfig):
    """HGRN-Bit: HGRN token mixer + SwiGLU MLP, all projections ternary BitLinear (fp32 latent weights)."""

    arch: str = "hgrn_bit"
    tie_embeddings: bool = False  # False: ternary BitLinear head (Simplified SLM); True: fp head = embedding
    mlp_ratio: float = 4.0  # SwiGLU width = mlp_multiple * ceil(d * mlp_ratio * 2/3 / mlp_multiple) (1536 at d 512)
    mlp_multiple: int = 256  # rounding of the SwiGLU width (MatMul-free LM: 256)
    norm_eps: float = 1e-6  # RMSNorm epsilon (Simplified SLM: 1e-6)

    def __post_init__(self) -> None:
        checks = [(self.d_model > 0, "d_model", "must be > 0"),
                  (self.n_layers > 0, "n_layers", "must be > 0"),
                  (self.mlp_ratio > 0, "mlp_ratio", "must be > 0"),
                  (self.mlp_multiple > 0, "mlp_multiple", "must be > 0"),
                  (self.norm_eps > 0, "norm_eps", "must be > 0"),
                  (self.max_seq_len > 0, "max_seq_len", "must be > 0")]
        for ok, name, rule in checks:
            if not ok:
                raise SlmError(f"--model.{name}={getattr(self, name)!r}: {rule}")

    def hidden(self, d: int) -> int:
        return mlp_hidden(d, self.mlp_ratio, self.mlp_multiple)

    def head_params(self, d: int) -> int:
        """Embedding + output head (and its BitLinear norm when untied)."""
        return self.vocab_size * d + (0 if self.tie_embeddings else self.vocab_size * d + d)

    def num_parameters(self) -> int:
        d = self.d_model
        return self.head_params(d) + self.n_layers * block_params(d, self.hidden(d)) + d


PRESETS: dict[str, Preset] = {
    # Simplified SLM's flat model (configs/slm_base.json @6f12bce): d 512, 6 layers, byte vocab 256, untied.
    "simplified-slm": Preset(dict(d_model=512, n_layers=6, vocab_size=256, max_seq_len=2048), params=20_744_192,
                             note="Simplified SLM slm_base.json (their docs: ~25M / ~50M)"),
    # CPU size on bytes (vocab from the tokenizer: 320 with slm's byte tokenizer).
    "hgrn-bit-tiny": Preset(dict(d_model=256, n_layers=4, max_seq_len=1024, mlp_multiple=64)),
    # Unit tests.
    "hgrn-bit-test": Preset(dict(d_model=64, n_layers=2, vocab_size=256, max_seq_len=128, mlp_multiple=64),
                            params=140_800),
}
