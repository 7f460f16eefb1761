"""The one training loop — pretraining and every post-training method run through `train()`.

What varies between methods is a `Task`: it makes the (resumable, rank-aware) batch iterator of a phase, counts the
loss targets of a batch and returns the summed loss of a batch. The loop owns everything else: curriculum phases,
gradient accumulation, precision, clipping, non-finite skipping, the lr schedule, eval, samples, checkpoints, resume,
metrics and progress.

Decisions:
- Loss normalisation: each optimizer step divides the summed loss by the number of targets in the whole global batch
  (all micro-batches, all ranks), counted before the forward passes. So 4 x 2 accumulation equals 1 x 8 exactly up to
  float summation order, also when micro-batches hold different numbers of targets (SFT masks), and DDP's gradient
  averaging is undone by a world-size factor.
- A step whose loss or grad norm is not finite is skipped: its gradients are dropped, its batches are consumed, the
  step counter (and so the lr schedule) does not advance. It is logged with kind="skip", and the run aborts after
  `max_skipped_steps` consecutive skips instead of spinning forever.
- Exact resume: checkpoints hold model, optimizer, data-loader position, step/phase and RNG states, and the schedule is
  a pure function of the step; on CPU N + resume + M steps equals N + M steps bitwise (tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from tqdm import tqdm

from ..config import PhaseConfig, RunConfig, TrainConfig, save_config
from ..errors import SlmError
from ..models import CausalLM, init_model
from .. import checkpoint as ckpt
from ..runtime import DistInfo, all_reduce_sum, barrier, init_distributed, resolve_precision
from .hostmem import retain_freed_memory
from .metrics import MetricsLogger, peak_flops
from .optim import build_optimizer
from .schedule import lr_multiplier


class ResumableIterator(Protocol):
    def __iter__(self) -> Iterator[Any]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Task(Protocol):
    """What a training method supplies to the loop."""

    def loader(self, phase: PhaseConfig, dist: DistInfo, seed: int) -> ResumableIterator: ...
    def count(self, batch: Any) -> int: ...  # loss targets in a batch (the normaliser)
    def loss(self, model: torch.nn.Module, batch: Any, loss_chunk: int) -> torch.Tensor: ...  # summed loss
    def evaluate(self, model: CausalLM, seq_len: int, max_batches: int) -> dict: ...  # val metrics (may be {})
    def tokens(self, batch: Any) -> int: ...  # tokens processed (throughput)


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


# `--train.compile=auto` compiles a CPU run of at least this many tokens per process. Compiling costs ~15-40 s up
# front, then steps run 1.6x (quickstart: 10.6k eager vs 16.8k tok/s compiled) to 1.8x (bench/train_throughput.py's
# reference model: 5.2k eager bf16 vs 9.4k) faster: it pays off after ~0.3-0.5M tokens; the bound leaves a 2x margin.
# Unit-test-sized runs stay eager.
AUTO_COMPILE_MIN_TOKENS = 1_000_000


def resolve_compile(tc: TrainConfig, device: torch.device) -> bool:
    """Whether to torch.compile: `--train.compile` true/false as given; auto compiles on CUDA (when triton is there)
    and on CPU for runs of >= AUTO_COMPILE_MIN_TOKENS tokens per process when a C++ compiler is on PATH (inductor's
    CPU code is C++)."""
    if tc.compile != "auto":
        return tc.compile == "true"
    if device.type == "cuda":
        return importlib.util.find_spec("triton") is not None
    if device.type != "cpu":
        return False
    tokens = tc.grad_accum * sum(p.steps * p.batch_size * p.seq_len for p in tc.phase_list())
    return tokens >= AUTO_COMPILE_MIN_TOKENS and any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++",
                                                                                "clang++"))


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


def _check_fresh_run_dir(cfg: RunConfig, dist: DistInfo) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's in the same directory."""
    old = ckpt.list_checkpoints(cfg.run_dir())
    if not old:
        return
    if not cfg.run.overwrite:
        raise SlmError(f"{cfg.run_dir()}: holds checkpoints of an earlier run (latest {old[-1].name}); continue it "
                       f"with --train.resume=auto, replace it with --run.overwrite=true, or pick --run.out_dir")
    if dist.is_main:
        import shutil

        shutil.rmtree(cfg.run_dir() / "checkpoints")
    barrier(dist)


def _global_tokens(task: Task, micro: list, dist: DistInfo) -> int:
    n = torch.tensor(float(sum(task.count(b) for b in micro)), dtype=torch.float64)
    return int(all_reduce_sum(n, dist).item())


