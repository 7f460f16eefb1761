"""HGRN-Bit: Simplified SLM's flat MatMul-free model (ternary BitLinear + HGRN recurrence) on bytes."""

from ..registry import ArchSpec, register
from .config import PRESETS, HGRNBitConfig
from .model import HGRNBit

SPEC = register(ArchSpec(
    name="hgrn_bit",
    config=HGRNBitConfig,
    model=HGRNBit,
    presets=PRESETS,
    summary="HGRN-Bit (MatMul-free LM, Simplified SLM flat): HGRN recurrence + SwiGLU, all projections ternary "
            "BitLinear with 8-bit activations; recurrent decode state",
    hf=None,
    supports_packing=True,
    state_kind="recurrent",
    test_preset="hgrn-bit-test",
    test_variants={"bit-head": {}, "tied-fp-head": dict(tie_embeddings=True),
                   "short-conv": dict(use_short_conv=True)},
))

__all__ = ["HGRNBit", "HGRNBitConfig", "PRESETS", "SPEC"]
