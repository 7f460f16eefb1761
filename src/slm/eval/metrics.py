"""Comparing evaluation results: an aligned text table of held-out metrics.

The metrics themselves (loss, perplexity, bpb, accuracy) are `slm.train.heldout.evaluate`, re-exported here: training
needs them for its validation metrics and train must not import eval, so they live below it.
"""

from __future__ import annotations

from ..train.heldout import evaluate

__all__ = ["evaluate", "format_table"]


def _fmt(value: float | int | None, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_table(rows: list[tuple[str, dict]]) -> str:
    """Aligned text table of `evaluate` results, one row per (name, metrics): name loss ppl bpb acc top5 tokens."""
    header = ["name", "loss", "ppl", "bpb", "acc", "top5", "tokens"]
    lines = [header]
    for name, m in rows:
        lines.append([
            name,
            _fmt(m.get("loss"), ".4f"),
            _fmt(m.get("perplexity"), ".2f"),
            _fmt(m.get("bpb"), ".4f"),
            _fmt(m.get("accuracy"), ".4f"),
            _fmt(m.get("top5_accuracy"), ".4f"),
            _fmt(m.get("tokens"), ",d"),
        ])
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        out.append("  ".join(cells))
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