def train(cfg: RunConfig, task: Task, *, tokenizer: Any = None, model: CausalLM | None = None,
          dist: DistInfo | None = None, progress: bool = True,
          sample_fn: Callable[[CausalLM, int], list[str]] | None = None) -> TrainResult:
    """Run (or resume) training as configured; returns the history and where the checkpoints went."""
    dist = dist or init_distributed(cfg.run.device)
    device = dist.device
    _tune_cpu(cfg, dist)
    tc = cfg.train
    compile_model = resolve_compile(tc, device)
    if tc.compile == "auto":  # the run's config.yaml records what auto chose
        tc = dataclasses.replace(tc, compile="true" if compile_model else "false")
        cfg = dataclasses.replace(cfg, train=tc)
    run_dir = cfg.run_dir()
    autocast_dtype, use_scaler = resolve_precision(tc.precision, device)

    resume_from = ckpt.resume_path(cfg)
    if resume_from is not None:
        _check_same_model(cfg, resume_from)
    else:
        _check_fresh_run_dir(cfg, dist)
    if model is None:
        model = init_model(cfg.model, device, cfg.run.seed)
        init = resume_from or (Path(tc.init_from) if tc.init_from else None)
        if init is not None:
            if resume_from is None:
                init_cfg = ckpt.load_config(init).model.architecture_fields()
                mine = cfg.model.architecture_fields()
                bad = [k for k in set(init_cfg) | set(mine) if init_cfg.get(k) != mine.get(k)]
                if bad:
                    raise SlmError(f"--train.init_from={init}: its model differs in {', '.join(bad)}; use its config")
            model.load_state_dict(ckpt.load_state_dict(init))
    model.to(device)
    model.gradient_checkpointing = tc.activation_checkpointing
    model.train()
    optimizer = build_optimizer(model, tc)
    scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    phases = tc.phase_list()
    bounds = [sum(p.steps for p in phases[: i + 1]) for i in range(len(phases))]
    total_steps = bounds[-1]
    state: dict[str, Any] = {"step": 0, "phase": 0, "loader": None, "best_val": math.inf, "best_path": None,
                             "tokens": 0}
    if resume_from is not None:
        opt_state, saved = ckpt.load_training_state(resume_from)
        try:
            optimizer.load_state_dict(opt_state)
        except ValueError as exc:
            raise SlmError(f"{resume_from}: optimizer state does not match --train.optimizer ({exc})") from None
        state.update({k: saved[k] for k in state if k in saved})
        torch.set_rng_state(saved["rng_cpu"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])

    train_model: torch.nn.Module = model
    if compile_model:
        train_model = torch.compile(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        # The model's buffers (RoPE tables, causal bias) are constants every rank builds alike: no per-step broadcast.
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None,
                          broadcast_buffers=False)

    logger = MetricsLogger(run_dir, enabled=dist.is_main, tensorboard=tc.tensorboard,
                           wandb_cfg={"project": tc.wandb_project, "name": cfg.run.name, "config": cfg.to_dict()}
                           if tc.wandb and dist.is_main else None,
                           resume_step=state["step"] if resume_from is not None else None)
    if dist.is_main:
        save_config(cfg, run_dir / "config.yaml")
    peak = peak_flops(device, autocast_dtype or torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())

    step = state["step"]
    bar = tqdm(total=total_steps, initial=step, disable=not (progress and dist.is_main), unit="step",
               dynamic_ncols=True, desc=cfg.run.name)
    rates: list[float] = []
    consecutive_skips = skipped = 0
    last_eval: dict = {}
    last_eval_step = -1
    last_ckpt: Path | None = None

    def do_eval(phase: PhaseConfig) -> dict:
        seq = cfg.eval.seq_len or phase.seq_len
        metrics = task.evaluate(model, seq, tc.eval_batches)
        if metrics:
            logger.log("eval", step, **metrics)
        return metrics

    def do_checkpoint(phase_idx: int, loader_state: dict | None, val: dict) -> Path:
        nonlocal last_ckpt
        path = run_dir / "checkpoints" / f"step_{step:06d}"
        val_loss = val.get("loss", math.inf) if val else math.inf
        if val_loss < state["best_val"]:
            state["best_val"], state["best_path"] = val_loss, str(path)
        trainer_state = {"step": step, "phase": phase_idx, "loader": loader_state, "best_val": state["best_val"],
                         "best_path": state["best_path"], "tokens": state["tokens"], "rng_cpu": torch.get_rng_state(),
                         "scaler": scaler.state_dict() if scaler is not None else None}
        if dist.is_main:
            ckpt.save_checkpoint(path, model=model, config=cfg, tokenizer=tokenizer,
                                 optimizer_state=optimizer.state_dict(), trainer_state=trainer_state,
                                 extra_meta={"val": val})
            ckpt.prune_checkpoints(run_dir, tc.keep_last, Path(state["best_path"]) if state["best_path"] else None)
        barrier(dist)
        last_ckpt = path
        return path

    try:
        for phase_idx, phase in enumerate(phases):
            if step >= bounds[phase_idx]:
                continue
            loader = task.loader(phase, dist, cfg.run.seed + phase_idx)
            if state["loader"] is not None and state["phase"] == phase_idx:
                loader.load_state_dict(state["loader"])
            batches = iter(loader)
            flops_per_token = model.flops_per_token(phase.seq_len)
            while step < bounds[phase_idx]:
                t0 = time.perf_counter()
                mult = lr_multiplier(step, total_steps, kind=tc.schedule, warmup_steps=tc.warmup_steps,
                                     min_lr_ratio=tc.min_lr_ratio, decay_fraction=tc.decay_fraction)
                optimizer.set_lr_multiplier(mult)
                micro = [next(batches) for _ in range(tc.grad_accum)]
                n_targets = max(_global_tokens(task, micro, dist), 1)
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                for i, batch in enumerate(micro):
                    sync_ctx = (train_model.no_sync() if dist.enabled and i < len(micro) - 1
                                else contextlib.nullcontext())
                    with sync_ctx:
                        with autocast:
                            summed = task.loss(train_model, batch, tc.loss_chunk)
                        loss = summed * (dist.world_size / n_targets)
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    loss_sum += summed.detach().double()
                loss_val = all_reduce_sum(loss_sum, dist).item() / n_targets
                if scaler is not None:
                    for opt in optimizer.optimizers.values():
                        scaler.unscale_(opt)
                gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
                gnorm_val = float(gnorm)
                tokens = sum(task.tokens(b) for b in micro) * dist.world_size
                if not (math.isfinite(loss_val) and math.isfinite(gnorm_val)):
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.update()
                    skipped += 1
                    consecutive_skips += 1
                    logger.log("skip", step, loss=loss_val, grad_norm=gnorm_val)
                    if consecutive_skips > tc.max_skipped_steps:
                        raise SlmError(f"{consecutive_skips} consecutive non-finite steps at step {step}; lower "
                                       f"--train.lr or use --train.precision=fp32")
                    continue
                consecutive_skips = 0
                if scaler is not None:
                    for opt in optimizer.optimizers.values():
                        scaler.step(opt)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                state["tokens"] += tokens
                dt = time.perf_counter() - t0
                tok_s = tokens / dt
                rates.append(tok_s)
                mfu = flops_per_token * tok_s / (peak * dist.world_size)
                lr = optimizer.param_groups[0]["lr"]
                record = dict(loss=loss_val, lr=lr, grad_norm=gnorm_val, tok_per_s=tok_s, mfu=mfu,
                              tokens=state["tokens"], seq_len=phase.seq_len, phase=phase_idx)
                step_metrics = getattr(task, "step_metrics", None)  # method-specific (DPO rewards, GRPO rewards)
                if step_metrics is not None:
                    record.update(step_metrics())
                if step % tc.log_every == 0 or step == total_steps or step == 1:
                    logger.log("train", step, **record)
                else:
                    logger.history.append({"kind": "train", "step": step, **record})
                bar.update(1)
                bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}",
                                refresh=False)
                last = step == total_steps
                if (tc.eval_every and step % tc.eval_every == 0) or last:
                    last_eval, last_eval_step = do_eval(phase), step
                if sample_fn is not None and tc.sample_every and step % tc.sample_every == 0 and dist.is_main:
                    for text in sample_fn(model, step):
                        logger.log("sample", step, text=text)
                        bar.write(f"[step {step}] {text!r}")
                if (tc.checkpoint_every and step % tc.checkpoint_every == 0) or last:
                    val = last_eval if last_eval_step == step else do_eval(phase)
                    do_checkpoint(phase_idx, loader.state_dict() if step < bounds[phase_idx] else None, val)
            if hasattr(loader, "close"):
                loader.close()  # stop its prefetch thread before the next phase builds a new loader
    finally:
        bar.close()
        logger.close()
    steady = rates[len(rates) // 5:] or rates
    return TrainResult(step=step, history=logger.history, final_eval=last_eval, checkpoint=last_ckpt,
                       best_checkpoint=Path(state["best_path"]) if state["best_path"] else None,
                       tok_per_s=statistics.median(steady) if steady else 0.0, skipped_steps=skipped)
