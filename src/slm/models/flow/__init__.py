"""SLMS Flow: Llama blocks with local sliding-window and periodic global attention (config, model, decode state)."""

from ..registry import ArchSpec, register
from .config import PRESETS, FlowConfig
from .model import Flow

SPEC = register(ArchSpec(
    name="flow",
    config=FlowConfig,
    model=Flow,
    presets=PRESETS,
    summary="SLMS Flow: Llama blocks, local sliding-window attention with a global layer every N (own RoPE bases)",
    hf=None,
    supports_packing=True,
    state_kind="ring_buffer",
    test_preset="flow-test",
    test_variants={"window4-global2": {}, "window3-allocal-untied": dict(window=3, global_every=4,
                                                                        tie_embeddings=False)},
))

__all__ = ["Flow", "FlowConfig", "PRESETS", "SPEC"]
