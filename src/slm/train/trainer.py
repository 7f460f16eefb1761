"""The one training loop: pretraining and every post-training method run through `Trainer` (façade: `train()`).

What varies between methods is a `Task` (slm.train.task): it makes the (resumable, rank-aware) batch iterator of a
phase, counts the loss targets of a batch and returns the summed loss of a batch. The trainer owns everything else:
curriculum phases, gradient accumulation, precision, clipping, non-finite skipping, the lr schedule, eval, samples,
checkpoints, resume, metrics and progress. It is split into short methods with one job each — `step()` (one
optimizer step), `maybe_eval()`, `maybe_sample()`, `maybe_checkpoint()`, `log_step()` — and the process layout (DDP
or FSDP2) is `slm.train.parallel`'s, so the loop never learns it either.

Decisions:
- Loss normalisation: each optimizer step divides the summed loss by the number of targets in the whole global batch
  (all micro-batches, all ranks), counted before the forward passes. So 4 x 2 accumulation equals 1 x 8 exactly up to
  float summation order, also when micro-batches hold different numbers of targets (SFT masks), and DDP's gradient
  averaging is undone by a world-size factor.
- Auxiliary losses (`Task.aux_loss`, by default the model's `aux_losses()`, e.g. an MoE balance loss) are per-batch
  means: each is multiplied by its micro-batch's target count before that normalisation, so it enters the gradient as
  the target-weighted mean over the step. The logged `loss` is the task's loss alone; each aux loss is logged as
  `aux_<name>` (the same weighted mean). Without aux losses (every current model) the step is bitwise unchanged.
- A step whose loss or grad norm is not finite is skipped: its gradients are dropped, its batches are consumed, the
  step counter (and so the lr schedule) does not advance. It is logged with kind="skip", and the run aborts after
  `max_skipped_steps` consecutive skips instead of spinning forever.
- Exact resume: checkpoints hold model, optimizer, data-loader position, step/phase and RNG states, and the schedule is
  a pure function of the step; on CPU N + resume + M steps equals N + M steps bitwise (tested).
  A sharded (FSDP) run saves with torch.distributed.checkpoint and resumes on another world size when batch_size x
  grad_accum x processes stays the same (the loader position is a global row index); only rank 0 writes logs.
- Healing (`slm.train.guard`): a step whose loss spikes above the running window is skipped like a non-finite one
  (kind="spike"); weights are checked finite after the update (`check_finite_every`) and before every save, so a
  non-finite model is never checkpointed; `rollback_after` bad steps in a row, or broken weights, reload the newest
  healthy checkpoint (kind="rollback" in the log and the report), with the lr scaled by `rollback_lr_factor` and the
  data position kept (the bad window is not replayed). `--train.resume=auto` passes over unhealthy checkpoints.
- Crash safety: stale temp dirs of killed saves are removed at start (`checkpoint.clean_stale`); SIGTERM/SIGUSR1 save
  a checkpoint at the next step boundary and raise `Preempted` (`--train.preempt_signals`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from tqdm import tqdm

from ..config import PhaseConfig, RunConfig, check_run_config, save_config
from ..errors import Preempted, SlmError
from ..models import CausalLM, init_model
from .. import checkpoint as ckpt
from ..runtime import DistInfo, all_reduce_sum, barrier, init_distributed, matmul_precision, resolve_precision
from .calibrate import resolve_auto
from .guard import PreemptionFlag, SpikeGuard, signal_name
from .hostmem import retain_freed_memory
from .metrics import MetricsLogger, peak_flops
from .optim import build_optimizer
from .parallel import all_finite, clip_grad_norm, load_sharded_state, parallelize, sharded_state
from .schedule import lr_multiplier
from .task import ResumableIterator, Task


@dataclass
class TrainResult:
    step: int
    history: list[dict]
    final_eval: dict
    checkpoint: Path | None
    best_checkpoint: Path | None
    tok_per_s: float
    skipped_steps: int = 0
    extras: dict = field(default_factory=dict)


def _tune_cpu(cfg: RunConfig, dist: DistInfo) -> None:
    """Threads per process, and freed host memory kept between steps (slm.train.hostmem)."""
    if dist.device.type == "cpu":
        n = cfg.train.num_threads or max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
        torch.set_num_threads(n)
        if cfg.train.keep_freed_memory:
            retain_freed_memory()


def _check_same_model(cfg: RunConfig, path: Path) -> None:
    saved = ckpt.load_config(path).model.architecture_fields()
    mine = cfg.model.architecture_fields()
    diff = [k for k in mine if saved.get(k) != mine[k]]
    if diff:
        k = diff[0]
        raise SlmError(f"{path}: checkpoint model differs from this config ({', '.join(f'model.{d}' for d in diff)}; "
                       f"e.g. {k}={saved.get(k)!r} vs {mine[k]!r}); resume with the checkpoint's config.yaml "
                       f"or start a new run dir")


def _reused_run_dir_error(cfg: RunConfig, old: list[Path]) -> SlmError:
    return SlmError(f"{cfg.run_dir()}: holds checkpoints of an earlier run (latest {old[-1].name}); continue it "
                    f"with --train.resume=auto, replace it with --run.overwrite=true, or pick --run.out_dir")


def refuse_reused_run_dir(cfg: RunConfig) -> None:
    """Before a run writes anything into its run dir: a fresh run (no --train.resume, no --run.overwrite) into a dir
    holding an earlier run's checkpoints is refused, so the refused run leaves config.yaml & co. as they were.
    (A resume is checked by the trainer, which reads the checkpoints.)"""
    if cfg.train.resume or cfg.run.overwrite:
        return
    old = ckpt.list_checkpoints(cfg.run_dir())
    if old:
        raise _reused_run_dir_error(cfg, old)


def _check_fresh_run_dir(cfg: RunConfig, dist: DistInfo) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's in the same directory."""
    old = ckpt.list_checkpoints(cfg.run_dir())
    if not old:
        return
    if not cfg.run.overwrite:
        raise _reused_run_dir_error(cfg, old)
    if dist.is_main:
        import shutil

        shutil.rmtree(cfg.run_dir() / "checkpoints")
    barrier(dist)


