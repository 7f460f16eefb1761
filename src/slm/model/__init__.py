"""The model: config + presets, the Llama-family decoder, its KV cache and loss."""

from .cache import KVCache
from .config import PRESETS, ModelConfig, count_parameters, model_flops_per_token, preset_config
from .llama import Transformer
from .loss import IGNORE_INDEX, chunked_cross_entropy, cross_entropy

__all__ = ["KVCache", "PRESETS", "ModelConfig", "count_parameters", "model_flops_per_token", "preset_config",
           "Transformer", "IGNORE_INDEX", "chunked_cross_entropy", "cross_entropy"]
