"""Post-training: SFT, DPO, logit distillation (KD) and GRPO as Tasks for the one trainer, teacher generation, chat.

`slm.posttrain.run.run_posttrain(method, cfg, post)` is the entry point; `slm.posttrain.cli.register` adds the
`slm sft|dpo|distill|grpo|chat` subcommands.
"""

from .config import DPOConfig, GenerateConfig, GRPOConfig, KDConfig, PostTrainConfig, load_posttrain_config

__all__ = ["DPOConfig", "GenerateConfig", "GRPOConfig", "KDConfig", "PostTrainConfig", "load_posttrain_config"]
