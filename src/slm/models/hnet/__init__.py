"""H-Net-Bit: Simplified SLM's byte-level dynamic chunking (H-Net) with HGRN-Bit / BitLinear stages."""

from ..registry import ArchSpec, register
from .config import PRESETS, HNetConfig
from .model import HNetBit

SPEC = register(ArchSpec(
    name="hnet_bit",
    config=HNetConfig,
    model=HNetBit,
    presets=PRESETS,
    summary="H-Net-Bit (Simplified SLM): byte-level dynamic chunking (cosine router, EMA dechunking, ratio loss) "
            "over HGRN-Bit stages; 1- or 2-stage; recurrent decode state",
    hf=None,
    supports_packing=True,
    state_kind="recurrent",
    test_preset="hnet-bit-test",
    test_variants={"1stage": {}, "2stage-tied": dict(widths=[32, 48, 64], encoder_layers=[1, 1],
                                                      decoder_layers=[1, 1], target_ratios=[2.0, 3.0],
                                                      tie_embeddings=True),
                   "hybrid": dict(main_pattern="xa", attn_window=4, attn_heads=2)},
))

__all__ = ["HNetBit", "HNetConfig", "PRESETS", "SPEC"]
