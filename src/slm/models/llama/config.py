"""Llama-family configuration and named presets.

A preset is a dict of `LlamaConfig` fields with its exact parameter count; recipes pick one by name
(`model.preset: smollm2-135m`) and may override any field. `num_parameters` is the closed form (checked against the
built model and the preset's count by the registry tests); `flops_per_token` is the MFU numerator.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SlmError
from ..base import ModelConfig
from ..registry import Preset


@dataclass(kw_only=True)
class LlamaConfig(ModelConfig):
    """A Llama-family decoder: GQA attention with RoPE, RMSNorm, SwiGLU MLP, no biases."""

    n_heads: int = 4  # query heads; d_model must divide evenly
    n_kv_heads: int = 0  # key/value heads for GQA; 0 = same as n_heads (plain multi-head attention)
    ffn_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * d_model rounded up to a multiple of 64 (Llama's rule)
    rope_theta: float = 10000.0  # RoPE base; larger bases suit longer contexts (SmolLM2 uses 1e5)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    qk_norm: bool = False  # RMSNorm on per-head queries and keys before RoPE (stabilises training at high lr)

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden == 0:
            self.ffn_hidden = 64 * -(-int(8 * self.d_model / 3) // 64)
        checks = [
            (self.d_model > 0 and self.n_layers > 0 and self.vocab_size >= 0, "d_model and n_layers must be > 0"),
            (self.n_heads > 0 and self.d_model % self.n_heads == 0, f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"),
            (self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}"),
            ((self.d_model // self.n_heads) % 2 == 0, f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE"),
            (self.max_seq_len > 0, "max_seq_len must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SlmError(f"--model: {msg}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def num_parameters(self) -> int:
        """Exact parameter count of `slm.models.llama.Llama(self)`, in closed form."""
        d, hd = self.d_model, self.head_dim
        attn = d * self.n_heads * hd + 2 * d * self.n_kv_heads * hd + self.n_heads * hd * d
        qk_norm = 2 * hd if self.qk_norm else 0
        mlp = 3 * d * self.ffn_hidden
        per_layer = attn + qk_norm + mlp + 2 * d
        embed = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return embed + self.n_layers * per_layer + d + head

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward): 6*N for the matmul weights plus attention scores.

        N excludes the input embedding (a gather, not a matmul) but includes the output head even when tied,
        following the PaLM/Chinchilla accounting used for MFU.
        """
        n_matmul = self.num_parameters() - self.vocab_size * self.d_model * (0 if self.tie_embeddings else 1)
        n_matmul -= self.n_layers * 2 * self.d_model + self.d_model  # norm weights are not matmuls
        attn = 6 * self.n_layers * self.d_model * seq_len  # QK^T and AV, causal halves it: 12*L*d*T/2
        return 6 * n_matmul + attn


PRESETS: dict[str, Preset] = {
    # CPU demo size: 3.2M non-embedding params; trains to a readable Shakespeare pastiche in minutes on 2 cores.
    "tiny": Preset(dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=768, max_seq_len=512)),
    # Unit tests: the STYLE.md "2 layers, 64 wide, vocab 256".
    "test": Preset(dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128,
                        vocab_size=256), params=90_432),
    "small-30m": Preset(dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden=1536, max_seq_len=1024)),
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters with tied embeddings.
    "smollm2-135m": Preset(dict(d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_hidden=1536, vocab_size=49152,
                                rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
                           params=134_515_008, note="HuggingFaceTB/SmolLM2-135M"),
    # HuggingFaceTB/SmolLM2-360M: 361,821,120 parameters with tied embeddings.
    "smollm2-360m": Preset(dict(d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, ffn_hidden=2560, vocab_size=49152,
                                rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
                           params=361_821_120, note="HuggingFaceTB/SmolLM2-360M"),
}
