"""Run a post-training method through the one trainer: load the starting checkpoint, build the method's Task, train.

Decisions:
- Methods are a name -> builder map (`METHODS`), each builder turning a `PostTrainContext` into a Task; the trainer
  never learns which method runs.
- The policy is built here from the starting checkpoint (not by the trainer from `train.init_from`) because GRPO's
  loader samples from it and DPO/GRPO need a frozen copy as the reference; the trainer takes it through `model=`.
  On resume (`train.resume`) the trainer restores optimizer, loader and RNG state but not the weights of a model it
  was handed, so this module loads the resumed checkpoint's weights itself first.
- The run config is resolved once, in `prepare` (`resolve_config`, a pure function: the caller's config is not
  touched): the starting checkpoint's model section, and its tokenizer section when it carries its tokenizer. That
  resolved config is the one every later step reads (`PostTrainContext.cfg`) and the one saved beside every
  checkpoint, so the result loads with `slm generate`/`slm chat` like any checkpoint; the posttrain section is saved
  next to it as posttrain.yaml.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import yaml

from ..config import RunConfig, check_run_config
from ..errors import SlmError, atomic_write_text
from ..models import CausalLM
from ..tokenizer import Tokenizer
from ..tokenizer.chat_template import ChatFormatter
from .. import checkpoint as ckpt
from ..runtime import DistInfo, init_distributed
from ..train.task import Task
from .config import PostTrainConfig
from .data import BadExamples


@dataclass
class PostTrainContext:
    cfg: RunConfig
    post: PostTrainConfig
    model: CausalLM
    tokenizer: Tokenizer
    formatter: ChatFormatter
    start: Path  # the starting checkpoint (the reference model of DPO/GRPO)
    dist: DistInfo
    autocast_dtype: torch.dtype | None
    bad: BadExamples = field(default_factory=BadExamples)

    @property
    def max_tokens(self) -> int:
        """Longest example (ids, including the final target) that fits a training row."""
        return max(p.seq_len for p in self.cfg.train.phase_list()) + 1

    def reference_model(self) -> CausalLM:
        """A frozen copy of the starting checkpoint, on the run's device."""
        ref, _ = ckpt.load_model(self.start, device=self.dist.device)
        ref.requires_grad_(False)
        return ref.eval()


def _build_sft(ctx: PostTrainContext) -> Task:
    from .data import load_conversations, split_holdout
    from .sft import SFTTask

    train, val = _conversations(ctx, load_conversations, split_holdout)
    return SFTTask(train, val, ctx.cfg, pad_id=ctx.tokenizer.pad_id, packing=ctx.post.packing,
                   autocast_dtype=ctx.autocast_dtype)


def _conversations(ctx: PostTrainContext, load: Callable, split: Callable,
                   key: Callable = lambda e: e.ids) -> tuple[list, list]:
    """(train, val) examples: val from --posttrain.val_data, else held out of train by `key` (the example's ids)."""
    if not ctx.post.train_data:
        raise SlmError("--posttrain.train_data: no training files given; pass e.g. --posttrain.train_data=[chats.jsonl]")
    train = load(ctx.post.train_data, ctx.formatter, ctx.max_tokens, ctx.bad)
    if ctx.post.val_data:
        return train, load(ctx.post.val_data, ctx.formatter, ctx.max_tokens, ctx.bad)
    return split(train, ctx.post.val_fraction, key=key)


def _build_dpo(ctx: PostTrainContext) -> Task:
    from .data import load_preferences, split_holdout
    from .dpo import DPOTask

    # a pair is held out by its chosen conversation (prompt + chosen answer), so both halves stay on one side
    train, val = _conversations(ctx, load_preferences, split_holdout, key=lambda p: p.chosen.ids)
    return DPOTask(train, val, ctx.cfg, ctx.post.dpo, reference=ctx.reference_model(), pad_id=ctx.tokenizer.pad_id,
                   autocast_dtype=ctx.autocast_dtype)


def _build_kd(ctx: PostTrainContext) -> Task:
    from .data import load_conversations, split_holdout
    from .distill import KDTask, load_teacher

    train, val = _conversations(ctx, load_conversations, split_holdout)
    if not ctx.post.kd.teacher:
        raise SlmError("--posttrain.kd.teacher: required for slm distill kd (an slm checkpoint or HF model folder)")
    teacher, teacher_tok = load_teacher(ctx.post.kd.teacher, ctx.dist.device)
    cache = None
    if ctx.post.kd.topk:
        from .distill import topk_cache

        cache = topk_cache(ctx.cfg.run_dir() / "teacher_topk.safetensors", teacher, train, val, k=ctx.post.kd.topk,
                           pad_id=ctx.tokenizer.pad_id, device=ctx.dist.device, teacher_name=ctx.post.kd.teacher)
        teacher = None  # trained from the cache: the teacher's memory is freed
    return KDTask(train, val, ctx.cfg, ctx.post.kd, teacher=teacher, teacher_tokenizer=teacher_tok,
                  tokenizer=ctx.tokenizer, pad_id=ctx.tokenizer.pad_id, packing=ctx.post.packing,
                  autocast_dtype=ctx.autocast_dtype, cache=cache)


