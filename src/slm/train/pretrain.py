"""Next-token pretraining as a `Task` for the one trainer: packed token rows in, summed cross-entropy out.

`slm.data.loader.BatchLoader` (below train/, so it cannot know `Batch`) yields (x, y) tensor pairs; `TokenBatches`
turns each into a `Batch` and passes the loader's resume state and `close` through, so the rows, their order and the
resume positions are exactly the data loader's.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..config import PhaseConfig, RunConfig
from ..data.loader import BatchLoader, TokenDataset, iter_eval_batches
from ..models import CausalLM
from ..runtime import DistInfo
from .heldout import evaluate
from .task import Batch, Task


class TokenBatches:
    """A `BatchLoader` whose batches are `Batch`es."""

    def __init__(self, loader: BatchLoader) -> None:
        self.loader = loader

    def __iter__(self) -> TokenBatches:
        return self

    def __next__(self) -> Batch:
        x, y = next(self.loader)
        return Batch(input_ids=x, targets=y)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)

    def close(self) -> None:
        self.loader.close()


class PretrainTask(Task):
    def __init__(self, dataset: TokenDataset, token_bytes: np.ndarray | None, cfg: RunConfig,
                 autocast_dtype: torch.dtype | None = None) -> None:
        self.dataset = dataset
        self.token_bytes = token_bytes
        self.cfg = cfg
        self.autocast_dtype = autocast_dtype
        self.device = torch.device("cpu")
        self._loader: TokenBatches | None = None
        if cfg.model.vocab_size:
            dataset.check_vocab(cfg.model.vocab_size)

    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> TokenBatches:
        self.device = dist.device
        self._loader = TokenBatches(BatchLoader(self.dataset, "train", phase.seq_len, phase.batch_size, seed=seed,
                                                rank=dist.rank, world_size=dist.world_size))
        return self._loader

    def close(self) -> None:
        if self._loader is not None:
            self._loader.close()  # its prefetch thread
            self._loader = None

    def count(self, batch: Batch) -> int:
        return batch.target_count()

    def tokens(self, batch: Batch) -> int:
        return batch.input_ids.numel()

    def loss(self, model: torch.nn.Module, batch: Batch, loss_chunk: int) -> torch.Tensor:
        b = batch.to(self.device, non_blocking=True)
        return model(b.input_ids, targets=b.targets, loss_chunk=loss_chunk)

    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int, progress: bool = False) -> dict:
        """Held-out metrics on the val split; `progress` shows a bar (the final eval of a run takes a minute)."""
        if self.dataset.tokens("val") <= seq_len:
            return {}
        batch_size = self.cfg.eval.batch_size
        batches = ((x.to(self.device), y.to(self.device)) for x, y in
                   iter_eval_batches(self.dataset, "val", seq_len, batch_size))
        total = -(-self.dataset.num_rows("val", seq_len) // batch_size)
        with tqdm(total=min(total, max_batches) if max_batches else total, desc="final eval", unit="batch",
                  dynamic_ncols=True, leave=False, disable=not progress) as bar:
            return evaluate(model, _counted(batches, bar), self.token_bytes, max_batches=max_batches or None,
                            autocast_dtype=self.autocast_dtype)


def _counted(items: Iterator[Any], bar: tqdm) -> Iterator[Any]:
    """`items`, one bar step as each is taken."""
    for item in items:
        yield item
        bar.update(1)
