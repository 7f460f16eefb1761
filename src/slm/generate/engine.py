"""Batched autoregressive generation on token ids: `DecodeEngine` owns a model's decode step (eager or compiled) and
a pool of decode states, so a server or evaluation harness reuses both across requests; `generate()` is the façade
that keeps one engine per model.

Decisions:
- The decode state comes from the model (`model.new_state`): a KV cache, a ring buffer or a recurrent state,
  whatever the architecture decodes with; this module never builds one. Finished generations return their state to
  a small pool, so the next request of the same shape reuses the buffers.
- Tokens in, tokens out: this module never sees text, so it is shared by the REPL, the HTTP server and evaluation
  harnesses, whatever tokenizer they use.
- Prompts of different lengths are LEFT-padded into one (B, P) batch. Then every row's next token sits in the last
  column, the whole batch is prefilled with one forward pass and decoded one column per step, and the cache keeps one
  shared write index (see `slm.models.layers.kv_cache`). The attention mask hides the padding and RoPE positions count only real
  tokens, so a padded row produces the same tokens as the same prompt alone.
- Rows that hit EOS stay in the batch, fed as masked padding, until every row is done (then the loop stops early).
  Dropping them with the state's `reorder` would save compute on huge batches but would copy every cache layer and
  renumber rows for `on_token`; for the interactive batch sizes this module serves, keeping them is simpler.
- Context window: generation must fit in `model.cfg.max_seq_len` (RoPE tables and cache size). If a prompt plus
  `max_new_tokens` does not fit, the prompt loses its OLDEST tokens (the recent ones matter most for a continuation),
  but generation never reserves more than half the window, so a long prompt keeps at least half of its context. New
  tokens then stop when the window is full, which can be before `max_new_tokens`. `fit_to_context` is the one rule,
  used by both the cached and the naive path.
- `generate_naive` re-runs the full forward pass over the whole sequence each step with no cache and no padding:
  slow (quadratic) but obviously correct, the reference the tests hold the cached path to.
- One `torch.Generator` seeded from `cfg.seed` drives all draws, so the same inputs and seed give the same samples.
- Speed: the prompt is prefilled in one pass; every decode step then goes through `CausalLM.forward_step`, which has
  static shapes (the whole cache buffer, masked by `valid`) and reads no host value. `compile=True` hands that step to
  `torch.compile` once per model and (batch, cache length) — the cache length is then rounded up to a multiple of
  `_COMPILE_BUCKET` so nearby requests share one compiled graph — with inductor's `freezing`: weights become
  constants of the graph and are prepacked for oneDNN, which is what makes bf16 decode pay on CPU (unfrozen, bf16
  matrix-vector products are no faster than fp32 here; see bench/decode.py). On CPU the step also gets q/k/v and
  gate/up each as one matrix-vector product (`cpp.enable_concat_linear`) and inductor's C++ wrapper (no Python
  between kernels: the reference model of bench/decode.py spends a third of its compiled step there). `compile=
  "autotune"` adds inductor's C++ GEMM templates (`max_autotune` with the CPP backend: kernels generated for the
  exact shapes with the residual adds and SwiGLU fused in, each autotuned against oneDNN). Which mode wins depends
  on the CPU, so `slm.generate.calibrate` measures both: on an AMX CPU the templates took the reference model from
  516 to 995 tok/s at batch 1; on a Zen 4 (AVX512-BF16, no AMX) they were slower than oneDNN (SmolLM2-135M, 2
  threads: 18.2 vs 14.1 ms per step, with 150 s of compiling instead of 70). Frozen weights go stale when the model
  changes, so a call after any in-place update of a parameter (an optimizer step, `load_state_dict`) resets
  dynamo's caches and compiles again. Compiling costs tens of seconds up front and pays back over long or repeated
  generations (a server, a benchmark), so it is opt-in. The one host read per step
  (`token.tolist()`) stays: EOS handling and `on_token` streaming need the ids on the host anyway, and on CPU there
  is no asynchronous queue for it to stall.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ..config import SamplingConfig
from ..errors import SlmError
from ..models import CausalLM, DecodeState
from .sampling import sample_next, seen_mask

Compile = bool | str  # the decode step: False eager, True compiled (frozen oneDNN weights), "autotune" (+ GEMM templates)
OnToken = Callable[[int, int], None]  # (row, token): row indexes the expanded batch (prompt i, sample j -> i*n + j)
StepFn = Callable[[torch.Tensor, DecodeState, torch.Tensor], torch.Tensor]  # (ids (B, 1), state, mask (B, 1)) -> logits

_COMPILE_BUCKET = 64  # cache lengths are rounded up to this when the decode step is compiled (fewer recompiles)
_POOL_SIZE = 2  # decode states kept for reuse per engine (a state of a long context can take hundreds of MB)


def fit_to_context(prompt_len: int, max_new_tokens: int, max_seq_len: int) -> tuple[int, int]:
    """(tokens of the prompt to keep, from its end; tokens that may be generated) so that together they fit.

    Generation reserves min(max_new_tokens, max_seq_len // 2) slots; the prompt keeps its last tokens up to the rest.
    """
    reserve = min(max_new_tokens, max_seq_len // 2)
    keep = min(prompt_len, max_seq_len - reserve)
    return keep, min(max_new_tokens, max_seq_len - keep)


def _check_prompts(prompts: list[list[int]], vocab_size: int) -> None:
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise SlmError(f"generate: prompt {i} is empty; give at least one token (e.g. the tokenizer's BOS)")
        low, high = min(prompt), max(prompt)
        if low < 0 or high >= vocab_size:
            raise SlmError(f"generate: prompt {i} has token id {low if low < 0 else high} outside the model's "
                           f"vocabulary [0, {vocab_size}); use the tokenizer the model was trained with")


def _param(model: nn.Module) -> torch.Tensor:
    return next(model.parameters())


def _left_pad(prompts: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> ids (B, P) left-padded with token 0, and mask (B, P) True on real tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = True
    return ids.to(device), mask.to(device)


def inductor_options(device: torch.device, compile: Compile) -> dict:
    """Inductor settings of the compiled decode step in mode `compile` (see the module docstring)."""
    options: dict = {"freezing": True}
    if device.type == "cpu":
        options.update({"cpp.enable_concat_linear": True, "cpp_wrapper": True})
        if compile == "autotune":
            options.update({
                "max_autotune": True,
                "max_autotune_gemm_backends": "CPP,ATEN",
                "autotune_num_choices_displayed": 0,  # autotuning is an implementation detail: no tables on stderr
                "max_autotune_report_choices_stats": False,
            })
    return options


def _check_compile(compile: Compile) -> Compile:
    if compile not in (False, True, "autotune"):
        raise ValueError(f"compile={compile!r}: use False, True or 'autotune'")
    return compile


def _cache_len(needed: int, max_seq_len: int, compile: Compile) -> int:
    if not compile:
        return needed
    return min(-(-needed // _COMPILE_BUCKET) * _COMPILE_BUCKET, max_seq_len)


class DecodeEngine:
    """A model's decode step and a pool of its decode states. `compile=True` (or "autotune") runs the step through
    torch.compile (same tokens; see the module docstring). Get the shared engine of a model with
    `DecodeEngine.of(model)`."""

    def __init__(self, model: CausalLM, *, compile: Compile = False) -> None:
        self.model = model
        self.compile = _check_compile(compile)
        self._compiled: tuple[tuple, Callable] | None = None  # (weights version, compiled forward_step)
        self._pool: dict[tuple, DecodeState] = {}

    @classmethod
    def of(cls, model: CausalLM, *, compile: Compile = False) -> DecodeEngine:
        """The engine kept on `model` for this compile setting (built on first use)."""
        engines = model.__dict__.setdefault("_slm_engines", {})
        if compile not in engines:
            engines[compile] = cls(model, compile=compile)
        return engines[compile]

    # ------------------------------------------------------------------------------------------------------------ #
    # states

    def acquire_state(self, batch_size: int, max_len: int) -> DecodeState:
        """An empty state for `batch_size` rows and `max_len` tokens: a pooled one of that shape, else a new one."""
        param = _param(self.model)
        key = (batch_size, max_len, param.dtype, param.device)
        state = self._pool.pop(key, None)
        if state is None:
            return self.model.new_state(batch_size, max_len, dtype=param.dtype, device=param.device)
        state.reset()
        return state

    def release_state(self, state: DecodeState, batch_size: int) -> None:
        """Return a state to the pool (the oldest pooled one is dropped beyond `_POOL_SIZE`)."""
        param = _param(self.model)
        self._pool[(batch_size, state.max_len, param.dtype, param.device)] = state
        while len(self._pool) > _POOL_SIZE:
            self._pool.pop(next(iter(self._pool)))

    # ------------------------------------------------------------------------------------------------------------ #
    # the step

    def step_fn(self) -> StepFn:
        """One decode step. Eager: `model(...)` (which routes one-token calls to `forward_step`, so forward hooks see
        every step). Compiled: `model.forward_step` through torch.compile, built once per weights version, with the
        host-side `state.advance(1)` kept outside the compiled graph."""
        model = self.model
        if not self.compile:
            return lambda ids, state, mask: model(ids, state=state, attention_mask=mask)
        weights = tuple((id(p), p._version) for p in model.parameters())  # changes on any in-place update or swap
        if self._compiled is None or self._compiled[0] != weights:
            if self._compiled is not None:
                torch._dynamo.reset()  # the frozen weights in the cached graphs are stale
            # The settings go in as torch.compile's options, not as a config patch: dynamo keeps compiled graphs on
            # the function's code object, and a backend with other options is what keeps the two modes' graphs of
            # one model apart (under a patched config, the second mode silently reused the first one's graph).
            options = inductor_options(_param(model).device, self.compile)
            self._compiled = (weights, torch.compile(model.forward_step, dynamic=False, options=options))
        compiled = self._compiled[1]
        checked = [False]  # this generation's first step has run with dynamo's full guard check

        def step(ids: torch.Tensor, state: DecodeState, mask: torch.Tensor) -> torch.Tensor:
            state.advance(1)
            if not checked[0]:
                checked[0] = True
                return compiled(ids, state, mask)
            # Later steps of one generation pass the same state tensors and same-shaped ids/mask under the same
            # weights, so the guards that picked the graph at step one hold; skipping their evaluation saves a check
            # over every parameter and state tensor per token (about as long as the step of a small model).
            with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                return compiled(ids, state, mask)

        return step

    # ------------------------------------------------------------------------------------------------------------ #
    # generation

    def generate(self, prompts: list[list[int]], cfg: SamplingConfig, *, eos_id: int | None,
                 on_token: OnToken | None = None) -> list[list[int]]:
        """Continue each prompt; returns only the new tokens, `cfg.num_samples` lists per prompt (prompt-major order).

        A row stops at `eos_id` (not included) when `cfg.stop_at_eos`, at `cfg.max_new_tokens`, or when the context
        window is full. `on_token(row, token)` is called once per kept token, in generation order, as soon as it is
        drawn.
        """
        if not prompts:
            return []
        model = self.model
        max_seq_len, vocab_size = model.cfg.max_seq_len, model.cfg.vocab_size
        _check_prompts(prompts, vocab_size)
        rows = [list(p) for p in prompts for _ in range(cfg.num_samples)]
        width, n_new = fit_to_context(max(len(r) for r in rows), cfg.max_new_tokens, max_seq_len)
        rows = [r[-width:] for r in rows]  # the longest row decides the window; every row keeps its last `width` tokens
        device = _param(model).device
        stop_id = eos_id if cfg.stop_at_eos else None
        generator = torch.Generator(device=device).manual_seed(cfg.seed)

        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                ids, mask = _left_pad(rows, device)  # (B, P), (B, P)
                B = ids.shape[0]
                seen = seen_mask(ids.masked_fill(~mask, -1), vocab_size)  # (B, V) prompt tokens, for the penalty
                state = self.acquire_state(B, _cache_len(width + n_new, max_seq_len, self.compile))
                logits = model(ids, state=state, attention_mask=mask)[:, -1]  # (B, V)
                out = _decode_loop(self.step_fn(), state, logits, seen, cfg, generator, n_new, stop_id, on_token)
                self.release_state(state, B)
                return out
        finally:
            model.train(was_training)


def generate(model: CausalLM, prompts: list[list[int]], cfg: SamplingConfig, *, eos_id: int | None,
             on_token: OnToken | None = None, compile: Compile = False) -> list[list[int]]:
    """`DecodeEngine.of(model, compile=compile).generate(...)`: the model's shared engine (compiled step and state
    pool are reused by later calls)."""
    return DecodeEngine.of(model, compile=compile).generate(prompts, cfg, eos_id=eos_id, on_token=on_token)


def _decode_loop(step_fn: StepFn, state: DecodeState, logits: torch.Tensor, seen: torch.Tensor, cfg: SamplingConfig,
                 generator: torch.Generator, n_new: int, stop_id: int | None,
                 on_token: OnToken | None) -> list[list[int]]:
    B = logits.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    rows = torch.arange(B, device=logits.device)
    for step in range(n_new):
        token = sample_next(logits, cfg, generator, seen)  # (B,)
        for row, tok in enumerate(token.tolist()):  # one host sync per step, needed to stream tokens anyway
            if done[row]:
                continue
            if tok == stop_id:
                done[row] = True
                continue
            out[row].append(tok)
            if on_token is not None:
                on_token(row, tok)
        if all(done) or step == n_new - 1:
            break
        finished = torch.tensor(done, device=logits.device)  # (B,)
        if cfg.repetition_penalty != 1.0:  # the only reader of `seen`
            seen[rows, token] = True
        # Finished rows are fed as padding: masked out of attention, and their logits are never read.
        logits = step_fn(token[:, None], state, ~finished[:, None])[:, -1]  # (B, V)
    return out


def generate_naive(model: CausalLM, prompt: list[int], cfg: SamplingConfig, eos_id: int | None) -> list[int]:
    """Reference for one prompt: a full forward pass over the whole sequence per token, no cache, no padding.

    Same truncation, sampling and seed handling as `generate` (one sample; `cfg.num_samples` is ignored).
    """
    max_seq_len, vocab_size = model.cfg.max_seq_len, model.cfg.vocab_size
    _check_prompts([prompt], vocab_size)
    keep, n_new = fit_to_context(len(prompt), cfg.max_new_tokens, max_seq_len)
    device = _param(model).device
    seq = torch.tensor(prompt[-keep:], dtype=torch.long, device=device)[None]  # (1, T)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    stop_id = eos_id if cfg.stop_at_eos else None
    out: list[int] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(n_new):
                logits = model(seq)[:, -1]  # (1, V)
                token = sample_next(logits, cfg, generator, seq)  # history form of `seen`
                if int(token) == stop_id:
                    break
                out.append(int(token))
                seq = torch.cat([seq, token[:, None]], dim=1)
    finally:
        model.train(was_training)
    return out