def _check_init_from(cfg: RunConfig, init: Path) -> None:
    init_cfg = ckpt.load_config(init).model.architecture_fields()
    mine = cfg.model.architecture_fields()
    bad = [k for k in sorted(set(init_cfg) | set(mine)) if init_cfg.get(k) != mine.get(k)]
    if bad:
        raise SlmError(f"--train.init_from={init}: its model differs in {', '.join(bad)}; use its config")


@dataclass
class TrainState:
    """The loop's own part of a checkpoint (trainer_state.pt, next to RNG and scaler states)."""

    step: int = 0  # optimizer steps done
    phase: int = 0  # curriculum phase the loader state belongs to
    loader: dict | None = None  # data position inside that phase (None: the phase was finished)
    best_val: float = math.inf
    best_path: str | None = None
    tokens: int = 0  # tokens trained on, all ranks
    lr_scale: float = 1.0  # product of the lr cuts of earlier rollbacks

    def restore(self, saved: dict) -> None:
        for f in dataclasses.fields(self):
            if f.name in saved:
                setattr(self, f.name, saved[f.name])


@dataclass
class StepStats:
    """What one optimizer step reports to the log."""

    loss: float  # the task's loss, mean per target of the global batch
    grad_norm: float
    tokens: int  # tokens of the global batch
    aux: dict[str, float]  # aux_<name> -> target-weighted mean of that auxiliary loss


class _Rollback(Exception):
    """Raised inside a step when the run must go back to a healthy checkpoint from before step `bad_since` (the first
    step whose weights are suspect); handled by `fit`."""

    def __init__(self, reason: str, bad_since: int) -> None:
        super().__init__(reason)
        self.bad_since = bad_since


