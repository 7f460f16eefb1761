"""Post-training: SFT, DPO, logit distillation (KD) and GRPO as Tasks for the one trainer, teacher generation.

Modules: `config` (the recipe's `posttrain:` section), `data` (conversations, preference pairs, prompts; bad-example
policy), `sequence` (resumable loader, padding, packing with document masking, chunked log-probs), `sft`, `dpo`,
`distill` (teacher generation + KD), `grpo`, `run` (method name -> Task builder, the runner), `bigbench` (demo data).
The commands (`slm sft|dpo|distill|grpo|chat`) and the terminal chat live in `slm.cli.posttrain` and `slm.cli.chat`.
"""

from .config import DPOConfig, GenerateConfig, GRPOConfig, KDConfig, PostTrainConfig, load_posttrain_config

__all__ = ["DPOConfig", "GenerateConfig", "GRPOConfig", "KDConfig", "PostTrainConfig", "load_posttrain_config"]
