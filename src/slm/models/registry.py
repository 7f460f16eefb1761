"""The architecture registry: `model.arch` in a config picks an `ArchSpec`, and everything outside `slm.models` reads
the spec (config class, presets, model class, HF adapter, capability flags) instead of branching on the name.

A new architecture is added by calling `register(ArchSpec(...))` from its package (see `slm.models.llama`), and the
invariant tests in tests/models pick it up by iterating `ARCHS`. Capability flags are what tests and the CLI read:
- supports_packing: `forward(doc_ids=, position_ids=)` keeps packed documents apart (packed SFT / KD use it).
- state_kind: what `new_state` returns (kv_cache | ring_buffer | recurrent), informational for the engine and docs.
- hf (an `HFAdapter` or None): a transformers class exists; export/import go through its tables.
- gguf (a `GGUFAdapter` or None): llama.cpp has the architecture; `slm export gguf` goes through it.
Preset names are global (one name, one meaning): a preset implies its architecture.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from ..errors import SlmError
from .base import CausalLM, ModelConfig


@dataclass(frozen=True)
class Preset:
    values: dict[str, Any]  # ModelConfig field values
    params: int | None = None  # exact parameter count (tested); None when the vocab comes from the tokenizer
    note: str = ""  # where the numbers come from


@dataclass(frozen=True)
class HFAdapter:
    """How an architecture maps onto a `transformers` class: names as data, config both ways as functions."""

    param_map: tuple[tuple[str, str], ...]  # (slm name, HF name); "{i}" is the layer index
    model_types: tuple[str, ...]  # HF `model_type` values this architecture imports
    config_to_hf: Callable[..., dict[str, Any]]  # (cfg, *, dtype, special_ids) -> config.json dict
    config_from_hf: Callable[..., ModelConfig]  # (raw config.json dict, *, where) -> ModelConfig
    ignored_hf_tensors: re.Pattern = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # derived buffers some checkpoints carry
    tied_output: str = "lm_head.weight"  # slm name of the head, skipped on import when embeddings are tied
    # (cfg) -> why this config has no faithful transformers equivalent (export refuses it with that line), or None
    refusal: Callable[[ModelConfig], str | None] = lambda cfg: None

    def _table(self, reverse: bool) -> list[tuple[re.Pattern, str]]:
        rows = [(hf, ours) if reverse else (ours, hf) for ours, hf in self.param_map]
        out = []
        for src, dst in rows:
            before, sep, after = src.partition("{i}")
            body = re.escape(before) + (r"(?P<i>\d+)" + re.escape(after) if sep else "")
            out.append((re.compile(f"^{body}$"), dst))
        return out

    @staticmethod
    def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
        for pattern, template in table:
            match = pattern.match(name)
            if match:
                return template.format(**match.groupdict())
        return None

    def to_hf_name(self, name: str) -> str:
        hf = self._rename(name, self._table(False))
        if hf is None:
            raise ValueError(f"parameter {name!r} has no row in the HF adapter's param_map; add one")
        return hf

    def from_hf_name(self, name: str) -> str | None:
        return self._rename(name, self._table(True))


@dataclass(frozen=True)
class GGUFAdapter:
    """How an architecture maps onto llama.cpp's GGUF format (on top of its HF adapter, whose tensor names the `gguf`
    package's name map translates): llama.cpp's architecture name, its hyperparameter keys, and any re-layout of a
    tensor that llama.cpp computes differently (e.g. the rotary row order of Llama's q/k projections)."""

    arch_name: Callable[[ModelConfig], str]  # (cfg) -> llama.cpp architecture ("llama", "qwen3", ...)
    hparams: Callable[[ModelConfig], dict[str, Any]]  # (cfg) -> {GGUF key with "{arch}" placeholder: value}
    to_gguf_tensor: Callable[[str, torch.Tensor, ModelConfig], torch.Tensor] = lambda hf_name, t, cfg: t
    # (cfg) -> why llama.cpp cannot run this config (export refuses it with that line), or None
    refusal: Callable[[ModelConfig], str | None] = lambda cfg: None


@dataclass(frozen=True)
class ArchSpec:
    name: str
    config: type[ModelConfig]
    model: type[CausalLM]
    presets: dict[str, Preset]
    summary: str  # one line for --help and the README
    hf: HFAdapter | None = None
    gguf: GGUFAdapter | None = None  # llama.cpp can run it (needs `hf` too: GGUF names come from the HF names)
    supports_packing: bool = True
    state_kind: Literal["kv_cache", "ring_buffer", "recurrent"] = "kv_cache"
    test_preset: str = "test"  # the preset the invariant tests build (tiny: 2 layers, 64 wide, vocab 256)
    test_variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})  # config overrides


