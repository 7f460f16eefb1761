"""Turning next-token logits into token ids: repetition penalty, temperature, top-k, top-p, then a draw.

Decisions:
- The order is fixed (penalty -> temperature -> top-k -> top-p -> sample), the one used by HF transformers and
  llama.cpp's defaults, so a setting means the same thing here as there. The penalty comes first because it edits raw
  logits (CTRL's rule is defined on them); top-p comes after temperature, so it cuts the distribution you sample from.
- Everything is vectorised over the batch: one sort for top-p, one `topk` for top-k, one `multinomial` draw. Filtered
  tokens get -inf logits, so the final softmax renormalises over the survivors for free.
- Randomness comes only from the `torch.Generator` passed in, never from the global RNG, so a seed reproduces a run
  even when other code draws random numbers in between.
- `temperature == 0` means greedy (argmax after the penalty); top-k/top-p cannot change an argmax, so they are skipped.
- The penalty's "already seen" set is a (B, V) bool mask. Keeping the mask (not the history) makes each decode step
  O(V) instead of O(sequence length); a (B, L) id history is accepted too and converted, which the naive reference
  path uses.
"""

from __future__ import annotations

import torch

from ..config import SamplingConfig


def seen_mask(history: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Token history (B, L) of ids (negative = padding, ignored) -> (B, V) bool mask of ids that occur in each row."""
    mask = torch.zeros(history.shape[0], vocab_size + 1, dtype=torch.bool, device=history.device)
    # Padding goes to an extra column that is dropped, so no boolean indexing (and no host sync) is needed.
    idx = torch.where(history < 0, vocab_size, history)
    mask.scatter_(1, idx, True)
    return mask[:, :vocab_size]


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL penalty on logits (B, V) for tokens where `seen` (B, V) is True: positive / penalty, negative * penalty."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep exactly the k largest logits per row (B, V); the rest become -inf. k = 0 or k >= V is a no-op."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    keep_idx = logits.topk(k, dim=-1).indices  # (B, k)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, keep_idx, True)
    return logits.masked_fill(~keep, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep, per row of logits (B, V), the smallest set of most likely tokens whose probability mass is >= p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    # A token is needed only while the tokens before it have not yet reached p. The first token's mass_before is
    # exactly 0 < p, so at least one token always survives.
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None,
                seen: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row: logits (B, V) -> ids (B,) (long, same device).

    `seen` is a (B, V) bool mask or a (B, L) id history (negative = padding) of tokens the repetition penalty applies
    to; it is ignored when `cfg.repetition_penalty == 1`.
    """
    logits = logits.float()
    if cfg.repetition_penalty != 1.0 and seen is not None:
        if seen.dtype != torch.bool:
            seen = seen_mask(seen, logits.shape[-1])
        logits = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits / cfg.temperature
    logits = apply_top_k(logits, cfg.top_k)
    logits = apply_top_p(logits, cfg.top_p)
    probs = logits.softmax(dim=-1)  # (B, V); filtered tokens have probability exactly 0
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
