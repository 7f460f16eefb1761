"""Doge (SmallDoge) configuration and named presets.

A Doge decoder is a Llama-shaped stack with three changes (see `slm.models.doge.model`): a learnable per-channel
residual scale, Dynamic Mask Attention (a learned per-key bias, and top-`keep_window_size` key selection once the
keys outnumber the window), and optionally a CDMoE feed-forward (a dense shared SwiGLU expert plus `n_experts`
rank-1 experts picked by product-key routing). The numbers of the presets are SmallDoge's released shapes; their
parameter counts are exact (tested against the built model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import SlmError
from ..base import ModelConfig
from ..registry import Preset


@dataclass(kw_only=True)
class DogeConfig(ModelConfig):
    """A Doge decoder: GQA + RoPE + per-head q/k RMSNorm, Dynamic Mask Attention, residual scales, SwiGLU or CDMoE."""

    arch: str = "doge"
    n_heads: int = 4  # query heads; d_model must divide evenly
    n_kv_heads: int = 0  # key/value heads (GQA); 0 = same as n_heads. The dynamic mask is computed per kv head
    ffn_hidden: int = 0  # SwiGLU width of the MLP / the shared expert; 0 = 2 * d_model (SmallDoge's ratio)
    rope_theta: float = 10000.0  # RoPE base (SmallDoge: 1e4)
    norm_eps: float = 1e-6  # RMSNorm epsilon (SmallDoge: 1e-6)
    keep_window_size: int = 2048  # keys kept per (kv head, query) by the dynamic mask once there are more (top-k by dt)
    n_experts: int = 0  # rank-1 routed experts of CDMoE, a perfect square (sqrt(N) keys per half); 0 = dense MLP
    moe_top_k: int = 8  # experts each token uses (top-k of the N product-key sums); needs <= n_experts
    moe_aux_coef: float = 0.001  # weight of the Switch-style load-balancing loss added to the training loss

    def __post_init__(self) -> None:
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.ffn_hidden == 0:
            self.ffn_hidden = 2 * self.d_model
        checks = [
            (self.d_model > 0 and self.n_layers > 0 and self.vocab_size >= 0, "model",
             "d_model and n_layers must be > 0"),
            (self.n_heads > 0 and self.d_model % self.n_heads == 0, "model.n_heads",
             f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"),
            (self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads == 0, "model.n_kv_heads",
             f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}"),
            ((self.d_model // self.n_heads) % 2 == 0, "model.n_heads",
             f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE"),
            (self.max_seq_len > 0, "model.max_seq_len", "must be > 0"),
            (self.keep_window_size > 0, f"model.keep_window_size={self.keep_window_size}",
             "must be > 0 (keys kept per query; SmallDoge uses 2048)"),
            (self.n_experts >= 0 and math.isqrt(self.n_experts) ** 2 == self.n_experts,
             f"model.n_experts={self.n_experts}",
             f"must be a perfect square (product-key routing uses sqrt(N) keys per half), e.g. "
             f"{max(1, math.isqrt(max(self.n_experts, 0))) ** 2} or {(math.isqrt(max(self.n_experts, 0)) + 1) ** 2}; "
             f"0 = dense MLP"),
            (self.n_experts == 0 or 0 < self.moe_top_k <= self.n_experts, f"model.moe_top_k={self.moe_top_k}",
             f"must be in 1..n_experts={self.n_experts}"),
            (self.moe_aux_coef >= 0, f"model.moe_aux_coef={self.moe_aux_coef}", "must be >= 0"),
        ]
        for ok, flag, msg in checks:
            if not ok:
                raise SlmError(f"--{flag}: {msg}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_keys(self) -> int:
        """Product keys per half: sqrt(n_experts)."""
        return math.isqrt(self.n_experts)

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    def _attention_params(self) -> int:
        d, hd, kv = self.d_model, self.head_dim, self.n_kv_heads
        qkvo = 2 * d * self.n_heads * hd + 2 * d * kv * hd
        dynamic_mask = kv * hd * kv + kv  # dt_proj (kv*hd -> kv) and A (one per kv head)
        return qkvo + dynamic_mask + 2 * hd  # + q_norm, k_norm

    def _ffn_dense_params(self) -> int:
        """Matmul weights one token uses in the feed-forward: shared SwiGLU, router, its top-k rank-1 experts."""
        ffn = 3 * self.d_model * self.ffn_hidden
        if self.is_moe:
            ffn += 2 * self.n_keys * self.d_model + 2 * self.moe_top_k * self.d_model
        return ffn

    def num_parameters(self) -> int:
        """Exact parameter count of `slm.models.doge.Doge(self)`, in closed form."""
        d = self.d_model
        ffn = 3 * d * self.ffn_hidden + (2 * self.n_keys * d + 2 * self.n_experts * d if self.is_moe else 0)
        per_layer = self._attention_params() + ffn + 4 * d  # + 2 RMSNorms, 2 residual scales
        embed = self.vocab_size * d
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return embed + self.n_layers * per_layer + d + head

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (3x forward): 6 x the matmul weights a token actually uses (attention projections,
        dt_proj, the shared expert, the router and only its top-k routed experts, the output head even when tied)
        plus the attention scores. With keep_window_size < seq_len a query still scores every key (the selection
        masks, it does not skip), so the attention term uses seq_len."""
        per_layer = self._attention_params() - 2 * self.head_dim - self.n_kv_heads + self._ffn_dense_params()
        n_matmul = self.n_layers * per_layer + self.vocab_size * self.d_model
        attn = 6 * self.n_layers * self.n_heads * self.head_dim * seq_len  # QK^T and AV, causal halves 12*L*d*T
        return 6.0 * n_matmul + attn


