"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) as a `Task` for the one trainer.

Per prompt, G completions are sampled from the current policy and scored by reward functions; each completion's
advantage is its reward minus its group's mean, divided by the group's std (`scale_rewards`; Dr. GRPO drops the
division). The per-token objective is PPO's clipped surrogate,
    -min(r_t A, clip(r_t, 1 - eps, 1 + eps) A) + beta * KL_k3(ref || pi)_t,   r_t = pi(o_t) / pi_old(o_t)
averaged over a completion's tokens and summed over completions (`count` = completions, so the trainer's normaliser
makes it the mean over the global batch: the original GRPO "sequence mean, then batch mean"). KL_k3 is Schulman's
unbiased, always-positive estimator exp(ref - pi) - (ref - pi) - 1, as in TRL's `GRPOTrainer` (the reference for the
maths here).

Decisions:
- Rollouts are made by the loader: the trainer draws a micro-batch, the loader samples it from the live policy (the
  same object the trainer optimises, passed in at construction), so generation always uses the current weights and
  the trainer stays method-agnostic. Sampling uses the batched KV-cache engine, G samples per prompt in one call.
  A rollout is a `RolloutBatch`: the trainer's `Batch` (prompt + completion rows, only completion tokens targeted)
  plus per-completion advantages and rewards, and pi_old's log-probs when they are reused.
- With `num_iterations` = 1 (default) pi_old is pi detached: ratio 1, the clip inactive, the gradient the plain
  advantage-weighted policy gradient. The logged loss is then ~0 by construction (advantages sum to zero within a
  group); the reward statistics, not the loss, show progress. With mu > 1 each rollout batch is reused for mu optimizer steps, pi_old's
  log-probs are stored at sampling time and the clip bounds how far those steps move.
- A completion that stopped gets its end-of-turn token appended as a trained token (the model must learn to stop);
  one cut at `max_completion_tokens` has none. Prompt tokens never carry loss.
