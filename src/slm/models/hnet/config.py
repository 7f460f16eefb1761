"""H-Net-Bit (Simplified SLM's hierarchical model) configuration and presets.

Stage s < S (S = len(widths) - 1 outer stages) works at width widths[s]: `encoder_layers[s]` HGRN-Bit blocks, a
router and chunker, the inner stage (stage s + 1), a dechunker and `decoder_layers[s]` blocks. The innermost stage is
`main_pattern`: one character per layer in Simplified SLM's notation (`attention_layers_pattern`, e.g. "xaxaxaxa"):
`x` an HGRN-Bit block, `a` a sliding-window attention block (their "hybrid"; slm.models.hnet.attention). Widths may
grow inward; the difference is filled by a learned padding vector and sliced off on the way out.

Exact counts (closed form, checked against the built model): every stack is its blocks plus a final RMSNorm; an `x`
block is slm.models.hgrn_bit.config's (`hgrn_block_params`, its short convolution included), an `a` block at width d
with SwiGLU width I is 4 d^2 (fp Q, K, V, O) + 3 d I + 3 d (2 block norms, the gate|up norm) + I (the down norm);
stage s adds a router (W_q, W_k: 2 d^2, fp), the residual projection (d^2, fp) and the padding vector
(widths[s+1] - d); the model adds the embedding and the head as HGRN-Bit does.
- `hnet-bit-1stage` = Simplified SLM's hnet_bit_1stage @6f12bce (widths [256, 384], layout [[4, 0, 4], [8]], heads 1,
  expand 1, no conv, vocab 256): 21,355,776 parameters (they measured 21.4M by instantiation; docs say ~35M / ~15M).
- `hnet-bit-2stage` = hnet_bit_2stage @6f12bce ([512, 768, 1024], [[4, 0, 4], [4, 0, 4], [8]]): 189,667,840 (theirs
  189.7M; docs ~80M / ~50M / ~100M).
With slm's byte tokenizer (vocab 320, `--model.vocab_size=0`): 21,388,544 and 189,733,376.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import SlmError
from ..hgrn_bit.config import HGRNBitConfig
from ..registry import Preset


LAYER_KINDS = {"x": "HGRN-Bit block", "a": "sliding-window attention block"}  # main_pattern letters


@dataclass(kw_only=True)
class HNetConfig(HGRNBitConfig):
    """H-Net dynamic chunking on bytes with HGRN-Bit stages (d_model = widths[0], n_layers = all blocks; both set)."""

    arch: str = "hnet_bit"
    widths: list[int] = field(default_factory=lambda: [256, 384])  # width per stage, outermost (bytes) first
    encoder_layers: list[int] = field(default_factory=lambda: [4])  # HGRN-Bit blocks before chunking, per outer stage
    decoder_layers: list[int] = field(default_factory=lambda: [4])  # blocks after dechunking, per outer stage
    main_pattern: str = "xxxxxxxx"  # innermost stage, one char per layer: x = HGRN-Bit block, a = windowed attention
    attn_window: int = 64  # `a` layers: chunks a query sees, itself included (Simplified SLM: 64; t4 config: 128)
    attn_heads: int = 4  # `a` layers: heads; head dim = widths[-1] / attn_heads (Simplified SLM's configs: 4)
    rope_theta: float = 10000.0  # `a` layers: RoPE base over chunk positions (Simplified SLM: 10000)
    target_ratios: list[float] = field(default_factory=lambda: [2.5])  # N per outer stage: target inputs per chunk
    ratio_loss_weight: float = 0.03  # weight of the H-Net ratio loss of each stage (Simplified SLM: 0.03 when on)

    def __post_init__(self) -> None:
        stages = len(self.widths) - 1
        if stages < 1:
            raise SlmError(f"--model.widths={self.widths}: give at least two widths (bytes, then one per chunking "
                           f"stage), e.g. [256, 384]")
        for name in ("encoder_layers", "decoder_layers", "target_ratios"):
            if len(getattr(self, name)) != stages:
                raise SlmError(f"--model.{name}={getattr(self, name)}: needs {stages} entries (one per outer stage; "
                               f"--model.widths has {len(self.widths)} widths)")
        if any(w <= 0 for w in self.widths) or any(b < a for a, b in zip(self.widths, self.widths[1:])):
            raise SlmError(f"--model.widths={self.widths}: widths must be > 0 and non-decreasing inward")
        if any(n < 0 for n in self.encoder_layers + self.decoder_layers):
            raise SlmError("--model.encoder_layers / decoder_layers: layer counts must be >= 0")
        if not self.main_pattern:
            raise SlmError("--model.main_pattern='': give one character per innermost layer, e.g. 'xxxxxxxx'")
        if set(self.main_pattern) - set(LAYER_KINDS):
            bad = sorted(set(self.main_pattern) - set(LAYER_KINDS))
            kinds = ", ".join(f"'{k}' ({v})" for k, v in LAYER_KINDS.items())
            raise SlmError(f"--model.main_pattern={self.main_pattern!r}: unknown layer kind(s) {bad}; allowed: {kinds}")
        if "a" in self.main_pattern:
            self._check_attention()
        for i, r in enumerate(self.target_ratios):
            if not r > 1:
                raise SlmError(f"--model.target_ratios[{i}]={r}: must be > 1 (inputs per chunk; H-Net uses e.g. 2.5)")
        if self.ratio_loss_weight < 0:
            raise SlmError(f"--model.ratio_loss_weight={self.ratio_loss_weight}: must be >= 0")
        self.d_model = self.widths[0]
        self.n_layers = sum(self.encoder_layers) + sum(self.decoder_layers) + len(self.main_pattern)
        super().__post_init__()

    @property
    def n_stages(self) -> int:
        return len(self.widths) - 1

    def _check_attention(self) -> None:
        d, heads = self.widths[-1], self.attn_heads
        if self.attn_window < 1:
            raise SlmError(f"--model.attn_window={self.attn_window}: must be >= 1 (chunks a query sees, itself "
                           f"included)")
        if heads < 1 or d % heads or (d // heads) % 2:
            raise SlmError(f"--model.attn_heads={heads}: must divide the innermost width {d} into an even head dim "
                           f"(RoPE rotates pairs), e.g. 4")
        if self.rope_theta <= 0:
            raise SlmError(f"--model.rope_theta={self.rope_theta}: must be > 0")

    def attn_block_params(self, d: int) -> int:
        """One `a` block at width d (module docstring)."""
        hidden = self.hidden(d)
        return 4 * d * d + 3 * d * hidden + 3 * d + hidden

    def stack_params(self, d: int, n: int) -> int:
        return n * self.hgrn_block_params(d) + d

    def num_parameters(self) -> int:
        total = self.head_params(self.widths[0])
        for s in range(self.n_stages):
            d = self.widths[s]
            total += self.stack_params(d, self.encoder_layers[s]) + self.stack_params(d, self.decoder_layers[s])
            total += 3 * d * d + (self.widths[s + 1] - d)
        d = self.widths[-1]
        kinds = self.main_pattern
        return total + kinds.count("x") * self.hgrn_block_params(d) + kinds.count("a") * self.attn_block_params(d) + d


PRESETS: dict[str, Preset] = {
    "hnet-bit-1stage": Preset(dict(widths=[256, 384], encoder_layers=[4], decoder_layers=[4], main_pattern="x" * 8,
                                   target_ratios=[2.5], vocab_size=256, max_seq_len=4096), params=21_355_776,
                              note="Simplified SLM hnet_bit_1stage @6f12bce (they count 21.4M)"),
    "hnet-bit-2stage": Preset(dict(widths=[512, 768, 1024], encoder_layers=[4, 4], decoder_layers=[4, 4],
                                   main_pattern="x" * 8, target_ratios=[2.5, 2.5], vocab_size=256, max_seq_len=8192),
                              params=189_667_840, note="Simplified SLM hnet_bit_2stage @6f12bce (they count 189.7M)"),
    # CPU size on bytes (vocab from the tokenizer).
    "hnet-bit-tiny": Preset(dict(widths=[192, 256], encoder_layers=[2], decoder_layers=[2], main_pattern="xxxx",
                                 target_ratios=[2.5], max_seq_len=1024, mlp_multiple=64)),
    # Unit tests (a 2-stage variant overrides the lists).
    "hnet-bit-test": Preset(dict(widths=[32, 48], encoder_layers=[1], decoder_layers=[1], main_pattern="xx",
                                 target_ratios=[2.0], vocab_size=256, max_seq_len=128, mlp_multiple=32),
                           params=103_264),
}
