"""Continuous batching on token ids: `RunningBatch` keeps one decode state of `max_batch` rows, and requests join and
leave it between decode steps, each with its own sampling settings and seed. A server's scheduler drives it.

Decisions:
- Generic over architectures: it uses only the `CausalLM` / `DecodeState` contract. A newcomer's prompt minus its
  last token is prefilled in a batch-1 state of its own (one forward pass, the matmul-efficient path) and copied into
  a free row with `state.insert`; its last prompt token is fed by the next shared step like every other row's latest
  token, so no row ever has a hole in its slots and every step is one `forward_step` over all rows. A leaving row is
  `state.release`d and fed as masked padding until a newcomer takes it. A state without `insert` (an architecture
  that has not implemented it yet) still works, one batch at a time: newcomers wait until the batch is empty and are
  then prefilled together, left-padded, exactly like `DecodeEngine.generate`.
- One state of fixed shape for the server's lifetime, so the compiled step (`DecodeEngine.step_fn`) is compiled once
  and reused by every request; free rows cost their share of a step (at batch 16 on a CPU the step is dominated by
  reading the weights once, not by the row count, which is where continuous batching's throughput comes from).
- Per-row sampling, vectorised: temperature, top-k, top-p and the repetition penalty are (B,) tensors; one sort per
  step serves top-k and top-p of the rows that filter, the others draw in vocabulary order (no sort). Each row draws
  from its own `torch.Generator` (inverse-CDF draw of one uniform per row), so a request's samples depend on its
  seed only, never on which other requests share the batch.
  Greedy rows (temperature 0) take the argmax, and the same order of operations as `slm.generate.sampling` is kept:
  penalty -> temperature -> top-k -> top-p -> draw.
- Context: a row's prompt plus its new tokens must fit `max_len` (checked at `join`); the shared write slot then
  never outruns the buffer for long, because a full KV cache drops the leading slots no live row uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SamplingConfig
from ..errors import SlmError
from ..models import CausalLM
from .engine import DecodeEngine, _check_prompts, _left_pad, _param
from .sampling import seen_mask


@dataclass
class _Row:
    prompt_len: int
    max_new_tokens: int
    generated: int = 0


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                penalty: torch.Tensor, seen: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row with per-row settings: logits (B, V); temperature, top_p, penalty, uniform (B,) float;
    top_k (B,) long (0 = off); seen (B, V) bool -> ids (B,). `uniform` in [0, 1) is each row's random draw."""
    logits = logits.float()
    if bool((penalty != 1.0).any()):
        pen = penalty[:, None]
        penalised = torch.where(logits > 0, logits / pen, logits * pen)
        logits = torch.where(seen & (pen != 1.0), penalised, logits)
    greedy = logits.argmax(dim=-1)  # (B,)
    if not bool((temperature > 0).any()):
        return greedy
    V = logits.shape[-1]
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature))[:, None]
    logits = logits / t
    probs, order = logits.softmax(dim=-1), None  # (B, V) in vocabulary order: an inverse-CDF draw needs no sort
    filtered = (top_k > 0) | (top_p < 1)  # (B,) rows whose filters need the tokens in probability order
    if bool(filtered.any()):  # one sort for them; other rows keep vocabulary order, so no row's draw depends on them
        sorted_logits, sorted_order = logits.sort(dim=-1, descending=True)  # (B, V)
        rank = torch.arange(V, device=logits.device)[None, :]
        keep = rank < torch.where(top_k > 0, top_k, V)[:, None]  # top-k in sorted space
        sorted_probs = sorted_logits.masked_fill(~keep, float("-inf")).softmax(dim=-1)
        keep &= (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p[:, None]  # top-p of the top-k distribution
        probs = torch.where(filtered[:, None], sorted_probs * keep, probs)
        order = torch.where(filtered[:, None], sorted_order, rank)
    cdf = probs.cumsum(dim=-1)  # (B, V) unnormalised
    target = (uniform.to(cdf.dtype) * cdf[:, -1])[:, None]
    idx = torch.searchsorted(cdf, target).clamp(max=V - 1)  # first token whose cumulative mass reaches the draw
    drawn = (order.gather(-1, idx) if order is not None else idx).squeeze(-1)
    return torch.where(temperature > 0, drawn, greedy)


class RunningBatch:
    """Rows of one decode state that requests join (`join`) and leave (`leave`) between `step`s."""

    def __init__(self, engine: DecodeEngine, max_batch: int, max_len: int | None = None) -> None:
        model: CausalLM = engine.model
        if max_batch < 1:
            raise SlmError(f"max_batch must be >= 1, got {max_batch}")
        self.engine, self.model = engine, model
        self.max_batch = max_batch
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        param = _param(model)
        self.device = param.device
        B, V = max_batch, model.cfg.vocab_size
        with torch.inference_mode():
            self.state = model.new_state(B, self.max_len, dtype=param.dtype, device=self.device)
        self.can_insert = callable(getattr(self.state, "insert", None)) and callable(getattr(self.state, "release",
                                                                                             None))
        self._step = engine.step_fn()
        self.rows: list[_Row | None] = [None] * B
        self.pending = torch.zeros(B, dtype=torch.long, device=self.device)  # (B,) token each row feeds next
        self.temperature = torch.zeros(B, device=self.device)
        self.top_k = torch.zeros(B, dtype=torch.long, device=self.device)
        self.top_p = torch.ones(B, device=self.device)
        self.penalty = torch.ones(B, device=self.device)
        self.seen = torch.zeros(B, V, dtype=torch.bool, device=self.device)
        self.generators: list[torch.Generator | None] = [None] * B
        self._waiting_group: list[tuple[int, list[int]]] = []  # (row, prompt) joined without `insert` support

    # ------------------------------------------------------------------------------------------------------------ #

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.rows)

    def free_rows(self) -> int:
        """Rows a newcomer can take now (without `insert` support: only while no row is decoding)."""
        free = self.max_batch - self.active
        if not self.can_insert and any(r is not None and r.generated for r in self.rows):
            return 0
        return free

    def fits(self, prompt_len: int, max_new_tokens: int) -> bool:
        return prompt_len >= 1 and max_new_tokens >= 1 and prompt_len + max_new_tokens <= self.max_len

    def join(self, prompt: list[int], cfg: SamplingConfig, max_new_tokens: int) -> int:
        """Add a request (prompt ids, its sampling settings and seed, new-token budget); returns its row. The first
        `step` after it returns its first token."""
        if not self.fits(len(prompt), max_new_tokens):
            raise SlmError(f"prompt of {len(prompt)} tokens + {max_new_tokens} new tokens does not fit the batch's "
                           f"context of {self.max_len}")
        _check_prompts([prompt], self.model.cfg.vocab_size)
        if self.free_rows() < 1:
            raise SlmError("no free row in the running batch")
        row = self.rows.index(None)
        with torch.inference_mode():
            if self.can_insert:
                self._prefill_into(row, prompt)
            else:
                self._waiting_group.append((row, prompt))
            self.pending[row] = prompt[-1]
            self.temperature[row] = cfg.temperature
            self.top_k[row] = cfg.top_k
            self.top_p[row] = cfg.top_p
            self.penalty[row] = cfg.repetition_penalty
            self.seen[row] = seen_mask(torch.tensor([prompt], device=self.device), self.seen.shape[1])[0]
        self.generators[row] = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.rows[row] = _Row(len(prompt), max_new_tokens)
        return row

    def leave(self, row: int) -> None:
        """The request of `row` is done (finished, stopped or cancelled); its row is free for the next one."""
        if self.rows[row] is None:
            return
        self.rows[row] = None
        self.generators[row] = None
        self._waiting_group = [(r, p) for r, p in self._waiting_group if r != row]
        if self.can_insert:
            with torch.inference_mode():
                self.state.release(row)

    def step(self) -> dict[int, int]:
        """One decode step over every row: feed each live row's latest token, sample its next. Returns {row: token}
        for live rows (the caller decides who is done and calls `leave`)."""
        if self.active == 0:
            return {}
        with torch.inference_mode():
            if self._waiting_group:
                self._prefill_group()
            live = torch.tensor([r is not None for r in self.rows], device=self.device)  # (B,)
            logits = self._step(self.pending[:, None], self.state, live[:, None])[:, -1]  # (B, V)
            uniform = torch.tensor([float(torch.rand((), generator=g)) if g is not None else 0.5
                                    for g in self.generators], device=self.device)
            tokens = sample_rows(logits, self.temperature, self.top_k, self.top_p, self.penalty, self.seen, uniform)
            live_idx = live.nonzero().squeeze(-1)
            self.seen[live_idx, tokens[live_idx]] = True
            self.pending.copy_(tokens)
        out = {}
        for row, tok in enumerate(tokens.tolist()):  # one host sync per step: the caller streams the ids anyway
            if self.rows[row] is not None:
                self.rows[row].generated += 1
                out[row] = tok
        return out

    # ------------------------------------------------------------------------------------------------------------ #

    def _prefill_into(self, row: int, prompt: list[int]) -> None:
        if self.active == 0:
            self.state.reset()  # nobody left: start the shared write slot from 0 again
        if len(prompt) == 1:
            self.state.release(row)
            return
        scratch = self.engine.acquire_state(1, self.max_len)
        ids = torch.tensor([prompt[:-1]], dtype=torch.long, device=self.device)  # (1, P - 1)
        self.model(ids, state=scratch)
        self.state.insert(row, scratch)
        self.engine.release_state(scratch, 1)

    def _prefill_group(self) -> None:
        """Without `insert`: the batch is empty, so start over and prefill all newcomers at once, left-padded."""
        self.state.reset()
        group, self._waiting_group = self._waiting_group, []
        prompts: list[list[int]] = [[] for _ in range(self.max_batch)]
        for row, prompt in group:
            prompts[row] = prompt[:-1]
        if max(len(p) for p in prompts) == 0:
            return
        ids, mask = _left_pad([p or [0] for p in prompts], self.device)  # (B, P)
        for row, p in enumerate(prompts):
            if not p:
                mask[row] = False  # a row with nothing to prefill is all padding
        self.model(ids, state=self.state, attention_mask=mask)