- Rewards are plain functions (completion text, gold answer, completion tokens, max tokens) -> float in a name map:
  `math` (exact answer: the <answer> tag's content, else the last number, compared numerically), `math_partial`
  (the same, with up to 0.5 for a close number: a reward a 135M model reaches in its first steps), `format`
  (<think>...</think><answer>...</answer> and nothing else), `length` (1 - tokens / max: shorter is better).
- Loader state is (prompt order epoch/cursor, rollouts made); a resume redraws the rollout it was in the middle of
  reusing (mu > 1), which changes only which samples the remaining reuse steps see.
- Eval answers held-out prompts greedily and reports the mean of each reward: the curve that must rise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..config import PhaseConfig, RunConfig
from ..errors import SlmError
from ..generate.engine import generate
from ..config import SamplingConfig
from ..models import CausalLM, IGNORE_INDEX
from ..tokenizer.chat_template import ChatFormatter
from ..runtime import DistInfo
from ..train.task import Batch, Task
from .config import GRPOConfig
from .data import PromptRecord
from .sequence import RowLoader, RunningStats, pad_batch, sequence_logprobs

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


def extract_answer(completion: str) -> str:
    """The <answer>...</answer> content when present, else the last number in the text, else the stripped text."""
    tagged = _ANSWER.findall(completion)
    if tagged:
        return tagged[-1].strip()
    numbers = _NUMBER.findall(completion.replace(",", ""))
    return numbers[-1] if numbers else completion.strip()


def answers_match(predicted: str, gold: str) -> bool:
    """Numeric equality when both parse as numbers (commas ignored), else case-insensitive text equality."""
    p, g = predicted.strip().replace(",", ""), gold.strip().replace(",", "")
    try:
        return abs(float(p) - float(g)) < 1e-6
    except ValueError:
        return p.lower() == g.lower()


def reward_math(completion: str, answer: str, n_tokens: int, max_tokens: int) -> float:
    return 1.0 if answers_match(extract_answer(completion), answer) else 0.0


def reward_math_partial(completion: str, answer: str, n_tokens: int, max_tokens: int) -> float:
    """1 for the exact answer, else up to 0.5 for a number close to it (0.5 * (1 - relative error)), 0 for none.

    The shaped variant of `math` for models that rarely get the answer exactly: with an exact-only reward a 135M
    model's groups are all 0 (no advantage, no gradient) in most first steps; closeness gives every group a spread."""
    predicted = extract_answer(completion).replace(",", "")
    try:
        p, g = float(predicted), float(answer.strip().replace(",", ""))
    except ValueError:
        return 0.0
    if abs(p - g) < 1e-6:
        return 1.0
    return 0.5 * max(0.0, 1.0 - abs(p - g) / max(1.0, abs(g)))


def reward_format(completion: str, answer: str, n_tokens: int, max_tokens: int) -> float:
    return 1.0 if _FORMAT.fullmatch(completion) else 0.0


def reward_length(completion: str, answer: str, n_tokens: int, max_tokens: int) -> float:
    return 1.0 - min(n_tokens, max_tokens) / max_tokens


REWARDS: dict[str, Callable[[str, str, int, int], float]] = {
    "math": reward_math, "math_partial": reward_math_partial, "format": reward_format, "length": reward_length,
}


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards (N,) in prompt-major groups of `group_size` -> advantages (N,): minus the group mean, over its std."""
    grouped = rewards.view(-1, group_size)  # (B, G)
    adv = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (grouped.std(dim=1, keepdim=True) + eps)
    return adv.reshape(-1)


@dataclass(kw_only=True)
class RolloutBatch(Batch):
    """G sampled completions per prompt (prompt-major rows), with what the clipped objective needs."""

    advantages: torch.Tensor  # (N,) group-normalised reward of each completion
    rewards: torch.Tensor  # (N,) weighted total reward
    old_logp: torch.Tensor | None = None  # (N, T) pi_old's log-probs at sampling time (num_iterations > 1)


class RolloutLoader:
    """Prompt batches in resumable order, each turned into G sampled completions per prompt by the task."""

    def __init__(self, task: "GRPOTask", prompts: RowLoader, seed: int) -> None:
        self.task, self.prompts, self.seed = task, prompts, seed
        self.made = 0
        self._cached: dict | None = None
        self._uses = 0

    def __iter__(self) -> "RolloutLoader":
        return self

    def __next__(self) -> RolloutBatch:
        if self._cached is None or self._uses >= self.task.grpo.num_iterations:
            indices = next(self.prompts)
            self._cached = self.task.rollout([self.task.train_prompts[i] for i in indices],
                                             seed=self.seed * 1000003 + self.made)
            self.made += 1
            self._uses = 0
        self._uses += 1
        return self._cached

    def state_dict(self) -> dict:
        return {"prompts": self.prompts.state_dict(), "made": self.made}

    def load_state_dict(self, state: dict) -> None:
        self.prompts.load_state_dict(state["prompts"])
        self.made = int(state["made"])


class GRPOTask(Task):
    def __init__(self, train: list[PromptRecord], val: list[PromptRecord], cfg: RunConfig, grpo: GRPOConfig, *,
                 policy: CausalLM, reference: CausalLM | None, formatter: ChatFormatter, pad_id: int,
                 autocast_dtype: torch.dtype | None = None) -> None:
        unknown = [r for r in grpo.rewards if r not in REWARDS]
        if unknown or not grpo.rewards:
            raise SlmError(f"--posttrain.grpo.rewards: unknown {unknown or 'empty list'}; choose from "
                           f"{', '.join(REWARDS)}")
        self.train_prompts, self.val_prompts = train, val
        self.cfg, self.grpo, self.policy, self.reference = cfg, grpo, policy, reference
        self.formatter, self.tokenizer, self.pad_id = formatter, formatter.tokenizer, pad_id
        self.autocast_dtype = autocast_dtype
        self.weights = grpo.reward_weights or [1.0] * len(grpo.rewards)
        self.device = torch.device("cpu")
        self.stats = RunningStats()
        limit = min(policy.cfg.max_seq_len, max(p.seq_len for p in cfg.train.phase_list()) + 1)
        for p in train + val:
            n = len(formatter.encode_prompt(p.messages))
            if n + grpo.max_completion_tokens > limit:
                raise SlmError(f"{p.where}: prompt of {n} tokens + max_completion_tokens={grpo.max_completion_tokens}"
                               f" exceeds {limit}; raise --train.seq_len or shorten the prompt")

    # -- rollouts -------------------------------------------------------------------------------------------------
    def score(self, completion: str, answer: str, n_tokens: int) -> tuple[float, list[float]]:
        parts = [REWARDS[name](completion, answer, n_tokens, self.grpo.max_completion_tokens)
                 for name in self.grpo.rewards]
        return sum(w * r for w, r in zip(self.weights, parts)), parts

    def rollout(self, prompts: list[PromptRecord], seed: int) -> RolloutBatch:
        """Sample G completions per prompt, score them, and lay them out as a training batch."""
        G, eot = self.grpo.num_generations, self.formatter.end_of_turn_id
        prompt_ids = [self.formatter.encode_prompt(p.messages) for p in prompts]
        sampling = SamplingConfig(temperature=self.grpo.temperature, top_k=self.grpo.top_k, num_samples=G,
                                  max_new_tokens=self.grpo.max_completion_tokens, seed=seed)
        outs = generate(self.policy, prompt_ids, sampling, eos_id=eot)  # B*G, prompt-major
        rows, rewards, parts, lengths, stopped = [], [], [], [], []
        for j, completion in enumerate(outs):
            p, ids = prompts[j // G], prompt_ids[j // G]
            done = len(completion) < self.grpo.max_completion_tokens
            trained = completion + ([eot] if done else [])
            total, each = self.score(self.tokenizer.decode(completion, skip_special=True), p.answer, len(completion))
            full = ids + trained
            rows.append((full[:-1], [IGNORE_INDEX] * (len(ids) - 1) + trained))
            rewards.append(total)
            parts.append(each)
            lengths.append(len(completion))
            stopped.append(float(done))
        padded = pad_batch(rows, self.pad_id)
        x, y = padded.input_ids, padded.targets
        r = torch.tensor(rewards, dtype=torch.float32)
        batch = RolloutBatch(input_ids=x, targets=y, advantages=group_advantages(r, G, self.grpo.scale_rewards),
                             rewards=r)
        if self.grpo.num_iterations > 1:
            with torch.no_grad():
                batch.old_logp = sequence_logprobs(self.policy, x.to(self.device), y.to(self.device)).cpu()
        n = len(outs)
        self.stats.add("reward", r.mean(), n)
        self.stats.add("reward_std", r.view(-1, G).std(dim=1).mean(), n)
        for name, col in zip(self.grpo.rewards, zip(*parts)):
            self.stats.add(f"reward_{name}", sum(col) / n, n)
        self.stats.add("completion_length", sum(lengths) / n, n)
        self.stats.add("stopped", sum(stopped) / n, n)
        return batch

    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> RolloutLoader:
        self.device = dist.device
        if self.reference is not None:
            self.reference.to(self.device)
        prompts = RowLoader(len(self.train_prompts), phase.batch_size, seed=seed, rank=dist.rank,
                            world_size=dist.world_size, collate=lambda rows: [i for r in rows for i in r])
        return RolloutLoader(self, prompts, seed)

    def count(self, batch: RolloutBatch) -> int:
        return batch.input_ids.shape[0]

    def tokens(self, batch: RolloutBatch) -> int:
        return int((batch.input_ids != self.pad_id).sum())

    # -- loss -----------------------------------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch: RolloutBatch, loss_chunk: int) -> torch.Tensor:
        b = batch.to(self.device)
        x, y = b.input_ids, b.targets
        adv = b.advantages[:, None]  # (N, 1)
        mask = (y != IGNORE_INDEX).float()  # (N, T)
        logp = sequence_logprobs(model, x, y, loss_chunk)  # (N, T)
        old = b.old_logp if b.old_logp is not None else logp.detach()
        ratio = torch.exp(logp - old)
        clipped = ratio.clamp(1.0 - self.grpo.epsilon, 1.0 + self.grpo.epsilon)
        per_token = -torch.min(ratio * adv, clipped * adv)
        if self.reference is not None and self.grpo.kl_beta > 0:
            with torch.no_grad():
                ref = sequence_logprobs(self.reference, x, y, loss_chunk)
            d = ref - logp
            kl = torch.exp(d) - d - 1.0
            per_token = per_token + self.grpo.kl_beta * kl
            self.stats.add("kl", float((kl.detach() * mask).sum() / mask.sum().clamp(min=1)), x.shape[0])
        lengths = mask.sum(-1).clamp(min=1.0)
        is_clipped = ((ratio - clipped).abs() > 0).float().detach()
        self.stats.add("clip_fraction", float((is_clipped * mask).sum() / mask.sum().clamp(min=1)), x.shape[0])
        return ((per_token * mask).sum(-1) / lengths).sum()

    # -- eval -----------------------------------------------------------------------------------------------------
    def step_metrics(self) -> dict[str, float]:
        """Statistics of the micro-batches since the last call (one optimizer step when the trainer asks per step)."""
        return self.stats.pop("", bucket="step")

    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict:
        out = self.stats.pop("train_")
        prompts = self.val_prompts[: self.grpo.eval_prompts]
        if not prompts:
            return out
        greedy = SamplingConfig(temperature=0.0, max_new_tokens=self.grpo.max_completion_tokens)
        outs = generate(model, [self.formatter.encode_prompt(p.messages) for p in prompts], greedy,
                        eos_id=self.formatter.end_of_turn_id)
        totals, parts = [], []
        for p, o in zip(prompts, outs):
            total, each = self.score(self.tokenizer.decode(o, skip_special=True), p.answer, len(o))
            totals.append(total)
            parts.append(each)
        metrics = {"reward": sum(totals) / len(totals), "completion_length": sum(map(len, outs)) / len(outs)}
        for name, col in zip(self.grpo.rewards, zip(*parts)):
            metrics[f"reward_{name}"] = sum(col) / len(col)
        # The trainer keeps the checkpoint with the lowest "loss": make that the highest held-out reward.
        return {"loss": -metrics["reward"], **metrics, **out}
