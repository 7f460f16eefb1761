"""Generation on token ids: sampling rules and the batched decode engine (the terminal REPL is `slm.cli.repl`)."""

from .engine import DecodeEngine, fit_to_context, generate, generate_naive
from .sampling import (SamplingConfig, apply_repetition_penalty, apply_top_k, apply_top_p, sample_next,
                       seen_mask)

__all__ = ["SamplingConfig", "sample_next", "apply_repetition_penalty", "apply_top_k", "apply_top_p", "seen_mask",
           "DecodeEngine", "generate", "generate_naive", "fit_to_context"]
