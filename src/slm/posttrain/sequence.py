"""Shared machinery of the post-training tasks: a resumable example loader, padded and packed batches, the packed
(document-masked) forward pass, chunked per-token log-probabilities and running statistics.

Decisions:
- Loader order is a pure function of (seed, epoch): `torch.randperm` seeded with `seed * 1000003 + epoch`, like
  `slm.data.loader`. The unit of an epoch is a *row*: one example when padding, a greedy run of examples when packing.
  Global batch k is `batch_size * world_size` consecutive rows; rank r takes its slice. The whole state is
  (epoch, cursor), so resume needs no replay and is exact.
- Padding is per batch, to the longest row (not to seq_len): small SFT batches of short chats waste far less compute.
  Right padding is exact under causal attention (real tokens never see the pads) and pads carry no loss.
- Packing concatenates whole examples, never splitting one, and keeps them apart with a block-diagonal causal mask and
  per-document RoPE positions (`CausalLM.forward(doc_ids=, position_ids=)`), so the packed loss equals the unpacked
  loss (tested); it goes through the model's own forward, so it works under DDP and torch.compile too.
- Per-token log-probs (DPO, GRPO) are computed from hidden states in row chunks under activation checkpointing, so a
  49k-vocab model never holds (B, T, V) fp32 logits for backward — the same reason `chunked_cross_entropy` exists.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..errors import SlmError
from ..models import IGNORE_INDEX
from ..checkpoint import unwrap
from ..train.task import Batch

Row = list[int]  # example indices in one row


class RowLoader:
    """Resumable, rank-aware iterator of batches built from rows of example indices."""

    def __init__(self, n_items: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 plan: Callable[[list[int]], list[Row]] | None = None, collate: Callable[[list[Row]], Any]) -> None:
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.plan = plan or (lambda order: [[i] for i in order])
        self.collate = collate
        self.epoch, self.cursor = 0, 0
        self._rows: list[Row] | None = None
        self._rows_epoch = -1

    def _epoch_rows(self) -> list[Row]:
        if self._rows_epoch != self.epoch:
            gen = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
            self._rows = self.plan(torch.randperm(self.n_items, generator=gen).tolist())
            self._rows_epoch = self.epoch
            if len(self._rows) < self.batch_size * self.world_size:
                raise SlmError(f"{len(self._rows)} training rows cannot fill one global batch of "
                               f"{self.batch_size * self.world_size}; lower --train.batch_size or add data")
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        rows = self._epoch_rows()
        glob = self.batch_size * self.world_size
        if self.cursor + glob > len(rows):
            self.epoch, self.cursor = self.epoch + 1, 0
            rows = self._epoch_rows()
        start = self.cursor + self.rank * self.batch_size
        batch = rows[start:start + self.batch_size]
        self.cursor += glob
        return self.collate(batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def pack_rows(lengths: Sequence[int], order: list[int], capacity: int) -> list[Row]:
    """Greedy packing in `order`: each row holds whole examples whose lengths sum to <= capacity."""
    rows: list[Row] = []
    row: Row = []
    used = 0
    for i in order:
        n = lengths[i]
        if row and used + n > capacity:
            rows.append(row)
            row, used = [], 0
        row.append(i)
        used += n
    if row:
        rows.append(row)
    return rows


def shift_example(ids: Sequence[int], mask: Sequence[bool]) -> tuple[list[int], list[int]]:
    """(inputs, aligned targets): targets are the next ids, IGNORE_INDEX where the next id is not trained."""
    x = list(ids[:-1])
    y = [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    return x, y


def pad_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pad (inputs, targets) pairs to the longest: input_ids (B, T) with pad_id, targets (B, T) with
    IGNORE_INDEX."""
    width = max(len(x) for x, _ in seqs)
    x_out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    y_out = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for r, (x, y) in enumerate(seqs):
        x_out[r, :len(x)] = torch.tensor(x, dtype=torch.long)
        y_out[r, :len(y)] = torch.tensor(y, dtype=torch.long)
    return Batch(input_ids=x_out, targets=y_out)


def packed_batch(rows: list[list[tuple[list[int], list[int]]]], width: int, pad_id: int) -> Batch:
    """Rows of several (inputs, targets) documents -> a packed Batch: doc_ids (document index, -1 = padding) and
    position_ids (restarting at 0 in each document)."""
    B = len(rows)
    x = torch.full((B, width), pad_id, dtype=torch.long)
    y = torch.full((B, width), IGNORE_INDEX, dtype=torch.long)
    doc = torch.full((B, width), -1, dtype=torch.long)
    pos = torch.zeros((B, width), dtype=torch.long)
    for r, docs in enumerate(rows):
        at = 0
        for d, (xi, yi) in enumerate(docs):
            n = len(xi)
            x[r, at:at + n] = torch.tensor(xi)
            y[r, at:at + n] = torch.tensor(yi)
            doc[r, at:at + n] = d
            pos[r, at:at + n] = torch.arange(n)
            at += n
        pos[r, at:] = torch.arange(width - at)  # pads: harmless positions, attending only to pads
    return Batch(input_ids=x, targets=y, doc_ids=doc, position_ids=pos)


def batch_hidden(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Final normalised hidden states (B, T, C) of a padded batch, or of packed rows with document masking and
    per-document positions. `batch` must already be on the model's device."""
    if batch.packed:
        return model(batch.input_ids, doc_ids=batch.doc_ids, position_ids=batch.position_ids, return_hidden=True)
    return model(batch.input_ids, return_hidden=True)


def _target_logprobs(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, w).float()  # (n, V)
    picked = logits.gather(-1, t.clamp(min=0)[:, None]).squeeze(-1)
    return (picked - logits.logsumexp(-1)) * (t != IGNORE_INDEX)


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 4096
                   ) -> torch.Tensor:
    """hidden (B, T, C), weight (V, C), targets (B, T) -> log p(target) (B, T) in fp32, 0 at IGNORE_INDEX."""
    B, T, C = hidden.shape
    h, t = hidden.reshape(-1, C), targets.reshape(-1)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    parts = []
    for s in range(0, h.shape[0], chunk):
        if need_grad:
            parts.append(checkpoint(_target_logprobs, h[s:s + chunk], weight, t[s:s + chunk], use_reentrant=False))
        else:
            parts.append(_target_logprobs(h[s:s + chunk], weight, t[s:s + chunk]))
    return torch.cat(parts).view(B, T)


def sequence_logprobs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per-token log-probs (B, T) of targets y under `model` for padded rows x (B, T)."""
    hidden = model(x, return_hidden=True)
    return token_logprobs(hidden, unwrap(model).output_weight, y, chunk)


class RunningStats:
    """Weighted running means of named training statistics, kept twice: read (and reset) at each eval, and per
    optimizer step by `Task.step_metrics` (which the trainer logs with every step)."""

    def __init__(self) -> None:
        self.buckets: dict[str, tuple[dict[str, float], dict[str, float]]] = {
            b: (defaultdict(float), defaultdict(float)) for b in ("eval", "step")}

    def add(self, name: str, value: float, weight: float = 1.0) -> None:
        for sums, weights in self.buckets.values():
            sums[name] += float(value) * weight
            weights[name] += weight

    def pop(self, prefix: str = "train_", bucket: str = "eval") -> dict[str, float]:
        sums, weights = self.buckets[bucket]
        out = {f"{prefix}{k}": sums[k] / weights[k] for k in sums if weights[k] > 0}
        sums.clear()
        weights.clear()
        return out
