"""SLMS Pulse configuration and presets: Flow with leaky integrate-and-fire neurons on the attention and MLP outputs.

Per block, 6 scalars on top of Flow: two LIF decay rates beta (learnable, init 0.95), two output scales (init 1) and
two residual gates (init 1). pulse-1b = flow-1b + 18 x 6 = 1,199,646,828 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...errors import SlmError
from ..flow.config import FlowConfig
from ..registry import Preset


@dataclass(kw_only=True)
class PulseConfig(FlowConfig):
    """Pulse: Flow whose attention and MLP outputs pass through rate-coded LIF neurons."""

    arch: str = "pulse"
    lif_steps: int = 3  # LIF time steps per token (SLMS uses 3); the rate has lif_steps + 1 levels
    lif_beta: float = 0.95  # initial membrane decay (learnable, clamped to [0, 1])
    lif_threshold: float = 1.0  # firing threshold theta (reset by subtraction)
    surrogate: Literal["fast_sigmoid", "arctan"] = "fast_sigmoid"  # surrogate gradient of the spike
    surrogate_slope: float = 25.0  # slope k of the surrogate (snnTorch's default for fast_sigmoid)

    def __post_init__(self) -> None:
        super().__post_init__()
        from ...choices import check_choices  # the one place Literal choices are checked

        check_choices(self, "model")
        checks = [(self.lif_steps >= 1, "lif_steps", "must be >= 1 (time steps per token)"),
                  (0.0 <= self.lif_beta <= 1.0, "lif_beta", "must be in [0, 1]"),
                  (self.lif_threshold > 0, "lif_threshold", "must be > 0"),
                  (self.surrogate_slope > 0, "surrogate_slope", "must be > 0")]
        for ok, name, rule in checks:
            if not ok:
                raise SlmError(f"--model.{name}={getattr(self, name)!r}: {rule}")

    def num_parameters(self) -> int:
        return super().num_parameters() + 6 * self.n_layers


PRESETS: dict[str, Preset] = {
    "pulse-1b": Preset(dict(d_model=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden=8192, vocab_size=32768,
                            max_seq_len=2048, window=128, global_every=6, lif_steps=3), params=1_199_646_828,
                       note="SLMS Pulse-1B: Flow-1B + 6 scalars per block"),
    "pulse-tiny": Preset(dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=2, ffn_hidden=1024, max_seq_len=2048,
                              window=128, global_every=6, lif_steps=3)),
    "pulse-test": Preset(dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128,
                              vocab_size=256, window=4, global_every=2, lif_steps=3), params=90_444),
}
