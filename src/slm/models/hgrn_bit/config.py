"""HGRN-Bit (MatMul-free LM / Simplified SLM's flat model) configuration and presets.

A block is x + HGRN(RMSNorm(x)), then x + MLP(RMSNorm(x)); every projection is a ternary BitLinear
(slm.models.layers.bitlinear), and the output head is a BitLinear too unless tied to the embedding. Counts are
exact (closed form, checked against the built model):

    block(d, I) = 4d^2 (i, f, g, o) + 3dI (gate|up, down) + 8d (4 BitLinear norms in the mixer, g_norm, the MLP's
                  gate|up norm, 2 block norms) + I (the down projection's norm) + conv(d)
    conv(d)     = 0 without the short convolution; else c (d K + [d, conv_bias]) with c = 1 shared, 2 per stream
    model       = V d (embedding) + L block + d (final norm) + [V d + d (BitLinear head and its norm), untied]

The optional short convolution (`use_short_conv`, slm.models.hgrn_bit.conv): a causal depthwise conv of `conv_size`
taps + SiLU, either one on the mixer input that i, f and g then read (`share_conv_kernel`, their default), or one on
each of the i and f projections (MatMul-free LM creates a third, unused, q conv there; it is not built here).

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
from .conv import ConvSpec


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
    use_short_conv: bool = False  # causal depthwise conv + SiLU before the HGRN gates (Simplified SLM: on from HEAD)
    conv_size: int = 4  # taps of the short convolution, the current input included (MatMul-free LM: 4)
    conv_bias: bool = False  # a bias per channel in the short convolution (MatMul-free LM: none)
    share_conv_kernel: bool = True  # True: one conv on the mixer input (i, f, g read it); False: one on i_proj, f_proj

    def __post_init__(self) -> None:
        checks = [(self.d_model > 0, "d_model", "must be > 0"),
                  (self.n_layers > 0, "n_layers", "must be > 0"),
                  (self.mlp_ratio > 0, "mlp_ratio", "must be > 0"),
                  (self.mlp_multiple > 0, "mlp_multiple", "must be > 0"),
                  (self.norm_eps > 0, "norm_eps", "must be > 0"),
                  (self.max_seq_len > 0, "max_seq_len", "must be > 0"),
                  (self.conv_size >= 2 or not self.use_short_conv, "conv_size",
                   "must be >= 2 with --model.use_short_conv (taps, the current input included)")]
        for ok, name, rule in checks:
            if not ok:
                raise SlmError(f"--model.{name}={getattr(self, name)!r}: {rule}")

    def hidden(self, d: int) -> int:
        return mlp_hidden(d, self.mlp_ratio, self.mlp_multiple)

    def head_params(self, d: int) -> int:
        """Embedding + output head (and its BitLinear norm when untied)."""
        return self.vocab_size * d + (0 if self.tie_embeddings else self.vocab_size * d + d)

    def conv_spec(self) -> ConvSpec | None:
        """The short convolution of every HGRN-Bit mixer, or None when off."""
        return ConvSpec(self.conv_size, self.conv_bias, self.share_conv_kernel) if self.use_short_conv else None

    def conv_params(self, d: int) -> int:
        """Parameters of one mixer's short convolution(s) at width d (module docstring)."""
        if not self.use_short_conv:
            return 0
        return (1 if self.share_conv_kernel else 2) * (d * self.conv_size + (d if self.conv_bias else 0))

    def hgrn_block_params(self, d: int) -> int:
        """One HGRN-Bit block of width d, short convolution included."""
        return block_params(d, self.hidden(d)) + self.conv_params(d)

    def num_parameters(self) -> int:
        d = self.d_model
        return self.head_params(d) + self.n_layers * self.hgrn_block_params(d) + d


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