_SMALLDOGE = dict(vocab_size=32768, tie_embeddings=True, max_seq_len=2048, keep_window_size=2048, rope_theta=10000.0)

PRESETS: dict[str, Preset] = {
    # Unit tests: 2 layers, 64 wide, vocab 256; a 12-key window: the selection fires in the
    # decode (17 tokens) and no-leak (24) invariants; the generic HF test (12 tokens) stays below it, because with A = 0
    # every dt ties and transformers breaks ties arbitrarily (test_doge.py checks parity above the window, A random).
    "doge-test": Preset(dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128,
                             vocab_size=256, keep_window_size=12), params=90_884),
    # CPU demo sizes (vocab from the tokenizer): the shape of tiny Llama, the Doge way.
    "doge-tiny": Preset(dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=768, max_seq_len=512,
                             keep_window_size=512)),
    "doge-tiny-moe": Preset(dict(d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=512, max_seq_len=512,
                                 keep_window_size=512, n_experts=256, moe_top_k=8)),
    # SmallDoge's released models (SmallDoge/Doge-20M ... Doge-320M): vocab 32768, tied.
    "doge-20m": Preset(dict(_SMALLDOGE, d_model=256, n_layers=8, n_heads=2, n_kv_heads=1, ffn_hidden=512),
                       params=13_118_728, note="SmallDoge/Doge-20M (13.1M)"),
    "doge-60m": Preset(dict(_SMALLDOGE, d_model=512, n_layers=16, n_heads=4, n_kv_heads=2, ffn_hidden=1024),
                       params=54_571_552, note="SmallDoge/Doge-60M (54.6M)"),
    "doge-160m": Preset(dict(_SMALLDOGE, d_model=768, n_layers=24, n_heads=6, n_kv_heads=3, ffn_hidden=1536),
                        params=152_676_168, note="SmallDoge/Doge-160M (152.7M)"),
    "doge-320m": Preset(dict(_SMALLDOGE, d_model=1024, n_layers=32, n_heads=8, n_kv_heads=4, ffn_hidden=2048),
                        params=335_750_272, note="SmallDoge/Doge-320M (335.8M)"),
    # SmallDoge's Doge-40M-MoE recipe: Llama-3 vocab (128256), 1024 rank-1 experts (32 keys per half), top-8.
    "doge-40m-moe": Preset(dict(_SMALLDOGE, vocab_size=128256, d_model=256, n_layers=8, n_heads=2, n_kv_heads=1,
                                ffn_hidden=768, n_experts=1024, moe_top_k=8),
                           params=43_461_896, note="SmallDoge Doge-40M-MoE recipe (43.5M)"),
}
