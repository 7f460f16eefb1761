"""The optional SFT stage of `slm run`: after pretraining, fine-tune the final checkpoint on chats into <run dir>/sft.

A recipe turns it on with an `sft:` section (`--sft=null` turns it off again):

    sft:
      train: {steps: 150, lr: 1.0e-3}   # keys over the recipe's own train section (phases and init_from not inherited)
      posttrain: {packing: true}        # a PostTrainConfig (slm.posttrain.config); train_data: [own chats.jsonl]
      chats: {turns: 4}                 # without train_data: chats derived from the corpus (slm.posttrain.corpus_chats)

Decisions:
- The section is split off the recipe before `build_run_config` (like `slm sft`'s `posttrain:`), so `slm.config`
  knows nothing about post-training; `load_run_recipe` returns (RunConfig, SFTStageConfig | None) and `slm run` hands
  the second to `run_pipeline`. Commands that only read the run config (`slm data prepare`) ignore the section.
- The stage is `slm sft` itself (`run_posttrain("sft", ...)`): the same Task, trainer and saved files, with the run
  config of the pretraining run (resolved vocab, eval and sample sections), `run.out_dir` = <run dir>/sft and the SFT
  train section. Its final checkpoint carries the pretrained tokenizer and its chat template, so `slm serve
  --checkpoint <run dir>/sft` chats through the template the model was fine-tuned with; the HF export is of it.
- Keys and values are checked when the recipe is loaded; the rest (`check_sft_inputs`) before the first stage runs:
  chat files exist, the SFT seq_len fits the model, the SFT dir holds no earlier run's checkpoints (unless
  resume/overwrite).
- The summary carries the held-out chat loss before and after, the first and last logged train loss, where the chats
  came from, and a few replies to held-out user turns rendered through the chat template.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..config import RunConfig, TrainConfig, build_run_config, check_run_config, from_dict, parse_overrides, read_yaml
from ..errors import SlmError
from .config import PostTrainConfig, _merge
from .corpus_chats import CorpusChatsConfig

if TYPE_CHECKING:
    from ..runtime import DistInfo

NOT_INHERITED = ("phases", "init_from", "resume")  # train keys of pretraining that mean nothing for the SFT stage
SAMPLE_REPLIES = 3  # held-out user turns answered in the summary and report


@dataclass(kw_only=True)
class SFTStageConfig:
    train: TrainConfig  # the recipe's train section with the sft.train keys on top
    posttrain: PostTrainConfig = field(default_factory=PostTrainConfig)  # chat files, packing, system prompt ...
    chats: CorpusChatsConfig = field(default_factory=CorpusChatsConfig)  # chats derived from the corpus (no train_data)


def sft_config_help() -> list[tuple[str, str, str]]:
    """`slm run --help` rows of the `sft:` section (the post-training keys SFT reads, and the chat derivation)."""
    from ..config import config_help

    other = ("init_from", "dpo.", "kd.", "grpo.", "generate.")
    rows = [("--sft.train.KEY", "the train section's", "any train key, for the SFT stage (phases, init_from and "
                                                      "resume are not inherited); --sft=null: no SFT stage")]
    rows += [r for r in config_help(PostTrainConfig, "sft.posttrain.")
             if not r[0].removeprefix("--sft.posttrain.").startswith(other)]
    return rows + config_help(CorpusChatsConfig, "sft.chats.")


def _renamed(exc: SlmError, section: str) -> SlmError:
    """The section's own checks name `--train.x` / `--posttrain.x`; here the user typed `--sft.train.x`."""
    return SlmError(str(exc).replace(f"--{section}.", f"--sft.{section}."))


def build_sft_stage(section: Any, run_train: dict | None) -> SFTStageConfig | None:
    """The `sft:` section (None/false: no stage) -> SFTStageConfig; `run_train` is the recipe's train mapping."""
    if section is None or section is False:
        return None
    if not isinstance(section, dict):
        raise SlmError("sft: expected a mapping (train, posttrain, chats), or null for no SFT stage")
    unknown = set(section) - {"train", "posttrain", "chats"}
    if unknown:
        raise SlmError(f"unknown config key 'sft.{sorted(unknown)[0]}'; valid keys here: chats, posttrain, train")
    run_train = run_train or {}
    inherited = {k: v for k, v in run_train.items() if k not in NOT_INHERITED}
    if run_train.get("resume") == "auto":  # resuming the run resumes (or finds finished) its SFT stage too
        inherited["resume"] = "auto"
    try:
        train = from_dict(TrainConfig, _merge(inherited, section.get("train") or {}), "sft.train")
    except SlmError as exc:
        raise _renamed(exc, "train") from None
    try:
        post = from_dict(PostTrainConfig, section.get("posttrain") or {}, "sft.posttrain")
    except SlmError as exc:
        raise _renamed(exc, "posttrain") from None
    chats = from_dict(CorpusChatsConfig, section.get("chats") or {}, "sft.chats")
    if post.init_from:
        raise SlmError(f"--sft.posttrain.init_from={post.init_from}: the SFT stage of `slm run` starts from the run's "
                       f"own pretrained checkpoint; leave it empty (or use `slm sft` to fine-tune another)")
    if post.val_data and not post.train_data:
        raise SlmError("--sft.posttrain.val_data: given without --sft.posttrain.train_data; pass both, or neither "
                       "to derive chats from the corpus")
    return SFTStageConfig(train=train, posttrain=post, chats=chats)


