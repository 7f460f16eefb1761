"""Model configuration and named presets.

A preset is just a dict of `ModelConfig` fields; recipes pick one by name (`model.preset: smollm2-135m`) and may
override any field. `count_parameters` is the closed-form count, so a preset's size can be checked without building
it (the 1B preset would take seconds and GBs to instantiate just to count).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import SlmError


@dataclass(kw_only=True)
class ModelConfig:
    """A Llama-family decoder: GQA attention with RoPE, RMSNorm, SwiGLU MLP, no biases."""

    preset: str = ""  # name of the preset these values came from ("" = custom); informational
    vocab_size: int = 0  # 0 = the tokenizer's vocab rounded up to a multiple of 64; else must be >= the tokenizer's
    d_model: int = 128  # residual stream width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads; d_model must divide evenly
    n_kv_heads: int = 0  # key/value heads for GQA; 0 = same as n_heads (plain multi-head attention)
    ffn_hidden: int = 0  # SwiGLU hidden width; 0 = 8/3 * d_model rounded up to a multiple of 64 (Llama's rule)
    rope_theta: float = 10000.0  # RoPE base; larger bases suit longer contexts (SmolLM2 uses 1e5)
    max_seq_len: int = 2048  # longest sequence the RoPE tables and KV cache are sized for
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # share input embedding and output head (saves vocab*d_model params; small models like it)
    qk_norm: bool = False  # RMSNorm on per-head queries and keys before RoPE (stabilises training at high lr)
    init_std: float = 0.02  # std of the normal init; residual output projections are scaled by 1/sqrt(2*n_layers)

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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # CPU demo size: 3.2M non-embedding params; trains to a readable Shakespeare pastiche in minutes on 2 cores.
    "tiny": dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=768, max_seq_len=512),
    # Unit tests: the STYLE.md "2 layers, 64 wide, vocab 256".
    "test": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128, vocab_size=256),
    "small-30m": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_hidden=1536, max_seq_len=1024),
    # HuggingFaceTB/SmolLM2-135M: 134,515,008 parameters with tied embeddings.
    "smollm2-135m": dict(d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_hidden=1536, vocab_size=49152,
                         rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
    # HuggingFaceTB/SmolLM2-360M: 361,821,120 parameters with tied embeddings.
    "smollm2-360m": dict(d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, ffn_hidden=2560, vocab_size=49152,
                         rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True),
    # SLMS "Flow" 1B: 1,199,646,720 parameters with tied embeddings.
    "flow-1b": dict(d_model=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden=8192, vocab_size=32768,
                    rope_theta=10000.0, max_seq_len=2048, tie_embeddings=True),
}


def preset_config(name: str, **overrides) -> ModelConfig:
    """Build the ModelConfig of a named preset, with field overrides applied on top."""
    if name not in PRESETS:
        raise SlmError(f"--model.preset: unknown preset '{name}'; choose one of {', '.join(sorted(PRESETS))}")
    values = {**PRESETS[name], **overrides, "preset": name}
    return ModelConfig(**values)


def with_vocab(cfg: ModelConfig, tokenizer_vocab: int, source: str = "the tokenizer") -> ModelConfig:
    """Fill vocab_size=0 from the tokenizer (rounded up to 64 for matmul-friendly shapes) or check it is large enough."""
    if cfg.vocab_size == 0:
        return dataclasses.replace(cfg, vocab_size=64 * -(-tokenizer_vocab // 64))
    if cfg.vocab_size < tokenizer_vocab:
        raise SlmError(f"--model.vocab_size={cfg.vocab_size} is smaller than {source}'s vocab ({tokenizer_vocab}); "
                       f"set --model.vocab_size=0 (auto) or >= {tokenizer_vocab}")
    return cfg


def count_parameters(cfg: ModelConfig) -> int:
    """Exact parameter count of `slm.model.llama.Transformer(cfg)`, in closed form."""
    d, hd = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_heads * hd + 2 * d * cfg.n_kv_heads * hd + cfg.n_heads * hd * d
    qk_norm = 2 * hd if cfg.qk_norm else 0
    mlp = 3 * d * cfg.ffn_hidden
    per_layer = attn + qk_norm + mlp + 2 * d
    embed = cfg.vocab_size * d
    head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
    return embed + cfg.n_layers * per_layer + d + head


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward): 6*N for the matmul weights plus attention scores.

    N excludes the input embedding (a gather, not a matmul) but includes the output head even when tied,
    following the PaLM/Chinchilla accounting used for MFU.
    """
    n_matmul = count_parameters(cfg) - cfg.vocab_size * cfg.d_model * (0 if cfg.tie_embeddings else 1)
    n_matmul -= cfg.n_layers * 2 * cfg.d_model + cfg.d_model  # norm weights are not matmuls
    attn = 6 * cfg.n_layers * cfg.d_model * seq_len  # QK^T and AV, causal halves it: 12*L*d*T/2
    return 6 * n_matmul + attn
