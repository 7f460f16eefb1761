"""SLMS Flow configuration and presets: a Llama-family decoder whose layers alternate Gemma-style between local
(causal sliding window) and global (full causal) attention, each with its own RoPE base.

Layer i is global when i % global_every == global_every - 1 (SLMS: every 6th layer, i.e. layers 5, 11, 17 of 18),
otherwise local. A local layer attends to the last `window` tokens, itself included (query t sees keys t-window+1 ..
t) — the "sliding window of 128 tokens" SLMS describes and the convention of transformers' `sliding_window`. (SLMS's
own mask, (q - k) <= 128, lets 129 tokens through.) Parameters are exactly Llama's: windows and RoPE bases add none,
so `num_parameters` is the Llama closed form (flow-1b: 1,199,646,720, as SLMS's meta-device count).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SlmError
from ..llama.config import LlamaConfig
from ..registry import Preset


@dataclass(kw_only=True)
class FlowConfig(LlamaConfig):
    """Flow: Llama blocks with local sliding-window and periodic global attention layers."""

    arch: str = "flow"
    window: int = 128  # local layers attend to the last `window` tokens (itself included); SLMS uses 128
    global_every: int = 6  # layer i is global (full causal attention) when i % global_every == global_every - 1
    global_rope_theta: float = 1_000_000.0  # RoPE base of the global layers (local layers use rope_theta, 1e4)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.window <= 0:
            raise SlmError(f"--model.window={self.window}: must be >= 1 (tokens a local layer attends to)")
        if self.window > self.max_seq_len:
            raise SlmError(f"--model.window={self.window} is larger than --model.max_seq_len={self.max_seq_len}; "
                           f"use a window <= the context (or the llama arch for full attention everywhere)")
        if self.global_every <= 0:
            raise SlmError(f"--model.global_every={self.global_every}: must be >= 1 (1 = every layer global)")
        if self.global_rope_theta <= 0:
            raise SlmError(f"--model.global_rope_theta={self.global_rope_theta}: must be > 0")

    def is_global(self, layer: int) -> bool:
        return layer % self.global_every == self.global_every - 1

    def flops_per_token(self, seq_len: int) -> float:
        """6 * matmul weights (as Llama) plus attention: a global layer's queries see T/2 keys on average (the Llama
        accounting), a local layer's see min(t + 1, window), averaged over the sequence."""
        n_matmul = self.num_parameters() - self.vocab_size * self.d_model * (0 if self.tie_embeddings else 1)
        n_matmul -= self.n_layers * 2 * self.d_model + self.d_model
        w = min(self.window, seq_len)
        local_keys = (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len  # mean of min(t + 1, window), t < seq_len
        attn = 0.0
        for i in range(self.n_layers):
            attn += 12 * self.d_model * (seq_len / 2 if self.is_global(i) else local_keys)
        return 6 * n_matmul + attn


PRESETS: dict[str, Preset] = {
    # SLMS Flow-1B: d 2048, 18 layers (globals 5, 11, 17), 16/8 heads, SwiGLU 4d, vocab 32768, tied.
    "flow-1b": Preset(dict(d_model=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden=8192, vocab_size=32768,
                           max_seq_len=2048, window=128, global_every=6), params=1_199_646_720,
                      note="SLMS Flow-1B (g-hano/slms config.yaml)"),
    # CPU size: the quickstart's width with Flow's layer pattern (one global layer in 6, window 128) and SLMS's
    # 2,048-token context; vocab from the tokenizer.
    "flow-tiny": Preset(dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=2, ffn_hidden=1024, max_seq_len=2048,
                             window=128, global_every=6)),
    # Unit tests: windows shorter than the test sequences, a global layer in 2.
    "flow-test": Preset(dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=128,
                             vocab_size=256, window=4, global_every=2), params=90_432),
}
