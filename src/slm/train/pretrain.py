"""Next-token pretraining as a `Task` for the one trainer: packed token rows in, summed cross-entropy out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import PhaseConfig, RunConfig
from ..data.loader import BatchLoader, TokenDataset, iter_eval_batches
from ..eval.metrics import evaluate
from ..models import CausalLM, IGNORE_INDEX
from ..runtime import DistInfo


class PretrainTask:
    def __init__(self, dataset: TokenDataset, token_bytes: np.ndarray | None, cfg: RunConfig,
                 autocast_dtype: torch.dtype | None = None) -> None:
        self.dataset = dataset
        self.token_bytes = token_bytes
        self.cfg = cfg
        self.autocast_dtype = autocast_dtype
        self.device = torch.device("cpu")
        if cfg.model.vocab_size:
            dataset.check_vocab(cfg.model.vocab_size)

    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> BatchLoader:
        self.device = dist.device
        return BatchLoader(self.dataset, "train", phase.seq_len, phase.batch_size, seed=seed, rank=dist.rank,
                           world_size=dist.world_size)

    def count(self, batch: Any) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def tokens(self, batch: Any) -> int:
        return batch[0].numel()

    def loss(self, model: torch.nn.Module, batch: Any, loss_chunk: int) -> torch.Tensor:
        x, y = (t.to(self.device, non_blocking=True) for t in batch)
        return model(x, targets=y, loss_chunk=loss_chunk)

    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict:
        if self.dataset.tokens("val") <= seq_len:
            return {}
        batches = ((x.to(self.device), y.to(self.device)) for x, y in
                   iter_eval_batches(self.dataset, "val", seq_len, self.cfg.eval.batch_size))
        return evaluate(model, batches, self.token_bytes, max_batches=max_batches or None,
                        autocast_dtype=self.autocast_dtype)
