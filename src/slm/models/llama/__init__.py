"""The Llama family (Llama, SmolLM2, Qwen3-style QK-norm): config + presets, model, KV cache, HF adapter."""

from ..registry import ArchSpec, register
from .config import PRESETS, LlamaConfig
from .gguf import ADAPTER as GGUF_ADAPTER
from .hf import ADAPTER
from .model import Llama

SPEC = register(ArchSpec(
    name="llama",
    config=LlamaConfig,
    model=Llama,
    presets=PRESETS,
    summary="Llama-family decoder: GQA + RoPE, RMSNorm, SwiGLU, no biases (SmolLM2; Qwen3 with qk_norm)",
    hf=ADAPTER,
    gguf=GGUF_ADAPTER,
    supports_packing=True,
    state_kind="kv_cache",
    test_variants={"gqa-tied": {}, "mha-untied": dict(n_kv_heads=4, tie_embeddings=False),
                   "qk-norm": dict(qk_norm=True), "mqa-theta": dict(n_kv_heads=1, rope_theta=1e5)},
))

__all__ = ["Llama", "LlamaConfig", "PRESETS", "SPEC"]