def _build_grpo(ctx: PostTrainContext) -> Task:
    from .data import load_prompts, split_holdout
    from .grpo import GRPOTask

    if not ctx.post.train_data:
        raise SlmError("--posttrain.train_data: no prompt files given (jsonl with prompt and answer)")
    prompts = load_prompts(ctx.post.train_data, ctx.bad, need_answer=True, specials=ctx.formatter.specials)
    if ctx.post.val_data:
        train, val = prompts, load_prompts(ctx.post.val_data, ctx.bad, need_answer=True,
                                           specials=ctx.formatter.specials)
    else:
        train, val = split_holdout(prompts, ctx.post.val_fraction, key=lambda p: p.id)
    ref = ctx.reference_model() if ctx.post.grpo.kl_beta > 0 else None
    return GRPOTask(train, val, ctx.cfg, ctx.post.grpo, policy=ctx.model, reference=ref, formatter=ctx.formatter,
                    pad_id=ctx.tokenizer.pad_id, autocast_dtype=ctx.autocast_dtype)


METHODS: dict[str, Callable[[PostTrainContext], Task]] = {
    "sft": _build_sft, "dpo": _build_dpo, "kd": _build_kd, "grpo": _build_grpo,
}


def resolve_config(cfg: RunConfig, start_cfg: RunConfig, *, start_has_tokenizer: bool) -> RunConfig:
    """The run config a post-training run reads and saves: the starting checkpoint's model (a fine-tune cannot change
    the architecture) and, when the checkpoint carries its tokenizer, that tokenizer's section (so the saved config
    describes the tokenizer the run really used); everything else as given."""
    tokenizer = start_cfg.tokenizer if start_has_tokenizer else cfg.tokenizer
    return dataclasses.replace(cfg, model=start_cfg.model, tokenizer=tokenizer)


def prepare(cfg: RunConfig, post: PostTrainConfig, dist: DistInfo | None = None) -> PostTrainContext:
    """Load the starting checkpoint, its tokenizer and the chat formatter; resolve the run config (`ctx.cfg`)."""
    from ..runtime import resolve_precision
    from ..train.calibrate import resolve_for_run

    if not post.init_from:
        raise SlmError("--posttrain.init_from: the starting checkpoint is required (a checkpoint or run dir; "
                       "import HF models first with `slm import hf`)")
    dist = dist or init_distributed(cfg.run.device)
    start = ckpt.resolve_checkpoint(post.init_from)
    model, start_cfg = ckpt.load_model(start, device=dist.device)
    tokenizer = ckpt.load_tokenizer_of(start)
    cfg = resolve_config(cfg, start_cfg, start_has_tokenizer=tokenizer is not None)
    check_run_config(cfg)  # the checkpoint's model against this run's seq_len, before any work
    resume = ckpt.resume_path(cfg)
    if resume is not None:
        model.load_state_dict(ckpt.load_state_dict(resume))
    if tokenizer is None:
        tokenizer = _build_tokenizer(cfg, start)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise SlmError(f"{start}: tokenizer has {tokenizer.vocab_size} ids but the model only "
                       f"{cfg.model.vocab_size}; use the tokenizer the model was trained with")
    model.train()
    formatter = ChatFormatter(tokenizer, post.template_text(), post.system_prompt)
    cfg = resolve_for_run(cfg, dist, model)  # precision/compile auto, timed on the starting model
    autocast_dtype, _ = resolve_precision(cfg.train.precision, dist.device)
    return PostTrainContext(cfg, post, model, tokenizer, formatter, start, dist, autocast_dtype,
                            BadExamples(post.on_bad_example))


def _build_tokenizer(cfg: RunConfig, start: Path) -> Tokenizer:
    """The configured tokenizer, for a starting checkpoint that carries none."""
    from ..stages import build_tokenizer

    if cfg.tokenizer.kind == "bpe":
        raise SlmError(f"{start}: checkpoint has no tokenizer/; set --tokenizer.kind=pretrained "
                       f"--tokenizer.path=... (or byte)")
    return build_tokenizer(cfg, progress=False)


def run_posttrain(method: str, cfg: RunConfig, post: PostTrainConfig, *, progress: bool = True,
                  dist: DistInfo | None = None) -> dict:
    """Train with `method` (sft | dpo | kd | grpo); returns a summary (also written to <run dir>/summary.json)."""
    from ..train.trainer import refuse_reused_run_dir, train

    if method not in METHODS:
        raise SlmError(f"unknown post-training method {method!r}; choose one of {', '.join(METHODS)}")
    refuse_reused_run_dir(cfg)  # before any work, and before posttrain.yaml is written
    ctx = prepare(cfg, post, dist)
    cfg = ctx.cfg  # resolved once; from here on the only config
    if ctx.tokenizer is not None and ctx.formatter.template != ctx.tokenizer.chat_template:
        ctx.tokenizer.chat_template = ctx.formatter.template  # saved checkpoints chat with the template trained on
    task = METHODS[method](ctx)
    task.device = ctx.dist.device  # the loader sets it too; the "before" eval runs before any loader exists
    if ctx.bad.total:
        print(f"skipped {ctx.bad.total} bad examples: {ctx.bad.summary()}")
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if ctx.dist.is_main:
        atomic_write_text(run_dir / "posttrain.yaml",
                          yaml.safe_dump({"method": method, **dataclasses.asdict(post)}, sort_keys=False))
    before = task.evaluate(ctx.model, 0, cfg.train.eval_batches)
    result = train(cfg, task, tokenizer=ctx.tokenizer, model=ctx.model, dist=ctx.dist, progress=progress)
    summary = {"method": method, "run_dir": str(run_dir), "steps": result.step, "start": str(ctx.start),
               "checkpoint": str(result.checkpoint), "eval_before": before, "eval_after": result.final_eval,
               "skipped_examples": dict(ctx.bad.counts), "tok_per_s": result.tok_per_s,
               "skipped_steps": result.skipped_steps, "spiked_steps": result.extras.get("spiked_steps"),
               "rollbacks": result.extras.get("rollbacks")}
    if ctx.dist.is_main:
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str))
    return summary