ARCHS: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add an architecture. Its preset names must not clash with another architecture's."""
    for other in ARCHS.values():
        if other.name != spec.name and set(other.presets) & set(spec.presets):
            raise ValueError(f"preset(s) {sorted(set(other.presets) & set(spec.presets))} of {spec.name!r} are "
                             f"already {other.name!r}'s")
    ARCHS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    ARCHS.pop(name, None)


def get_arch(name: str) -> ArchSpec:
    if name not in ARCHS:
        raise SlmError(f"--model.arch={name!r}: unknown architecture; choose one of {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def all_presets() -> dict[str, tuple[str, Preset]]:
    """preset name -> (architecture, preset)."""
    return {name: (spec.name, p) for spec in ARCHS.values() for name, p in spec.presets.items()}


def resolve_model_values(values: dict[str, Any], where: str = "model") -> tuple[ArchSpec, dict[str, Any]]:
    """A `model` config section (dict) -> (its architecture, the values with its preset's under the explicit keys).

    The architecture is `arch`, else the preset's, else llama (old checkpoints carry no `arch`). The caller builds
    `spec.config(**values)` (slm.config does it with type checks on every value).
    """
    values = dict(values)
    preset = values.get("preset")
    arch = values.get("arch")
    if arch:
        get_arch(arch)  # an unknown architecture is the first thing to report
    if preset:
        presets = all_presets()
        if preset not in presets:
            raise SlmError(f"{where}.preset: unknown preset '{preset}'; choose one of {', '.join(sorted(presets))}")
        preset_arch, p = presets[preset]
        if arch and arch != preset_arch:
            raise SlmError(f"{where}.preset={preset} is a {preset_arch} preset but {where}.arch={arch}; drop one")
        arch = preset_arch
        values = {**p.values, **values}
    spec = get_arch(arch or "llama")
    values["arch"] = spec.name
    return spec, values


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a named preset (any architecture), with field overrides applied on top."""
    spec, values = resolve_model_values({**overrides, "preset": name})
    return spec.config(**values)


def with_vocab(cfg: ModelConfig, tokenizer_vocab: int, source: str = "the tokenizer") -> ModelConfig:
    """Fill vocab_size=0 from the tokenizer (rounded up to 64 for matmul-friendly shapes) or check it is large enough."""
    if cfg.vocab_size == 0:
        return dataclasses.replace(cfg, vocab_size=64 * -(-tokenizer_vocab // 64))
    if cfg.vocab_size < tokenizer_vocab:
        raise SlmError(f"--model.vocab_size={cfg.vocab_size} is smaller than {source}'s vocab ({tokenizer_vocab}); "
                       f"set --model.vocab_size=0 (auto) or >= {tokenizer_vocab}")
    return cfg


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> CausalLM:
    """The architecture's model for `cfg`, built on `device` (use "meta" to count or to load weights by assignment)."""
    with torch.device(device):
        return get_arch(cfg.arch).model(cfg)


def init_model(cfg: ModelConfig, device: torch.device | str, seed: int) -> CausalLM:
    """A freshly initialised model on `device`: built on meta, materialised there, initialised from `seed`."""
    if cfg.vocab_size <= 0:
        raise SlmError("--model.vocab_size is 0 (auto) but no tokenizer filled it in; set it explicitly")
    torch.manual_seed(seed)
    model = build_model(cfg, device="meta")
    model.to_empty(device=device)
    model.reset_parameters(seed=seed)
    return model
