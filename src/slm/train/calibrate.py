"""`--train.precision=auto` and `--train.compile=auto` on a CPU: chosen by timing the candidates, not by CPU name.

Which precision and whether torch.compile win depends on the CPU more than on anything a name tells: on an Intel CPU
with AMX, compiled bf16 autocast trained 2.2x faster than HF; on an AMD Zen 4 (AVX-512 BF16, no AMX) the same rule
(fp32 without AMX, compiled) was the slowest slm variant (bench/train_throughput.py). So `auto` measures: a few
training steps of each candidate on the run's own model and batch shape, with the run's optimizer, and picks the one
that finishes the run soonest (compile time counts against the compiled candidates).

- Candidates: fp32, bf16 autocast, and fp32 with bf16 matmul math (`bf16-matmul`: oneDNN's fp32_precision), each
  eager; then the fastest eager precision compiled. Compiling every precision would cost ~15-40 s each on 2 cores
  for what the eager ranking already tells (compiling changes the non-GEMM part; the GEMMs decide the precision).
- Timing: the median of a few steps after warm-up steps; the weights, buffers and RNG state are restored afterwards,
  so calibrating does not change the run (a resumed run reuses the choice recorded in its checkpoint's config).
- Cached per machine (CPU model and ISA flags, threads, torch version) + model shape + batch shape + optimizer in
  `<SLM_CACHE>/calibration.json`: paid once. Short runs (< MIN_TOKENS per process) skip it: eager, bf16 on an AMX
  CPU, else fp32 — for a run of seconds neither measuring nor compiling pays off.
- CUDA keeps its rules (bf16 autocast where supported, else fp16 + GradScaler; compiled when triton is there): tensor
  cores make that ranking hold on every GPU slm targets. Explicit settings always win.
- The choice and its timings go into the resolved config (`train.calibration`), so config.yaml says why.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import RunConfig, TrainConfig
from ..models import CausalLM
from ..runtime import (DistInfo, cpu_features, matmul_precision, read_machine_cache, resolve_precision,
                       slm_cache_dir, write_machine_cache)

MIN_TOKENS = 1_000_000  # per process; below it `auto` is eager and unmeasured (short_run_precision)
PRECISIONS = ("fp32", "bf16", "bf16-matmul")
CACHE_VERSION = 2
CACHE_FILE = "calibration.json"  # in slm_cache_dir()


@dataclass(frozen=True)
class Candidate:
    precision: str  # fp32 | bf16 | bf16-matmul
    compile: bool

    @property
    def name(self) -> str:
        return f"{self.precision}{'+compile' if self.compile else ''}"


@dataclass
class Timing:
    step_s: float  # median seconds per optimizer step after warm-up
    setup_s: float  # warm-up time beyond the steady-state steps it took (compilation, first-touch allocations)


def choose(timings: dict[Candidate, Timing], steps: int) -> Candidate:
    """The candidate that finishes `steps` optimizer steps soonest, set-up included (ties: the first given)."""
    return min(timings, key=lambda c: timings[c].setup_s + steps * timings[c].step_s)


def calibrate(time_candidate: Callable[[Candidate], Timing], precisions: tuple[str, ...],
              compile_options: tuple[bool, ...], steps: int,
              known: dict[Candidate, Timing] | None = None) -> tuple[Candidate, dict[Candidate, Timing]]:
    """Time every eager precision (or the compiled ones, when compile is pinned on), then the fastest precision
    compiled when compiling is a candidate; choose what finishes `steps` steps soonest. Candidates in `known` (earlier
    measurements on this machine) are not timed again."""
    timings = dict(known or {})

    def timing(c: Candidate) -> Timing:
        if c not in timings:
            timings[c] = time_candidate(c)
        return timings[c]

    first = compile_options[0] if len(compile_options) == 1 else False
    ranked = {c: timing(c) for c in (Candidate(p, first) for p in precisions)}
    if len(compile_options) > 1:
        best = min(ranked, key=lambda c: ranked[c].step_s)
        compiled = Candidate(best.precision, True)
        ranked[compiled] = timing(compiled)
    return choose(ranked, steps), ranked


# -- measuring on the run's model ---------------------------------------------------------------------------------
def train_step(model: CausalLM, tc: TrainConfig, x: torch.Tensor, y: torch.Tensor, precision: str, compile_: bool,
               device: torch.device) -> Callable[[], None]:
    """One training step on the fixed batch (x, y) as the trainer takes it: autocast per `precision`, the summed loss
    over the targets, backward, clip, the run's optimizer; with `compile_`, the model compiled as one graph (as
    `slm.train.parallel.parallelize` compiles an unsharded run). The caller sets the matmul precision around it."""
    from .optim import build_optimizer

    dtype, _ = resolve_precision(precision, device)
    opt = build_optimizer(model, tc)
    fwd = torch.compile(model) if compile_ else model
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            summed = fwd(x, targets=y, loss_chunk=tc.loss_chunk)
        (summed / y.numel()).backward()
        torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def step_timer(model: CausalLM, tc: TrainConfig, batch_size: int, seq_len: int, device: torch.device,
               *, warmup: int = 1, timed: int = 3) -> Callable[[Candidate], Timing]:
    """A function timing one candidate: `warmup` + `timed` training steps (`train_step`) on a random batch; the
    model's weights, buffers and the RNG state are restored after."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (batch_size, seq_len + 1), generator=gen).to(device)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def time_candidate(c: Candidate) -> Timing:
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        was_training = model.training
        model.train()
        one_step = train_step(model, tc, x, y, c.precision, c.compile, device)
        try:
            with matmul_precision(c.precision, device):
                t0 = time.perf_counter()
                for _ in range(warmup + (1 if c.compile else 0)):
                    one_step()
                sync()
                warm_s = time.perf_counter() - t0
                laps = []
                for _ in range(timed):
                    t = time.perf_counter()
                    one_step()
                    sync()
                    laps.append(time.perf_counter() - t)
        finally:
            with torch.no_grad():
                model.load_state_dict(saved)
            torch.set_rng_state(rng)
            model.train(was_training)
        step_s = statistics.median(laps)
        return Timing(step_s=step_s, setup_s=max(0.0, warm_s - (warmup + (1 if c.compile else 0)) * step_s))

    return time_candidate


