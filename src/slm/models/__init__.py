"""Models: the `CausalLM` contract (base.py), the architecture registry (registry.py), shared layers (layers/) and
one package per architecture (llama/, ...). Importing this package registers the built-in architectures."""

from . import doge, flow, hgrn_bit, hnet, llama, pulse  # noqa: F401  (register the built-in architectures)
from .base import DECAYED_ROLES, HIDDEN_MATRIX_ROLES, CausalLM, DecodeState, ModelConfig, Role, document_causal_mask
from .layers.kv_cache import KVCache
from .layers.loss import IGNORE_INDEX, chunked_cross_entropy, cross_entropy
from .registry import (ARCHS, ArchSpec, HFAdapter, Preset, all_presets, build_model, get_arch, init_model,
                       preset_config, register, resolve_model_values, unregister, with_vocab)

__all__ = ["ARCHS", "ArchSpec", "CausalLM", "DECAYED_ROLES", "DecodeState", "HFAdapter", "HIDDEN_MATRIX_ROLES",
           "IGNORE_INDEX", "KVCache", "ModelConfig", "Preset", "Role", "all_presets", "build_model",
           "chunked_cross_entropy", "cross_entropy", "document_causal_mask", "get_arch", "init_model",
           "preset_config", "register", "resolve_model_values", "unregister", "with_vocab"]