def load_run_recipe(recipe: str | Path | None, overrides: list[str] | None = None
                    ) -> tuple[RunConfig, SFTStageConfig | None]:
    """Recipe + overrides -> (RunConfig, its SFT stage or None); the files the stage reads are checked by
    `check_sft_inputs`, which `run_pipeline` calls before its first stage."""
    data = read_yaml(recipe) if recipe else {}
    data = _merge(copy.deepcopy(data), parse_overrides(overrides or []))
    section = data.pop("sft", None)
    cfg = build_run_config(data)
    check_run_config(cfg)
    return cfg, build_sft_stage(section, data.get("train"))


def sft_run_config(stage: SFTStageConfig, cfg: RunConfig) -> RunConfig:
    """The run config the SFT stage trains with: the pretraining run's, in <run dir>/sft, with the SFT train section."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(cfg.run_dir() / "sft")),
                               train=stage.train)


def check_sft_inputs(stage: SFTStageConfig, cfg: RunConfig) -> None:
    """What the stage needs, checked before pretraining: its chat files (or a corpus to derive them from), a seq_len
    the model takes, and an SFT dir without an earlier run's checkpoints."""
    from ..train.trainer import refuse_reused_run_dir

    post = stage.posttrain
    for key, specs in (("train_data", post.train_data), ("val_data", post.val_data)):
        for spec in specs:
            if not spec.startswith("hf:") and not Path(spec).is_file():
                raise SlmError(f"--sft.posttrain.{key}: {spec} not found; pass JSONL chat files ({{\"messages\": "
                               f"[...]}} per line), or no train_data to derive chats from --data.inputs")
    if not post.train_data and not cfg.data.inputs:
        raise SlmError("--sft.posttrain.train_data: no chat files and no --data.inputs to derive chats from; pass "
                       "JSONL chat files")
    sft_cfg = sft_run_config(stage, cfg)
    try:
        check_run_config(sft_cfg)
    except SlmError as exc:
        raise _renamed(exc, "train") from None
    refuse_reused_run_dir(sft_cfg)


def _train_losses(run_dir: Path) -> tuple[float | None, float | None]:
    from ..train.metrics import MetricsLogger

    path = run_dir / "metrics.jsonl"
    losses = [r["loss"] for r in MetricsLogger.read_jsonl(path) if r.get("kind") == "train" and "loss" in r] \
        if path.is_file() else []
    return (losses[0], losses[-1]) if losses else (None, None)


def sample_replies(checkpoint: Path, val_files: list[str], cfg: RunConfig, n: int = SAMPLE_REPLIES) -> list[dict]:
    """Replies of `checkpoint` to the first user turns of held-out chats, through its tokenizer's chat template."""
    from .. import checkpoint as ckpt
    from ..generate.engine import generate
    from ..runtime import resolve_device
    from ..tokenizer.chat_template import ChatFormatter
    from .data import conversation_of, iter_records

    prompts: list[str] = []
    for spec in val_files:
        for _, record in iter_records(spec):
            messages = conversation_of(record)
            user = next((m["content"] for m in messages if m.get("role") == "user"), None) \
                if isinstance(messages, list) else None
            if user:
                prompts.append(user)
            if len(prompts) >= n:
                break
        if len(prompts) >= n:
            break
    if not prompts:
        return []
    model, _ = ckpt.load_model(checkpoint, device=resolve_device(cfg.run.device))
    formatter = ChatFormatter(ckpt.load_tokenizer_of(checkpoint))
    sampling = dataclasses.replace(cfg.sample, max_new_tokens=min(cfg.sample.max_new_tokens, 64), num_samples=1)
    ids = [formatter.encode_prompt([{"role": "user", "content": p}]) for p in prompts]
    outs = generate(model, ids, sampling, eos_id=formatter.end_of_turn_id)
    return [{"user": p, "assistant": formatter.tokenizer.decode(o, skip_special=True)} for p, o in zip(prompts, outs)]


def run_sft_stage(stage: SFTStageConfig, cfg: RunConfig, start: Path, documents: Callable[[], Iterable[str]], *,
                  progress: bool = True, dist: DistInfo | None = None) -> dict:
    """Fine-tune `start` (the pretrained checkpoint) with `slm sft` into <run dir>/sft; returns the stage's summary.

    `documents()` yields the corpus texts, read only when chats are derived from them."""
    from .. import checkpoint as ckpt
    from ..runtime import barrier, init_distributed
    from ..tokenizer.chat_template import ChatFormatter
    from .corpus_chats import write_corpus_chats
    from .run import run_posttrain

    dist = dist or init_distributed(cfg.run.device)
    sft_cfg = sft_run_config(stage, cfg)
    post = dataclasses.replace(stage.posttrain, init_from=str(start))
    chats: dict = {"source": "files", "train_data": post.train_data, "val_data": post.val_data}
    if not post.train_data:
        chats_dir = cfg.run_dir() / "chats"
        if dist.is_main:
            formatter = ChatFormatter(ckpt.load_tokenizer_of(start), post.template_text(), post.system_prompt)
            max_tokens = max(p.seq_len for p in sft_cfg.train.phase_list()) + 1
            chats = write_corpus_chats(documents(), chats_dir, stage.chats,
                                       fits=lambda m: len(formatter.encode(m)) <= max_tokens,
                                       val_fraction=cfg.data.val_fraction, seed=cfg.run.seed)
        barrier(dist)
        post = dataclasses.replace(post, train_data=[str(chats_dir / "train.jsonl")],
                                   val_data=[str(chats_dir / "val.jsonl")])
    summary = run_posttrain("sft", sft_cfg, post, progress=progress, dist=dist)
    first, last = _train_losses(Path(summary["run_dir"]))
    summary.update(chats=chats, train_loss_first=first, train_loss_last=last)
    if dist.is_main:
        val_files = post.val_data or post.train_data
        summary["replies"] = sample_replies(Path(summary["checkpoint"]), val_files, sft_cfg)
    return summary
