"""SLMS Pulse: Flow with rate-coded leaky integrate-and-fire neurons on attention and MLP outputs."""

from ..registry import ArchSpec, register
from .config import PRESETS, PulseConfig
from .model import Pulse

SPEC = register(ArchSpec(
    name="pulse",
    config=PulseConfig,
    model=Pulse,
    presets=PRESETS,
    summary="SLMS Pulse: Flow with LIF spiking neurons (surrogate gradient) on attention and MLP outputs",
    hf=None,
    supports_packing=True,
    state_kind="ring_buffer",
    test_preset="pulse-test",
    test_variants={"fast-sigmoid": {}, "arctan-t2": dict(surrogate="arctan", lif_steps=2, window=3, global_every=4)},
))

__all__ = ["Pulse", "PulseConfig", "PRESETS", "SPEC"]
