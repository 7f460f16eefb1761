"""Generation on token ids: sampling rules, the batched decode engine, and the interactive REPL."""

from .engine import DecodeEngine, fit_to_context, generate, generate_naive
from .repl import TextStreamer, run_repl, stream_text
from .sampling import (SamplingConfig, apply_repetition_penalty, apply_top_k, apply_top_p, sample_next,
                       seen_mask)

__all__ = ["SamplingConfig", "sample_next", "apply_repetition_penalty", "apply_top_k", "apply_top_p", "seen_mask",
           "DecodeEngine", "generate", "generate_naive", "fit_to_context", "TextStreamer", "stream_text", "run_repl"]
