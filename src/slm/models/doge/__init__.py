"""Doge (SmallDoge): Dynamic Mask Attention, residual scales, dense SwiGLU or product-key CDMoE; HF `DogeForCausalLM`."""

from ..registry import ArchSpec, register
from .config import PRESETS, DogeConfig
from .hf import ADAPTER
from .model import Doge

SPEC = register(ArchSpec(
    name="doge",
    config=DogeConfig,
    model=Doge,
    presets=PRESETS,
    summary="SmallDoge's Doge: dynamic mask attention (learned key bias, top-k key window), residual scales, "
            "dense SwiGLU or per-token product-key CDMoE",
    hf=ADAPTER,
    supports_packing=True,
    state_kind="kv_cache",
    test_preset="doge-test",
    test_variants={"dense-window12": {}, "moe-16x4": dict(n_experts=16, moe_top_k=4),
                   "mha-untied-nowindow": dict(n_kv_heads=4, tie_embeddings=False, keep_window_size=2048)},
))

__all__ = ["Doge", "DogeConfig", "PRESETS", "SPEC"]
