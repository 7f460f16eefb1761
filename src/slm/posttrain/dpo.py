"""Direct Preference Optimization (Rafailov et al., 2023) as a `Task`: sigmoid loss against a frozen reference.

For a pair (prompt x, chosen y_w, rejected y_l), with log-probabilities summed over completion tokens only,
    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]
    loss = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)        (eps = label smoothing, 0 = plain DPO)
The implicit rewards are beta * (log pi - log ref) of each completion; logged are their means ("rewards chosen" /
"rewards rejected"), the margin (chosen - rejected) and the accuracy (share of pairs whose chosen reward is higher).
TRL's `DPOTrainer` (loss_type="sigmoid") is the reference for these definitions.

Decisions:
- The reference is the starting checkpoint, kept as a frozen second model and run under no_grad on the same batch,
  rather than precomputed: no extra pass over the data, no cache to invalidate, memory is one more copy of a small
  model. Its log-probs are computed with the same padding and chunking as the policy's, so at step 0 the rewards are
  exactly zero and the loss exactly log 2.
- A batch (`PairBatch`) is B pairs laid out as 2B rows (chosen rows then rejected rows), right-padded together: one
  forward pass for both halves. `count` is the number of pairs, so the trainer's normalisation yields the mean loss
  per pair.
- Held-out evaluation reports the DPO loss and reward accuracy, plus `pref_accuracy`: the share of pairs where the
  policy alone gives the chosen completion the higher log-probability (and `pref_accuracy_norm`, the same per token,
  which does not favour the shorter answer). These are defined before any training (rewards are all zero at the
  start), so they are the before/after figures of a DPO run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import PhaseConfig, RunConfig
from ..models import CausalLM, IGNORE_INDEX
from ..runtime import DistInfo
from ..train.task import Batch, Task
from .config import DPOConfig
from .data import PreferencePair
from .sequence import RowLoader, RunningStats, pad_batch, sequence_logprobs, shift_example


@dataclass(kw_only=True)
class PairBatch(Batch):
    """B preference pairs as 2B padded rows: rows [0, B) are the chosen completions, rows [B, 2B) the rejected ones
    of the same prompts, in the same order."""

    @property
    def pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def _lengths(batch: Batch) -> torch.Tensor:
    """Completion tokens of each row (2B,), at least 1."""
    return (batch.targets != IGNORE_INDEX).sum(-1).clamp(min=1).float()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO losses (B,) and the chosen/rejected implicit rewards (B,) (detached)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    logits = beta * (chosen_ratio - rejected_ratio)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


class DPOTask(Task):
    def __init__(self, train: list[PreferencePair], val: list[PreferencePair], cfg: RunConfig, dpo: DPOConfig, *,
                 reference: torch.nn.Module, pad_id: int, autocast_dtype: torch.dtype | None = None) -> None:
        self.train_pairs, self.val_pairs = train, val
        self.cfg, self.dpo, self.reference, self.pad_id = cfg, dpo, reference, pad_id
        self.autocast_dtype = autocast_dtype
        self.device = torch.device("cpu")
        self.stats = RunningStats()

    def collate(self, pairs: list[PreferencePair]) -> PairBatch:
        rows = [shift_example(p.chosen.ids, p.chosen.mask) for p in pairs]
        rows += [shift_example(p.rejected.ids, p.rejected.mask) for p in pairs]
        padded = pad_batch(rows, self.pad_id)
        return PairBatch(input_ids=padded.input_ids, targets=padded.targets)

    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> RowLoader:
        self.device = dist.device
        self.reference.to(self.device)
        return RowLoader(len(self.train_pairs), phase.batch_size, seed=seed, rank=dist.rank,
                         world_size=dist.world_size,
                         collate=lambda rows: self.collate([self.train_pairs[i] for r in rows for i in r]))

    def count(self, batch: PairBatch) -> int:
        return batch.pairs

    def tokens(self, batch: PairBatch) -> int:
        return int((batch.input_ids != self.pad_id).sum())

    def _logps(self, model: torch.nn.Module, batch: PairBatch, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs of policy (with grad) and reference (without), each (2B,)."""
        b = batch.to(self.device)
        x, y = b.input_ids, b.targets
        policy = sequence_logprobs(model, x, y, chunk).sum(-1)
        with torch.no_grad():
            ref = sequence_logprobs(self.reference, x, y, chunk).sum(-1)
        return policy, ref

    def loss(self, model: torch.nn.Module, batch: PairBatch, loss_chunk: int) -> torch.Tensor:
        policy, ref = self._logps(model, batch, loss_chunk)
        B = policy.shape[0] // 2
        losses, r_chosen, r_rejected = dpo_loss(policy[:B], policy[B:], ref[:B], ref[B:], self.dpo.beta,
                                                self.dpo.label_smoothing)
        self._record(self.stats, r_chosen, r_rejected, policy.detach(), _lengths(batch), B)
        return losses.sum()

    @staticmethod
    def _record(stats: RunningStats, r_chosen: torch.Tensor, r_rejected: torch.Tensor, policy: torch.Tensor,
                lengths: torch.Tensor, B: int) -> None:
        stats.add("rewards_chosen", r_chosen.mean(), B)
        stats.add("rewards_rejected", r_rejected.mean(), B)
        stats.add("rewards_margin", (r_chosen - r_rejected).mean(), B)
        stats.add("rewards_accuracy", (r_chosen > r_rejected).float().mean(), B)
        stats.add("pref_accuracy", (policy[:B] > policy[B:]).float().mean(), B)
        per_token = policy.cpu() / lengths  # length-normalised log-prob: long answers are not penalised for length
        stats.add("pref_accuracy_norm", (per_token[:B] > per_token[B:]).float().mean(), B)
        stats.add("logps_chosen", policy[:B].mean(), B)
        stats.add("logps_rejected", policy[B:].mean(), B)

    def step_metrics(self) -> dict[str, float]:
        """Statistics of the micro-batches since the last call (one optimizer step when the trainer asks per step)."""
        return self.stats.pop("", bucket="step")

    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict:
        out = self.stats.pop("train_")
        if not self.val_pairs:
            return out
        bs = max(1, self.cfg.eval.batch_size // 2)
        val = RunningStats()
        total, n = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for b, s in enumerate(range(0, len(self.val_pairs), bs)):
                    if max_batches and b >= max_batches:
                        break
                    batch = self.collate(self.val_pairs[s:s + bs])
                    with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                        enabled=self.autocast_dtype is not None):
                        policy, ref = self._logps(model, batch, self.cfg.train.loss_chunk)
                    B = policy.shape[0] // 2
                    losses, rc, rr = dpo_loss(policy[:B], policy[B:], ref[:B], ref[B:], self.dpo.beta,
                                              self.dpo.label_smoothing)
                    total += float(losses.sum())
                    n += B
                    self._record(val, rc, rr, policy, _lengths(batch), B)
        finally:
            model.train(was_training)
        return {"loss": total / max(n, 1), **val.pop(""), "pairs": n, **out}