# -- the cache ----------------------------------------------------------------------------------------------------
def cache_key(cfg: RunConfig, device: torch.device, world_size: int, batch_size: int, seq_len: int) -> str:
    fields = {"machine": cpu_features(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device": str(device.type), "model": cfg.model.architecture_fields(), "batch": batch_size,
              "seq": seq_len, "optimizer": cfg.train.optimizer, "ckpt": cfg.train.activation_checkpointing,
              "world": world_size, "v": CACHE_VERSION}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_path() -> Path:
    return slm_cache_dir() / CACHE_FILE


# -- resolving a run config ---------------------------------------------------------------------------------------
def _summary(choice: Candidate, timings: dict[Candidate, Timing], tokens_per_step: int, source: str) -> str:
    rates = ", ".join(f"{c.name} {tokens_per_step / t.step_s:,.0f} tok/s"
                      + (f" (+{t.setup_s:.0f} s set-up)" if t.setup_s >= 1 else "") for c, t in timings.items())
    return f"{choice.name} ({source}: {rates})"


def _dominant_phase(tc: TrainConfig) -> tuple[int, int, int]:
    """(batch size, seq len, steps) of the phase with the most tokens, and the run's total steps."""
    phases = tc.phase_list()
    p = max(phases, key=lambda p: p.steps * p.batch_size * p.seq_len)
    return p.batch_size, p.seq_len, sum(q.steps for q in phases)


def resolve_auto(cfg: RunConfig, dist: DistInfo, model: CausalLM | None = None, *,
                 saved: TrainConfig | None = None, log: Callable[[str], None] | None = None) -> RunConfig:
    """`cfg` with `train.precision` / `train.compile` "auto" replaced by a concrete choice (the module docstring
    says how). `saved`: the train section of the checkpoint a run resumes from — its choices are kept. `model`: the
    run's model to time (restored afterwards); built from `cfg.model` when not given."""
    tc = cfg.train
    if tc.precision != "auto" and tc.compile != "auto":
        return cfg
    if saved is not None:
        precision = saved.precision if tc.precision == "auto" and saved.precision != "auto" else tc.precision
        compile_ = saved.compile if tc.compile == "auto" and saved.compile != "auto" else tc.compile
        cfg = _with(cfg, precision, compile_, saved.calibration if precision != tc.precision else tc.calibration)
        tc = cfg.train
        if tc.precision != "auto" and tc.compile != "auto":
            return cfg
    device = dist.device
    if device.type != "cpu":
        return _with(cfg, _rule_precision(tc.precision, device), _rule_compile(tc.compile, device), "")
    batch_size, seq_len, steps = _dominant_phase(tc)
    tokens = tc.grad_accum * sum(p.steps * p.batch_size * p.seq_len for p in tc.phase_list())
    if tokens < MIN_TOKENS:
        precision = tc.precision if tc.precision != "auto" else short_run_precision()
        return _with(cfg, precision, "false" if tc.compile == "auto" else tc.compile,
                     f"{precision}, eager without measuring: a short run ({tokens:,} tokens < {MIN_TOKENS:,})")
    precisions = PRECISIONS if tc.precision == "auto" else (tc.precision,)
    can_compile = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++"))
    compile_options = ((False, True) if can_compile else (False,)) if tc.compile == "auto" else (tc.compile == "true",)
    key = cache_key(cfg, device, dist.world_size, batch_size, seq_len)
    choice_text = None
    if dist.is_main:
        cached = read_machine_cache(CACHE_FILE).get(key, {}).get("timings", {})
        known = {Candidate(n.split("+")[0], n.endswith("+compile")): Timing(*v) for n, v in cached.items()}
        needed = [Candidate(p, c) for p in precisions for c in compile_options]
        if log and not any(c in known for c in needed):
            log(f"calibrating precision/compile on this CPU ({len(precisions)} precisions"
                f"{', then compiled' if len(compile_options) > 1 else ''}; cached for later runs)")
        timer = _lazy_timer(lambda: step_timer(model if model is not None else _fresh_model(cfg, device), tc,
                                               batch_size, seq_len, device))
        choice, timings = calibrate(timer, precisions, compile_options, steps * tc.grad_accum, known)  # micro-steps
        measured = any(c not in known for c in timings)
        if measured:
            write_machine_cache(CACHE_FILE, key, {"timings": {c.name: [t.step_s, t.setup_s] for c, t in
                                                              {**known, **timings}.items()}, "when": time.time()})
        summary = _summary(choice, timings, batch_size * seq_len * tc.grad_accum, "measured" if measured else "cached")
        choice_text = f"{choice.precision}|{choice.compile}|{summary}"
    choice_text = _broadcast(choice_text, dist)
    precision, compiled, text = choice_text.split("|", 2)
    if log:
        log(f"precision/compile auto -> {text}")
    return _with(cfg, precision, "true" if compiled == "True" else "false", text)


def resolve_for_run(cfg: RunConfig, dist: DistInfo, model: CausalLM | None = None,
                    log: Callable[[str], None] | None = None) -> RunConfig:
    """`resolve_auto` for a run about to start or resume (the checkpoint `--train.resume` picks keeps its choices);
    for callers that need the precision before the trainer exists (a task's evaluation autocast)."""
    from .. import checkpoint as ckpt

    if cfg.train.precision != "auto" and cfg.train.compile != "auto":
        return cfg
    resume = ckpt.resume_path(cfg, warn=lambda m: None)
    saved = ckpt.load_config(resume).train if resume is not None else None
    return resolve_auto(cfg, dist, model, saved=saved, log=log)


def short_run_precision() -> str:
    """A short run's `auto` precision, unmeasured: bf16 where the CPU has AMX tiles (bf16 GEMMs several times
    fp32's there), else fp32."""
    return "bf16" if cpu_features()["amx"] else "fp32"


def _lazy_timer(build: Callable[[], Callable[[Candidate], Timing]]) -> Callable[[Candidate], Timing]:
    """A timer built on first use (a fully cached calibration builds no model)."""
    made: list[Callable[[Candidate], Timing]] = []

    def time_candidate(c: Candidate) -> Timing:
        if not made:
            made.append(build())
        return made[0](c)

    return time_candidate


def _fresh_model(cfg: RunConfig, device: torch.device) -> CausalLM:
    from ..models import init_model

    rng = torch.get_rng_state()
    try:
        return init_model(cfg.model, device, cfg.run.seed)
    finally:
        torch.set_rng_state(rng)


def _broadcast(text: str | None, dist: DistInfo) -> str:
    if not dist.enabled:
        return text
    import torch.distributed as tdist

    box = [text]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def _rule_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else (
        "fp16" if device.type == "cuda" else "fp32")


def _rule_compile(compile_: str, device: torch.device) -> str:
    if compile_ != "auto":
        return compile_
    return "true" if device.type == "cuda" and importlib.util.find_spec("triton") is not None else "false"


def _with(cfg: RunConfig, precision: str, compile_: str, calibration: str) -> RunConfig:
    train = dataclasses.replace(cfg.train, precision=precision, compile=compile_, calibration=calibration)
    return dataclasses.replace(cfg, train=train)


__all__ = ["Candidate", "Timing", "calibrate", "choose", "resolve_auto", "step_timer", "cache_path",
           "MIN_TOKENS"]
