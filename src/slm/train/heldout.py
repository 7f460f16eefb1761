"""Held-out metrics of a language model: loss, perplexity, bits per byte, top-1/top-5 next-token accuracy.

They live in train/ because training evaluates with them (pretraining's validation metrics); `slm.eval` re-exports
them for checkpoints, so eval depends on train and never the other way.

Decisions:
- Batches are already aligned (x, y) pairs, as the data loader produces them: `y[b, t]` is the target for the logits
  at `x[b, t]`. Nothing is shifted here; the loader does the one shift. Targets equal to `IGNORE_INDEX` (-100) count
  for nothing, neither in sums nor in token counts.
- The model returns hidden states (`return_hidden=True`) and logits are formed a chunk of rows at a time, sized so one
  chunk holds about 16M fp32 logits (64 MB). A 49k vocab at T=2048 would otherwise need 400 MB of logits per sequence.
  Only rows with a real target are projected at all.
- The output projection runs in fp32 from an fp32 copy of the head (made once per call), even when the body ran under
  autocast or in bf16: low-precision logits would shift the loss in the third decimal, which is the precision runs
  are compared at.
- Per-token CE is summed in float64 (Python floats across chunks), so millions of tokens add up without fp32
  round-off, and splitting the same data into different batches changes the result only at fp32 forward precision.
- Bits per byte: the sum of CE (nats) over targets whose UTF-8 byte length is > 0, divided by ln 2 times the sum of
  those byte lengths. Special tokens (byte length 0: BOS/EOS/chat markers) are left out of both, so bpb compares
  models with different tokenizers on the text itself. Their loss still counts in `loss`.
- The model is put in eval mode under `torch.no_grad()` and its previous training mode is restored afterwards, so
  calling this from inside a training loop is safe.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SlmError
from ..models import IGNORE_INDEX
from .parallel import full_value

LOGITS_PER_CHUNK = 1 << 24  # fp32 logits materialised at once (64 MB)


class _Sums:
    """Running float64 totals of one evaluation."""

    def __init__(self) -> None:
        self.nll = 0.0  # sum of CE over all real targets, nats
        self.tokens = 0
        self.correct = 0
        self.correct_top5 = 0
        self.byte_nll = 0.0  # sum of CE over targets with byte length > 0
        self.bytes = 0

    def add_chunk(self, logits: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor | None) -> None:
        """logits (N, V) fp32, targets (N,) all real (no IGNORE_INDEX)."""
        ce = F.cross_entropy(logits, targets, reduction="none").double()  # (N,)
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices  # (N, k), most likely first
        hit = top == targets[:, None]  # (N, k)
        self.nll += float(ce.sum())
        self.tokens += targets.numel()
        self.correct += int(hit[:, 0].sum())
        self.correct_top5 += int(hit.any(dim=-1).sum())
        if token_bytes is not None:
            nbytes = token_bytes[targets]  # (N,)
            counted = nbytes > 0
            self.byte_nll += float(ce[counted].sum())
            self.bytes += int(nbytes.sum())

    def result(self, with_bytes: bool) -> dict:
        loss = self.nll / self.tokens
        bpb = self.byte_nll / (math.log(2) * self.bytes) if with_bytes and self.bytes > 0 else None
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else float("inf"),
            "bpb": bpb,
            "accuracy": self.correct / self.tokens,
            "top5_accuracy": self.correct_top5 / self.tokens,
            "tokens": self.tokens,
            "bytes": self.bytes if with_bytes else None,
        }


def _token_bytes_tensor(token_bytes: np.ndarray | torch.Tensor | None, vocab_size: int,
                        device: torch.device) -> torch.Tensor | None:
    if token_bytes is None:
        return None
    table = torch.as_tensor(np.asarray(token_bytes) if not isinstance(token_bytes, torch.Tensor) else token_bytes)
    if table.dim() != 1 or table.numel() > vocab_size:
        raise SlmError(f"eval: token_bytes has shape {tuple(table.shape)} but the model's vocab is {vocab_size}; "
                       f"pass the byte-length table of the tokenizer the model was trained with")
    # A model vocab padded past the tokenizer's (rounded up to 64) has ids no text maps to: they carry 0 bytes.
    table = F.pad(table.long(), (0, vocab_size - table.numel()))
    return table.to(device=device)


def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             token_bytes: np.ndarray | torch.Tensor | None, *, max_batches: int | None = None,
             autocast_dtype: torch.dtype | None = None) -> dict:
    """Metrics over (x (B, T), y (B, T)) batches; y is aligned with x and uses IGNORE_INDEX for no target.

    Returns loss (nats/token), perplexity, bpb (None without `token_bytes`), accuracy, top5_accuracy, tokens, bytes.
    """
    param = next(model.parameters())
    device = param.device
    vocab_size = model.cfg.vocab_size
    table = _token_bytes_tensor(token_bytes, vocab_size, device)
    chunk_rows = max(1, LOGITS_PER_CHUNK // vocab_size)
    use_autocast = autocast_dtype is not None and autocast_dtype != param.dtype
    sums = _Sums()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            head = full_value(model.output_weight).float()  # (V, C); FSDP: gathered from the shards (all ranks)
            for i, (x, y) in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = x.to(device), y.to(device)
                autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if use_autocast
                            else contextlib.nullcontext())
                with autocast:
                    hidden = model(x, return_hidden=True)  # (B, T, C)
                real = y.reshape(-1) != IGNORE_INDEX  # (B*T,)
                hidden = hidden.reshape(-1, hidden.shape[-1])[real].float()  # (N, C) rows with a target
                targets = y.reshape(-1)[real]  # (N,)
                for s in range(0, targets.numel(), chunk_rows):
                    logits = F.linear(hidden[s:s + chunk_rows], head)  # (n, V) fp32
                    sums.add_chunk(logits, targets[s:s + chunk_rows], table)
    finally:
        model.train(was_training)
    if sums.tokens == 0:
        raise SlmError("eval: the eval data has no target tokens (empty split, or every label is -100); "
                       "check the eval split and max_batches")
    return sums.result(with_bytes=table is not None)