class Trainer:
    """Builds (or resumes) everything a run needs on construction; `fit()` trains it to the last step."""

    def __init__(self, cfg: RunConfig, task: Task, *, tokenizer: Any = None, model: CausalLM | None = None,
                 dist: DistInfo | None = None, progress: bool = True,
                 sample_fn: Callable[[CausalLM, int], list[str]] | None = None) -> None:
        check_run_config(cfg)
        self.dist = dist = dist or init_distributed(cfg.run.device)
        _tune_cpu(cfg, dist)
        self.cfg, self.tc = cfg, cfg.train
        self.task, self.tokenizer, self.progress, self.sample_fn = task, tokenizer, progress, sample_fn
        self.run_dir = cfg.run_dir()
        self.notes: list[tuple[str, dict]] = []  # (kind, record) for the log once it is open
        if dist.is_main:
            removed = ckpt.clean_stale(self.run_dir)
            if removed:
                self.notes.append(("cleanup", {"removed": removed}))
        barrier(dist)
        self.resume_from = ckpt.resume_path(cfg, warn=lambda m: self.notes.append(("resume_skip", {"reason": m})))
        if self.resume_from is not None:
            _check_same_model(cfg, self.resume_from)
        else:
            _check_fresh_run_dir(cfg, dist)
        self.model = self._build_model(model)
        # precision/compile "auto": timed on this model (or the choice the resumed checkpoint recorded)
        saved = ckpt.load_config(self.resume_from).train if self.resume_from is not None else None
        self.cfg = cfg = resolve_auto(cfg, dist, self.model, saved=saved,
                                      log=lambda m: tqdm.write(f"slm: {m}", file=sys.stderr) if progress else None)
        self.tc = tc = cfg.train
        if tc.calibration:
            self.notes.append(("calibration", {"precision": tc.precision, "compile": tc.compile,
                                               "why": tc.calibration}))
        self.autocast_dtype, use_scaler = resolve_precision(tc.precision, dist.device)
        self.parallel = parallelize(self.model, dist, tc, self.autocast_dtype)  # FSDP shards in place: optimizer after
        if dist.enabled or self.parallel.kind == "fsdp":
            self.notes.append(("parallel", {"layout": self.parallel.note}))
        self.optimizer = build_optimizer(self.model, tc)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.phases = tc.phase_list()
        self.bounds = [sum(p.steps for p in self.phases[: i + 1]) for i in range(len(self.phases))]  # last step of each
        self.total_steps = self.bounds[-1]
        self.state = TrainState()
        self.guard = SpikeGuard(tc.spike_zscore, tc.spike_window, tc.spike_min_steps)
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self.logger = self._open_logger()
        if dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
        compute_dtype = torch.bfloat16 if tc.precision == "bf16-matmul" else self.autocast_dtype or torch.float32
        self.peak = peak_flops(dist.device, compute_dtype)  # the GEMMs' dtype: bf16-matmul runs them in bf16
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.autocast = (torch.autocast(dist.device.type, dtype=self.autocast_dtype)
                         if self.autocast_dtype is not None else contextlib.nullcontext())
        self.rates: list[float] = []  # tokens/s of each step
        self.skipped = self.consecutive_skips = 0
        self.spikes = self.rollbacks = 0
        self.bad_since = 0  # state.step at the first step of the current run of bad steps
        self.preempt: PreemptionFlag | None = None
        self.loader: ResumableIterator | None = None  # the running phase's loader (its position is what a rollback
        self.loader_index = -1  # keeps) and that phase's index
        for kind, record in self.notes:
            self.logger.log(kind, self.state.step, **record)
        self.last_eval: dict = {}
        self.last_eval_step = -1
        self.last_checkpoint: Path | None = None
        self.bar: tqdm | None = None

    # -- setup ------------------------------------------------------------------------------------------------------
    def _build_model(self, model: CausalLM | None) -> CausalLM:
        """The given model as is, else a fresh one with the resumed (or --train.init_from) weights."""
        tc = self.tc
        if model is None:
            model = init_model(self.cfg.model, self.dist.device, self.cfg.run.seed)
            init = self.resume_from or (Path(tc.init_from) if tc.init_from else None)
            if init is not None and not (init == self.resume_from and ckpt.is_sharded(init)):  # sharded: _restore
                if self.resume_from is None:
                    _check_init_from(self.cfg, init)
                model.load_state_dict(ckpt.load_state_dict(init))
        model.to(self.dist.device)
        model.gradient_checkpointing = tc.activation_checkpointing
        model.train()
        return model

    def _restore(self, path: Path) -> None:
        """Optimizer, loop state, RNG and grad-scaler state of a checkpoint (the weights are already loaded)."""
        opt_state, saved = ckpt.load_training_state(path)
        if ckpt.is_sharded(path):  # weights and optimizer state from dcp/, resharded to this run's layout
            try:
                load_sharded_state(self.model, self.optimizer.optimizers, path)
            except (RuntimeError, KeyError, ValueError) as exc:
                raise SlmError(f"{path}: sharded state does not fit this run ({str(exc).splitlines()[0][:100]}); "
                               f"resume with the same --train.optimizer and model config") from None
        elif self.parallel.sharded:
            raise SlmError(f"{path}: a replicated (ddp) checkpoint cannot resume a sharded run; resume it with "
                           f"--train.parallel=ddp, or start from its weights with --train.init_from")
        else:
            try:
                self.optimizer.load_state_dict(opt_state)
            except ValueError as exc:
                raise SlmError(f"{path}: optimizer state does not match --train.optimizer ({exc})") from None
        rows = saved.get("rows_per_step")
        if rows is not None and saved.get("loader") is not None and rows != self._rows_per_step(saved["phase"]):
            raise SlmError(f"{path}: saved by a run taking {rows} rows per step; make --train.batch_size x "
                           f"--train.grad_accum x processes = {rows} (now {self._rows_per_step(saved['phase'])}) to "
                           f"continue its data order")
        self.state.restore(saved)
        self.guard.load_state_dict(saved.get("spike_window"))
        torch.set_rng_state(saved["rng_cpu"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])

    def _open_logger(self) -> MetricsLogger:
        tc, main = self.tc, self.dist.is_main
        wandb = {"project": tc.wandb_project, "name": self.cfg.run.name, "config": self.cfg.to_dict()}
        return MetricsLogger(self.run_dir, enabled=main, tensorboard=tc.tensorboard,
                             wandb_cfg=wandb if tc.wandb and main else None,
                             resume_step=self.state.step if self.resume_from is not None else None)

    # -- the loop ---------------------------------------------------------------------------------------------------
    def _every(self, interval: int) -> bool:
        return bool(interval) and self.state.step % interval == 0

    def fit(self) -> TrainResult:
        """Train every phase from where the state stands to the last step; returns history and checkpoints."""
        self.bar = tqdm(total=self.total_steps, initial=self.state.step, unit="step", dynamic_ncols=True,
                        disable=not (self.progress and self.dist.is_main), desc=self.cfg.run.name)
        try:
            with PreemptionFlag(self.tc.preempt_signals) as self.preempt, \
                    matmul_precision(self.tc.precision, self.dist.device):
                while True:
                    try:
                        for index, phase in enumerate(self.phases):
                            if self.state.step < self.bounds[index]:
                                self.run_phase(index, phase)
                        break
                    except _Rollback as exc:
                        self.task.close()
                        self.rollback(str(exc), exc.bad_since)
        finally:
            self.task.close()
            self.bar.close()
            self.logger.close()
        return self.result()

    def run_phase(self, index: int, phase: PhaseConfig) -> None:
        loader = self.task.loader(phase, self.dist, self.cfg.run.seed + index)
        if self.state.loader is not None and self.state.phase == index:
            loader.load_state_dict(self.state.loader)
        batches = iter(loader)
        self.loader, self.loader_index = loader, index
        flops_per_token = self.model.flops_per_token(phase.seq_len)
        while self.state.step < self.bounds[index]:
            t0 = time.perf_counter()
            stats = self.step(batches)
            if stats is None:
                continue
            self.log_step(stats, time.perf_counter() - t0, flops_per_token, index, phase)
            self.maybe_eval(phase)
            self.maybe_sample()
            self.maybe_checkpoint(index, phase, loader)
            self.maybe_preempt(index, phase, loader)
        self.task.close()  # stop the loader's threads before the next phase builds its own

    # -- one optimizer step -----------------------------------------------------------------------------------------
    def step(self, batches: Iterator[Any]) -> StepStats | None:
        """One optimizer step over `grad_accum` micro-batches; None when it was skipped as non-finite."""
        tc = self.tc
        mult = lr_multiplier(self.state.step, self.total_steps, kind=tc.schedule, warmup_steps=tc.warmup_steps,
                             min_lr_ratio=tc.min_lr_ratio, decay_fraction=tc.decay_fraction)
        self.optimizer.set_lr_multiplier(mult * self.state.lr_scale)  # x * 1.0 == x: no rollback, no change
        micro = [next(batches) for _ in range(tc.grad_accum)]
        loss, aux = self.forward_backward(micro)
        grad_norm = self.clip_gradients()
        tokens = sum(self.task.tokens(b) for b in micro) * self.dist.world_size
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.skip(loss, grad_norm)
            return None
        if self.guard.is_spike(loss):
            self.skip(loss, grad_norm, kind="spike")
            return None
        self.consecutive_skips = 0
        self.guard.accept(loss)
        self.optimizer_step()
        self.state.step += 1
        self.state.tokens += tokens
        if self._every(tc.check_finite_every) and not self.weights_finite():
            raise _Rollback(f"non-finite weights after the update of step {self.state.step}", self.state.step)
        return StepStats(loss=loss, grad_norm=grad_norm, tokens=tokens, aux=aux)

    def forward_backward(self, micro: list[Any]) -> tuple[float, dict[str, float]]:
        """Accumulate the gradients of the micro-batches; returns the step's loss and aux losses (per target)."""
        counts = [self.task.count(b) for b in micro]
        total = torch.tensor(float(sum(counts)), dtype=torch.float64)
        n_targets = max(int(all_reduce_sum(total, self.dist).item()), 1)
        scale = self.dist.world_size / n_targets  # undoes DDP's averaging over ranks
        module = self.parallel.module
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        aux_sums: dict[str, torch.Tensor] = {}
        for i, (batch, count) in enumerate(zip(micro, counts)):
            with self.parallel.micro_batch(last=i == len(micro) - 1):
                with self.autocast:
                    summed = self.task.loss(module, batch, self.tc.loss_chunk)
                    aux = self.task.aux_loss(module)
                objective = summed
                for name, value in aux.items():  # per-batch means: weighted by targets to survive the normalisation
                    objective = objective + value * count
                    aux_sums[name] = aux_sums.get(name, 0.0) + value.detach().double() * count
                loss = objective * scale
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += summed.detach().double()
        loss_val = all_reduce_sum(loss_sum, self.dist).item() / n_targets
        aux_vals = {f"aux_{k}": all_reduce_sum(v, self.dist).item() / n_targets for k, v in sorted(aux_sums.items())}
        return loss_val, aux_vals

    def clip_gradients(self) -> float:
        """Unscale (mixed precision), clip to --train.grad_clip (0 = only measure); the global grad norm."""
        if self.scaler is not None:
            for opt in self.optimizer.optimizers.values():
                self.scaler.unscale_(opt)
        clip = self.tc.grad_clip if self.tc.grad_clip > 0 else float("inf")
        return clip_grad_norm(self.params, clip, self.parallel.sharded)  # FSDP: the norm over all shards

    def optimizer_step(self) -> None:
        if self.scaler is not None:
            for opt in self.optimizer.optimizers.values():
                self.scaler.step(opt)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def skip(self, loss: float, grad_norm: float, kind: str = "skip") -> None:
        """Drop a bad step's gradients (kind "skip": non-finite, "spike": the spike guard's); after `rollback_after`
        in a row go back to the last healthy checkpoint, and abort after `max_skipped_steps` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()
        self.skipped += 1
        self.spikes += kind == "spike"
        self.consecutive_skips += 1
        if self.consecutive_skips == 1:  # the weights the streak's first loss came from are suspect from here on
            self.bad_since = self.state.step
        extra = {"zscore": self.guard.score(loss)} if kind == "spike" else {}
        self.logger.log(kind, self.state.step, loss=loss, grad_norm=grad_norm, **extra)
        if self.consecutive_skips > self.tc.max_skipped_steps:
            raise SlmError(f"{self.consecutive_skips} consecutive non-finite or spiked steps at step {self.state.step};"
                           f" lower --train.lr or use --train.precision=fp32")
        if self.tc.rollback_after and self.consecutive_skips >= self.tc.rollback_after:
            raise _Rollback(f"{self.consecutive_skips} bad steps in a row (last: {kind}, loss {loss:.4g})",
                            self.bad_since)

    def weights_finite(self) -> bool:
        """All trained weights finite: one fused norm per tensor and one host sync, 0.07-0.1 s for 135M parameters on
        this machine's 2 busy CPU cores (a few % of a CPU step; hence every `check_finite_every` steps, default 10 —
        broken weights also show at once as a non-finite loss, and every save checks them)."""
        return all_finite(self.params, self.dist, self.parallel.sharded)  # FSDP: local shards, agreed over ranks

    def rollback(self, reason: str, bad_since: int) -> None:
        """Reload the newest healthy checkpoint from before step `bad_since` (a checkpoint of the suspect weights
        themselves would only bring the trouble back): weights, optimizer, step, RNG; scale the lr; keep the data
        position. The checkpoints after it belong to the abandoned trajectory and are removed (resume must not pick
        them)."""
        tc = self.tc
        self.rollbacks += 1
        found = ckpt.list_checkpoints(self.run_dir)
        older = [p for p in found if _step_of(p) < bad_since]
        target = next((p for p in reversed(older) if ckpt.is_healthy(p) is None), None)
        if target is None or self.rollbacks > tc.max_rollbacks:
            why = "no healthy checkpoint to roll back to (set --train.checkpoint_every)" if target is None else \
                f"already rolled back {tc.max_rollbacks} times (--train.max_rollbacks)"
            raise SlmError(f"training is unstable at step {self.state.step} ({reason}) and {why}; lower --train.lr "
                           f"or use --train.precision=fp32")
        here = {"step": self.state.step, "index": self.loader_index,
                "loader": self.loader.state_dict() if self.loader is not None else None}
        lr_scale = self.state.lr_scale * tc.rollback_lr_factor
        if self.dist.is_main:
            for p in found:
                if _step_of(p) > _step_of(target):
                    ckpt.remove_checkpoint(p)
        barrier(self.dist)
        self.optimizer.zero_grad(set_to_none=True)
        if not ckpt.is_sharded(target):  # a sharded one's weights come with _restore
            self.model.load_state_dict(ckpt.load_state_dict(target))
        self._restore(target)  # optimizer, step, phase, loader position, RNG, scaler, spike window
        self.state.lr_scale = lr_scale
        resumed_phase = next(i for i, b in enumerate(self.bounds) if self.state.step < b or i == len(self.bounds) - 1)
        skipped_data = tc.rollback_skip_data and here["loader"] is not None and resumed_phase == here["index"]
        if skipped_data:  # go on from where the bad window ended instead of replaying it
            self.state.phase, self.state.loader = here["index"], here["loader"]
        self.consecutive_skips = 0
        self.last_checkpoint = target
        self.logger.log("rollback", here["step"], to_step=self.state.step, checkpoint=target.name, reason=reason,
                        lr_scale=lr_scale, skipped_data=bool(skipped_data))
        if self.bar is not None:
            self.bar.n = self.state.step
            self.bar.write(f"[step {here['step']}] rollback to {target.name}: {reason}; lr x{lr_scale:g}")

    # -- after a step -----------------------------------------------------------------------------------------------
    def log_step(self, stats: StepStats, seconds: float, flops_per_token: float, index: int,
                 phase: PhaseConfig) -> None:
        step = self.state.step
        tok_s = stats.tokens / seconds
        self.rates.append(tok_s)
        mfu = self.peak.mfu(flops_per_token * tok_s / self.dist.world_size)  # <= 1: a beaten peak is raised
        lr = self.optimizer.param_groups[0]["lr"]
        record = dict(loss=stats.loss, lr=lr, grad_norm=stats.grad_norm, tok_per_s=tok_s, mfu=mfu,
                      mfu_peak_tflops=self.peak.flops / 1e12, tokens=self.state.tokens, seq_len=phase.seq_len, phase=index, **stats.aux)
        record.update(self.task.step_metrics())  # method-specific (DPO rewards, GRPO rewards)
        record.update(self.model.step_metrics())  # architecture-specific (spike rates, expert usage)
        if self._every(self.tc.log_every) or step == self.total_steps or step == 1:
            self.logger.log("train", step, **record)
        else:
            self.logger.history.append({"kind": "train", "step": step, **record})
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{stats.loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}",
                             mfu=f"{mfu:.0%} of {self.peak.describe()}", refresh=False)

    def evaluate(self, phase: PhaseConfig) -> dict:
        seq = self.cfg.eval.seq_len or phase.seq_len
        metrics = self.task.evaluate(self.model, seq, self.tc.eval_batches)
        if metrics:
            self.logger.log("eval", self.state.step, **metrics)
        return metrics

    def maybe_eval(self, phase: PhaseConfig) -> None:
        if self._every(self.tc.eval_every) or self.state.step == self.total_steps:
            self.last_eval, self.last_eval_step = self.evaluate(phase), self.state.step

    def maybe_sample(self) -> None:
        if self.sample_fn is None or not self._every(self.tc.sample_every) or not self.dist.is_main:
            return
        if self.parallel.sharded:  # rank 0 alone cannot run a sharded forward (it needs every rank's all-gathers)
            return
        for text in self.sample_fn(self.model, self.state.step):
            self.logger.log("sample", self.state.step, text=text)
            self.bar.write(f"[step {self.state.step}] {text!r}")

    def maybe_checkpoint(self, index: int, phase: PhaseConfig, loader: ResumableIterator) -> None:
        step = self.state.step
        if not (self._every(self.tc.checkpoint_every) or step == self.total_steps):
            return
        val = self.last_eval if self.last_eval_step == step else self.evaluate(phase)
        self.save_checkpoint(index, loader.state_dict() if step < self.bounds[index] else None, val)

    def maybe_preempt(self, index: int, phase: PhaseConfig, loader: ResumableIterator) -> None:
        """After a preemption signal (on any rank): save at this step boundary and raise Preempted."""
        signum = self.preempt.signum if self.preempt is not None else None
        if self.dist.world_size > 1:  # every rank must stop at the same step
            flag = torch.tensor(float(signum or 0), dtype=torch.float64, device=self.dist.device)
            signum = int(all_reduce_sum(flag, self.dist).item()) and (signum or 15)
        if not signum:
            return
        step = self.state.step
        path = self.last_checkpoint
        if path is None or path.name != f"step_{step:06d}":
            val = self.last_eval if self.last_eval_step == step else {}
            path = self.save_checkpoint(index, loader.state_dict() if step < self.bounds[index] else None, val)
        self.logger.log("preempted", step, signal=signal_name(signum), checkpoint=path.name)
        raise Preempted(f"stopped by {signal_name(signum)} at step {step}; checkpoint {path} saved — continue with "
                        f"--train.resume=auto", signum)

    def save_checkpoint(self, index: int, loader_state: dict | None, val: dict) -> Path:
        """Save everything resume needs (all ranks wait); keeps the last `keep_last` and the best by val loss.
        Non-finite weights are never saved: the run rolls back instead."""
        st = self.state
        if not (self.weights_finite() if self.parallel.sharded else ckpt.params_finite(self.model)):
            raise _Rollback(f"non-finite weights at the checkpoint of step {st.step}", st.step)
        path = self.run_dir / "checkpoints" / f"step_{st.step:06d}"
        val_loss = val.get("loss", math.inf) if val else math.inf
        if val_loss < st.best_val:
            st.best_val, st.best_path = val_loss, str(path)
        trainer_state = {"step": st.step, "phase": index, "loader": loader_state, "best_val": st.best_val,
                         "best_path": st.best_path, "tokens": st.tokens, "rng_cpu": torch.get_rng_state(),
                         "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                         "lr_scale": st.lr_scale, "spike_window": self.guard.state_dict(),
                         "rows_per_step": self._rows_per_step(index), "world_size": self.dist.world_size}
        if self.parallel.sharded_checkpoints:  # every rank writes its shards; rank 0 the rest and meta.json
            ckpt.save_sharded_checkpoint(path, state=sharded_state(self.model, self.optimizer.optimizers),
                                         main=self.dist.is_main, config=self.cfg, tokenizer=self.tokenizer,
                                         trainer_state=trainer_state, extra_meta={"val": val}, overwrite=True)
        elif self.dist.is_main:
            ckpt.save_checkpoint(path, model=self.model, config=self.cfg, tokenizer=self.tokenizer,
                                 optimizer_state=self.optimizer.state_dict(), trainer_state=trainer_state,
                                 extra_meta={"val": val}, overwrite=True)
        if self.dist.is_main:
            ckpt.prune_checkpoints(self.run_dir, self.tc.keep_last, Path(st.best_path) if st.best_path else None)
        barrier(self.dist)
        self.last_checkpoint = path
        return path

    def _rows_per_step(self, phase: int) -> int:
        """Training rows one optimizer step takes from phase `phase`'s data, over all ranks: the loader's position is
        a global row index, so a run resumes on any world size that keeps this number (2 x 4 rows == 1 x 4 x 2
        micro-batches) and continues the same data order."""
        return self.phases[phase].batch_size * self.tc.grad_accum * self.dist.world_size

    def result(self) -> TrainResult:
        steady = self.rates[len(self.rates) // 5:] or self.rates  # the first steps include warm-up and compiling
        best = self.state.best_path
        return TrainResult(step=self.state.step, history=self.logger.history, final_eval=self.last_eval,
                           checkpoint=self.last_checkpoint, best_checkpoint=Path(best) if best else None,
                           tok_per_s=statistics.median(steady) if steady else 0.0, skipped_steps=self.skipped,
                           extras={"spiked_steps": self.spikes, "rollbacks": self.rollbacks,
                                   "lr_scale": self.state.lr_scale})


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def train(cfg: RunConfig, task: Task, *, tokenizer: Any = None, model: CausalLM | None = None,
          dist: DistInfo | None = None, progress: bool = True,
          sample_fn: Callable[[CausalLM, int], list[str]] | None = None) -> TrainResult:
    """Run (or resume) training as configured; returns the history and where the checkpoints went."""
    return Trainer(cfg, task, tokenizer=tokenizer, model=model, dist=dist, progress=progress,
                   sample_fn=sample_fn).fit()
