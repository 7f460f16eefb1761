"""Supervised fine-tuning as a `Task` for the one trainer: chat-rendered conversations, loss on assistant tokens only.

Decisions:
- Conversations are rendered and masked once, up front (`slm.tokenizer.chat_template`), so a bad example fails
  before step 1 and every step is pure tensor work.
- The loss is the SUMMED next-token cross-entropy over assistant tokens, and `count` is the number of those tokens, so
  the trainer's normalisation gives the per-token mean over the whole global batch (TRL's default too). Short and
  long replies then weigh by their tokens, and grad accumulation equals a larger batch exactly.
- Two batch layouts, both exact and both a `Batch`: padded (rows padded to the longest in the batch) and packed
  (`posttrain.packing`: rows of up to seq_len tokens holding several whole conversations, kept apart by document
  masking). Packing wastes no compute on pads; padding needs nothing from the model. See `slm.posttrain.sequence`.
- Evaluation is the per-assistant-token loss and perplexity on held-out conversations (padded; no grad).
"""

from __future__ import annotations

import math

import torch

from ..config import PhaseConfig, RunConfig
from ..models import CausalLM, IGNORE_INDEX, chunked_cross_entropy
from ..checkpoint import unwrap
from ..runtime import DistInfo
from ..train.task import Batch, Task
from .data import Example
from .sequence import RowLoader, batch_hidden, pack_rows, packed_batch, pad_batch, shift_example


class SFTTask(Task):
    """Assistant-only cross-entropy on chat examples, padded or packed."""

    def __init__(self, train: list[Example], val: list[Example], cfg: RunConfig, *, pad_id: int,
                 packing: bool = False, autocast_dtype: torch.dtype | None = None) -> None:
        self.train_examples, self.val_examples = train, val
        self.cfg, self.pad_id, self.packing = cfg, pad_id, packing
        self.autocast_dtype = autocast_dtype
        self.device = torch.device("cpu")
        self._shifted = [shift_example(e.ids, e.mask) for e in train]

    # -- batches --------------------------------------------------------------------------------------------------
    def collate_padded(self, rows: list[list[int]]) -> Batch:
        return pad_batch([self._shifted[i] for r in rows for i in r], self.pad_id)

    def collate_packed(self, rows: list[list[int]], width: int) -> Batch:
        return packed_batch([[self._shifted[i] for i in r] for r in rows], width, self.pad_id)

    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> RowLoader:
        self.device = dist.device
        if not self.packing:
            return RowLoader(len(self.train_examples), phase.batch_size, seed=seed, rank=dist.rank,
                             world_size=dist.world_size, collate=self.collate_padded)
        lengths = [len(x) for x, _ in self._shifted]
        return RowLoader(len(self.train_examples), phase.batch_size, seed=seed, rank=dist.rank,
                         world_size=dist.world_size, plan=lambda order: pack_rows(lengths, order, phase.seq_len),
                         collate=lambda rows: self.collate_packed(rows, phase.seq_len))

    def count(self, batch: Batch) -> int:
        return batch.target_count()

    def tokens(self, batch: Batch) -> int:
        if batch.packed:
            return int((batch.doc_ids >= 0).sum())
        return int((batch.input_ids != self.pad_id).sum())

    # -- loss -----------------------------------------------------------------------------------------------------
    def hidden(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(final hidden (B, T, C), aligned targets (B, T)) of a padded or packed batch, on the task's device."""
        b = batch.to(self.device)
        return batch_hidden(model, b), b.targets

    def loss(self, model: torch.nn.Module, batch: Batch, loss_chunk: int) -> torch.Tensor:
        if not batch.packed:
            b = batch.to(self.device)
            return model(b.input_ids, targets=b.targets, loss_chunk=loss_chunk)
        hidden, y = self.hidden(model, batch)
        return chunked_cross_entropy(hidden, unwrap(model).output_weight, y, chunk=loss_chunk, reduction="sum")

    # -- eval -----------------------------------------------------------------------------------------------------
    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict:
        if not self.val_examples:
            return {}
        bs = self.cfg.eval.batch_size
        shifted = [shift_example(e.ids, e.mask) for e in self.val_examples]
        total, n = 0.0, 0
        was_training = model.training
        model.eval()
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else None
        try:
            with torch.no_grad():
                for b, s in enumerate(range(0, len(shifted), bs)):
                    if max_batches and b >= max_batches:
                        break
                    batch = pad_batch(shifted[s:s + bs], self.pad_id).to(self.device)
                    x, y = batch.input_ids, batch.targets
                    if autocast is not None:
                        with autocast:
                            total += float(model(x, targets=y, loss_chunk=self.cfg.train.loss_chunk))
                    else:
                        total += float(model(x, targets=y, loss_chunk=self.cfg.train.loss_chunk))
                    n += int((y != IGNORE_INDEX).sum())
        finally:
            model.train(was_training)
        loss = total / max(n, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": n}
