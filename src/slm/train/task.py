"""What a training method hands the one trainer: a `Task`, and the typed `Batch` its loader yields.

Decisions:
- `Task` is a base class, not a Protocol: the five methods every method must write (loader, count, tokens, loss,
  evaluate) raise until overridden, and the optional parts have working defaults (`step_metrics` -> {}, `aux_loss` ->
  the model's own `aux_losses()`, `close` -> nothing, `device` -> cpu until the first `loader` call). The trainer
  calls all of them unconditionally, so it never probes a task with getattr/hasattr and never learns which method
  it runs.
- `Batch` is one dataclass for every token batch (pretraining, SFT, KD, DPO, GRPO): aligned `input_ids`/`targets`
  (the loader did the one shift; IGNORE_INDEX = no loss) plus, for packed rows, `doc_ids`/`position_ids`. A method
  that needs more says so with a subclass next to its Task (DPO's `PairBatch`, KD's `KDBatch`, GRPO's
  `RolloutBatch`), so train/ knows none of them. Batches stay on the host until the task's `loss` moves them with
  `.to(device)` (every tensor field, whatever the subclass), as the tuples and dicts before it did.
- `aux_loss` returns already-weighted per-batch *means* (an MoE balance loss); the trainer scales each by the batch's
  target count before the global-target normalisation, so it reaches the gradient as the target-weighted mean over
  the step's micro-batches and ranks: unchanged when it is the same everywhere, whatever the accumulation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, TypeVar

import torch

from ..checkpoint import unwrap
from ..config import PhaseConfig
from ..models import CausalLM, IGNORE_INDEX
from ..runtime import DistInfo

B = TypeVar("B", bound="Batch")


@dataclass(kw_only=True)
class Batch:
    """Token rows a loss runs on; every tensor is (B, T) and lives on the host until `.to(device)`."""

    input_ids: torch.Tensor  # (B, T) token ids (pads where a row is shorter)
    targets: torch.Tensor  # (B, T) targets[b, t] is the id after input_ids[b, t]; IGNORE_INDEX = no loss
    doc_ids: torch.Tensor | None = None  # (B, T) packed rows: document index of each token, -1 = padding
    position_ids: torch.Tensor | None = None  # (B, T) packed rows: position of each token within its document

    @property
    def packed(self) -> bool:
        return self.doc_ids is not None

    def target_count(self) -> int:
        """Positions that carry a loss target."""
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self: B, device: torch.device | str, non_blocking: bool = False) -> B:
        """The same batch (same class) with every tensor field on `device`."""
        moved = {f.name: v.to(device, non_blocking=non_blocking) for f in dataclasses.fields(self)
                 if isinstance(v := getattr(self, f.name), torch.Tensor)}
        return dataclasses.replace(self, **moved)


class ResumableIterator(Protocol):
    def __iter__(self) -> Iterator[Any]: ...
    def __next__(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Task:
    """A training method for the one trainer. Subclasses write the five required methods; the rest is optional."""

    device: torch.device = torch.device("cpu")  # where `loss` puts batches; set by `loader` (and by the runner)

    # -- required ---------------------------------------------------------------------------------------------------
    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> ResumableIterator:
        """This rank's endless, resumable batch iterator for a curriculum phase (sets `self.device`)."""
        raise NotImplementedError

    def count(self, batch: Any) -> int:
        """Loss targets in a batch: the trainer divides the step's summed loss by their global total."""
        raise NotImplementedError

    def tokens(self, batch: Any) -> int:
        """Tokens a batch processes (throughput only)."""
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Any, loss_chunk: int) -> torch.Tensor:
        """The SUMMED loss of a batch (a scalar with grad) through `model` (possibly wrapped by DDP / compile)."""
        raise NotImplementedError

    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict:
        """Held-out metrics ({} when there is nothing to evaluate); the trainer keeps the lowest "loss" as best."""
        raise NotImplementedError

    # -- optional ---------------------------------------------------------------------------------------------------
    def step_metrics(self) -> dict[str, float]:
        """Method statistics of the micro-batches since the last call, logged with each optimizer step."""
        return {}

    def aux_loss(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Weighted auxiliary per-batch mean losses of the last `loss` call, by name (default: the model's own)."""
        return unwrap(model).aux_losses()

    def close(self) -> None:
        """Stop whatever the last `loader` started (prefetch threads); called after each phase and at the end."""
