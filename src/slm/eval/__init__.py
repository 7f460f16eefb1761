"""Evaluation: held-out loss, perplexity, bits per byte and next-token accuracy, and a table to compare checkpoints."""

from .metrics import evaluate, format_table

__all__ = ["evaluate", "format_table"]
