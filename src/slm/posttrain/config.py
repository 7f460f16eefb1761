"""The `posttrain:` section of a recipe: data, method settings and the starting checkpoint.

A post-training recipe is an ordinary run recipe (run/train/eval/sample sections, read by `slm.config`) plus one
`posttrain:` section that is split off before `build_run_config`, so `slm.config` needs no knowledge of methods. The
`model:` section is ignored: the model is always the starting checkpoint's own (a fine-tune cannot change the
architecture), and `tokenizer:` is only used when that checkpoint carries no tokenizer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig, build_run_config, from_dict, parse_overrides, read_yaml
from ..errors import SlmError


@dataclass(kw_only=True)
class DPOConfig:
    beta: float = 0.1  # strength of the KL tie to the reference; TRL's default 0.1
    label_smoothing: float = 0.0  # conservative DPO: assumed share of flipped preference labels (0 = plain sigmoid DPO)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise SlmError(f"--posttrain.dpo.beta={self.beta}: must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise SlmError(f"--posttrain.dpo.label_smoothing={self.label_smoothing}: must be in [0, 0.5)")


@dataclass(kw_only=True)
class KDConfig:
    teacher: str = ""  # teacher: an slm checkpoint (or run dir) or an HF Llama-family model folder
    loss: str = "forward"  # forward KL(teacher||student) (mode covering) | reverse KL(student||teacher) (mode seeking)
    alpha: float = 0.5  # weight of the KD term; (1 - alpha) goes to the usual CE on the data
    temperature: float = 1.0  # softens both distributions; the KD term is scaled by T^2 (Hinton et al.)
    topk: int = 0  # 0 = teacher logits on the fly; K = cache the teacher's top-K log-probs once and train from them

    def __post_init__(self) -> None:
        if self.loss not in ("forward", "reverse"):
            raise SlmError(f"--posttrain.kd.loss={self.loss!r}: choose forward or reverse")
        if not 0.0 <= self.alpha <= 1.0:
            raise SlmError(f"--posttrain.kd.alpha={self.alpha}: must be in [0, 1]")
        if self.temperature <= 0:
            raise SlmError(f"--posttrain.kd.temperature={self.temperature}: must be > 0")
        if self.topk < 0:
            raise SlmError(f"--posttrain.kd.topk={self.topk}: must be >= 0 (0 = no cache)")


@dataclass(kw_only=True)
class GRPOConfig:
    num_generations: int = 4  # G: completions sampled per prompt; advantages are normalised within each group
    max_completion_tokens: int = 64  # new tokens per completion
    temperature: float = 1.0  # sampling temperature of the rollouts
    top_k: int = 0  # rollout top-k (0 = off)
    epsilon: float = 0.2  # PPO clip range of the importance ratio
    kl_beta: float = 0.0  # weight of the k3 KL estimate to the reference (0 = no reference model, DAPO/Dr.GRPO style)
    num_iterations: int = 1  # optimizer steps per generated batch (mu); > 1 makes the clip active
    rewards: list[str] = field(default_factory=lambda: ["math", "format"])  # math | math_partial | format | length
    reward_weights: list[float] = field(default_factory=list)  # one per reward; empty = all 1.0
    scale_rewards: bool = True  # divide advantages by the group std (GRPO); false = Dr. GRPO (mean-centred only)
    eval_prompts: int = 16  # held-out prompts answered greedily at each eval (0 = no reward eval)

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise SlmError(f"--posttrain.grpo.num_generations={self.num_generations}: need >= 2 for a group baseline")
        if self.reward_weights and len(self.reward_weights) != len(self.rewards):
            raise SlmError("--posttrain.grpo.reward_weights: give one weight per entry of posttrain.grpo.rewards")
        if self.num_iterations < 1 or self.max_completion_tokens < 1:
            raise SlmError("--posttrain.grpo.num_iterations and max_completion_tokens must be >= 1")


@dataclass(kw_only=True)
class GenerateConfig:
    teacher: str = ""  # teacher: an slm checkpoint (or run dir) or an HF Llama-family model folder
    prompts: str = ""  # prompts: .jsonl ({"prompt": str | messages, optional "id"}) or .txt (one per line)
    output: str = ""  # JSONL written (and resumed) here; schema in slm.posttrain.distill
    batch_size: int = 8  # prompts per generate() call
    max_new_tokens: int = 256  # longest response
    temperature: float = 0.0  # 0 = greedy (deterministic, so a resumed run matches an uninterrupted one)
    top_p: float = 1.0  # nucleus sampling cut
    seed: int = 0  # base seed; each prompt's draw uses seed + its index so resume does not change samples


@dataclass(kw_only=True)
class PostTrainConfig:
    init_from: str = ""  # starting checkpoint (or run dir); also the frozen DPO/GRPO reference
    train_data: list[str] = field(default_factory=list)  # jsonl/json files (conversations, pairs or prompts)
    val_data: list[str] = field(default_factory=list)  # held-out files; empty = split val_fraction off train_data
    val_fraction: float = 0.05  # share of examples held out (by content hash) when val_data is empty
    chat_template: str = ""  # "" = the tokenizer's own (ChatML by default); else a .jinja file or template text
    system_prompt: str = ""  # system message added to conversations that have none (an identity prompt)
    on_bad_example: str = "error"  # malformed/over-long examples: error (file:line) | skip (counted and reported)
    packing: bool = False  # SFT/KD: pack conversations into seq_len rows with document masking (else pad per batch)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    def __post_init__(self) -> None:
        if self.on_bad_example not in ("error", "skip"):
            raise SlmError(f"--posttrain.on_bad_example={self.on_bad_example!r}: choose error or skip")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SlmError(f"--posttrain.val_fraction={self.val_fraction}: must be in [0, 1)")

    def template_text(self) -> str | None:
        """The chat template to use: file contents, literal text, or None for the tokenizer's own."""
        if not self.chat_template:
            return None
        if "{" not in self.chat_template and Path(self.chat_template).is_file():
            return Path(self.chat_template).read_text(encoding="utf-8")
        if "{" not in self.chat_template:
            raise SlmError(f"--posttrain.chat_template={self.chat_template}: file not found (pass a .jinja file or "
                           f"the template text)")
        return self.chat_template


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_posttrain_config(recipe: str | Path | None, overrides: list[str] | None = None
                          ) -> tuple[RunConfig, PostTrainConfig]:
    """Recipe + `--section.key=value` overrides -> (RunConfig without the posttrain section, PostTrainConfig)."""
    data = read_yaml(recipe) if recipe else {}
    data = _merge(copy.deepcopy(data), parse_overrides(overrides or []))
    post = data.pop("posttrain", None) or {}
    if not isinstance(post, dict):
        raise SlmError("posttrain: expected a mapping of post-training settings")
    data.pop("model", None)  # the starting checkpoint decides the architecture
    return build_run_config(data), from_dict(PostTrainConfig, post, "posttrain")
