"""`slm sft | dpo | distill generate | distill kd | grpo | chat`: recipe + `--section.key=value` overrides.

`register(sub)` adds the subcommands to the `slm` parser's sub-parsers (`slm.cli.app`'s command table). Each recipe
is an ordinary run recipe plus a `posttrain:` section (see `slm.posttrain.config`); `--help` lists both sets of keys.
Handlers import torch lazily, raise SlmError for anything the user can fix, and print a short summary; the methods
themselves (`slm.posttrain`) print nothing, and the terminal chat lives beside this module (`slm.cli.chat`).
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Callable

from ..errors import SlmError
from .recipe import add_recipe_command, format_config_keys, recipe_and_overrides

_RUN_SECTIONS = ("--run.", "--train.", "--eval.", "--sample.")


@functools.lru_cache(maxsize=1)
def _epilog() -> str:
    from ..config import config_help
    from ..posttrain.config import PostTrainConfig

    rows = config_help(PostTrainConfig, "posttrain.") + [r for r in config_help() if r[0].startswith(_RUN_SECTIONS)]
    return format_config_keys(rows, "config keys (override with --section.key=value; the model is the starting "
                                    "checkpoint's):")


def _parser(sub: Any, name: str, fn: Callable[[argparse.Namespace], int], help_text: str,
            recipe_required: bool = True, out_key: str | None = "run.out_dir") -> argparse.ArgumentParser:
    return add_recipe_command(sub, name, fn, help_text, epilog=_epilog(), recipe_required=recipe_required,
                              out_key=out_key,
                              recipe_help="YAML recipe (see recipes/posttrain-*.yaml); overrides follow as "
                                          "--section.key=value")


def _load(args: argparse.Namespace):
    from ..posttrain.config import load_posttrain_config

    return load_posttrain_config(*recipe_and_overrides(args))


def _train(method: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        from ..posttrain.run import run_posttrain

        cfg, post = _load(args)
        summary = run_posttrain(method, cfg, post, progress=not args.quiet)
        _print_summary(summary)
        return 0

    return handler


def _fmt(metrics: dict) -> str:
    return " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                      if not k.startswith("train_"))


def _print_summary(summary: dict) -> None:
    print(f"=== {summary['method']} ===")
    if summary.get("eval_before"):
        print(f"before: {_fmt(summary['eval_before'])}")
    if summary.get("eval_after"):
        print(f"after:  {_fmt(summary['eval_after'])}")
    if summary.get("skipped_examples"):
        print(f"skipped examples: {json.dumps(summary['skipped_examples'])}")
    print(f"steps {summary['steps']} | checkpoint {summary['checkpoint']} | run dir {summary['run_dir']}")


def cmd_distill_generate(args: argparse.Namespace) -> int:
    from ..runtime import resolve_device
    from ..posttrain.data import BadExamples
    from ..posttrain.distill import generate_responses

    cfg, post = _load(args)
    bad = BadExamples(post.on_bad_example)
    stats = generate_responses(post.generate, bad=bad, device=resolve_device(cfg.run.device),
                               progress=not args.quiet)
    print(f"{stats['written']} responses written to {stats['output']} ({stats['already_done']} already there, "
          f"{stats['prompts']} prompts, {stats['skipped_prompts']} skipped: {bad.summary()})")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from .. import checkpoint as ckpt
    from ..runtime import resolve_device
    from ..tokenizer.chat_template import ChatFormatter
    from .chat import run_chat

    cfg, post = _load(args)
    source = args.checkpoint or post.init_from
    if not source:
        raise SlmError("slm chat: pass --checkpoint CKPT (a checkpoint or run dir)")
    path = ckpt.resolve_checkpoint(source)
    model, _ = ckpt.load_model(path, device=resolve_device(cfg.run.device))
    tok = ckpt.load_tokenizer_of(path)
    if tok is None:
        raise SlmError(f"{path}: checkpoint has no tokenizer/; chat needs one")
    sampling = cfg.sample
    if args.temperature is not None:
        sampling = _replace_sampling(sampling, temperature=args.temperature)
    if args.max_new_tokens is not None:
        sampling = _replace_sampling(sampling, max_new_tokens=args.max_new_tokens)
    formatter = ChatFormatter(tok, post.template_text())
    run_chat(model, formatter, _plain_sampling(sampling), system_prompt=args.system or post.system_prompt,
             compile=args.compile)
    return 0


def _replace_sampling(cfg: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def _plain_sampling(section: Any):
    """The run config's sample section as a plain SamplingConfig (drops its `prompts`)."""
    import dataclasses

    from ..config import SamplingConfig

    names = {f.name for f in dataclasses.fields(SamplingConfig)}
    return SamplingConfig(**{k: v for k, v in dataclasses.asdict(section).items() if k in names})


def register(sub: Any) -> None:
    """Add the post-training subcommands to `slm`'s sub-parsers."""
    _parser(sub, "sft", _train("sft"), "Supervised fine-tuning on chat conversations (assistant tokens only; "
            "padded or packed with document masking)")
    _parser(sub, "dpo", _train("dpo"), "Direct Preference Optimization on (prompt, chosen, rejected) pairs against "
            "the frozen starting checkpoint")
    _parser(sub, "grpo", _train("grpo"), "GRPO: sample G completions per prompt, reward them (math, format, length) "
            "and follow group-normalised advantages")
    distill = sub.add_parser("distill", help="Distillation from a teacher model",
                             description="Teacher response generation, or logit distillation")
    dsub = distill.add_subparsers(dest="sub", metavar="SUB", required=True)
    _parser(dsub, "generate", cmd_distill_generate, "A teacher (slm checkpoint or HF folder) writes responses for "
            "prompts to resumable JSONL (posttrain.generate.*)", out_key="posttrain.generate.output")
    _parser(dsub, "kd", _train("kd"), "Logit distillation: KL to a teacher sharing the tokenizer, mixed with CE "
            "(posttrain.kd.*)")
    chat = _parser(sub, "chat", cmd_chat, "Chat with a checkpoint in the terminal through its chat template "
                   "(streaming; /help for commands)", recipe_required=False, out_key=None)
    chat.add_argument("--checkpoint", default="", help="checkpoint dir (or a run dir: its latest checkpoint)")
    chat.add_argument("--system", default="", help="system prompt")
    chat.add_argument("--temperature", type=float, default=None, help="sampling temperature (0 = greedy)")
    chat.add_argument("--max-new-tokens", type=int, default=None, help="longest reply")
    chat.add_argument("--compile", action="store_true", help="compile the decode step (slow first reply, faster "
                      "tokens after; see slm generate --help)")
