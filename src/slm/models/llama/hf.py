"""How the Llama family maps onto transformers: `LlamaForCausalLM`, or `Qwen3ForCausalLM` with QK-norm.

- The rename is data: `PARAM_MAP` lists each slm parameter name next to its HF name; `slm.export.hf` generates both
  directions from it. Our module names equal HF Llama's, so no tensor is permuted (our RoPE is HF's rotate-half
  layout and RMSNorm computes like `LlamaRMSNorm`): the exported model reproduces our logits in plain transformers.
- qk_norm models are Qwen3: an RMSNorm over head_dim on each query/key head before RoPE, same eps as the block norms,
  no biases — exactly `Attention` with `qk_norm=True` (the parity test checks the logits).
- config.json carries `rope_theta` and `rope_parameters` both: transformers 5 reads the latter (and folds a top-level
  `rope_theta` into it), 4.x and llama.cpp's converter read the former; same for `dtype`/`torch_dtype`.
- Import reads config.json by hand with the per-model-type defaults of the HF config classes written down as data
  (`_HF_DEFAULTS`), so a safetensors import needs neither transformers nor remote code. Anything this decoder cannot
  represent (biases, scaled/partial RoPE, sliding windows, a head_dim other than hidden_size/heads, quantized weights)
  is refused with the config key named, rather than imported into a model that would silently compute something else.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import SlmError
from ..registry import HFAdapter
from .config import PRESETS, LlamaConfig

# slm parameter name -> HF name; "{i}" is the layer index. Used in both directions.
PARAM_MAP: tuple[tuple[str, str], ...] = (
    ("embed_tokens.weight", "model.embed_tokens.weight"),
    ("layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.self_attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.self_attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.self_attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.self_attn.q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),  # qk_norm only (Qwen3)
    ("layers.{i}.self_attn.k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),  # qk_norm only (Qwen3)
    ("layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),  # untied models only
)


# LlamaConfig field -> HF config key (rope_theta, head_dim and qk_norm <-> model_type are handled explicitly).
CONFIG_MAP: tuple[tuple[str, str], ...] = (
    ("vocab_size", "vocab_size"),
    ("d_model", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("n_kv_heads", "num_key_value_heads"),
    ("ffn_hidden", "intermediate_size"),
    ("max_seq_len", "max_position_embeddings"),
    ("norm_eps", "rms_norm_eps"),
    ("tie_embeddings", "tie_word_embeddings"),
    ("init_std", "initializer_range"),
)
_REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

# Defaults of the transformers config classes for keys a config.json may omit (what from_pretrained would use).
_COMMON_DEFAULTS = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "initializer_range": 0.02, "head_dim": None}
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {**_COMMON_DEFAULTS, "num_key_value_heads": None, "max_position_embeddings": 2048},
    "mistral": {**_COMMON_DEFAULTS, "num_key_value_heads": 8, "max_position_embeddings": 4096 * 32,
                "sliding_window": 4096},
    "qwen3": {**_COMMON_DEFAULTS, "num_key_value_heads": 32, "max_position_embeddings": 32768, "head_dim": 128},
}
_QK_NORM_TYPES = {"qwen3"}  # model types whose attention has per-head q/k RMSNorm

# Config keys whose value must be one slm can represent: key -> accepted values.
# None = the key is absent and the HF default (which is the accepted value) applies.
_MUST_BE: dict[str, tuple[Any, ...]] = {
    "attention_bias": (False, None),
    "mlp_bias": (False, None),
    "hidden_act": ("silu", "swish", None),
    "use_sliding_window": (False, None),
    "partial_rotary_factor": (1.0, None),
}
_WINDOWED_TYPES = {"mistral"}  # model types whose `sliding_window` is in force without a use_sliding_window switch

# Export targets: qk_norm -> (architecture class, model_type).
_EXPORT_ARCH = {False: ("LlamaForCausalLM", "llama"), True: ("Qwen3ForCausalLM", "qwen3")}


def model_config_to_hf(cfg: LlamaConfig, *, dtype: str = "float32", special_ids: dict[str, int | None] | None = None
                       ) -> dict[str, Any]:
    """config.json of the `LlamaForCausalLM` (or, with qk_norm, `Qwen3ForCausalLM`) equivalent to `cfg`; `dtype` is
    a torch dtype name (float32, bfloat16, float16)."""
    arch, model_type = _EXPORT_ARCH[cfg.qk_norm]
    name = dtype
    out: dict[str, Any] = {"architectures": [arch], "model_type": model_type}
    out.update({hf: getattr(cfg, ours) for ours, hf in CONFIG_MAP})
    out.update({
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": name,
        "torch_dtype": name,
    })
    if cfg.qk_norm:
        out.update({"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layers})
    else:
        out.update({"mlp_bias": False, "pretraining_tp": 1})
    out.update({f"{k}_token_id": v for k, v in (special_ids or {}).items()})
    return out


def _rope_theta(raw: dict[str, Any], where: str) -> float:
    """The RoPE base of a config.json, refusing scaled RoPE variants (naming the key)."""
    theta = raw.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):
        params = raw.get(key)
        if params is None:
            continue
        if not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values()):
            raise SlmError(f"{where}: {key}={params!r} (per-layer RoPE) is not supported; slm models use one plain RoPE")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise SlmError(f"{where}: {key}.rope_type={rope_type!r} is not supported; slm implements plain RoPE "
                           f"(rope_type 'default') only")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise SlmError(f"{where}: {key}.partial_rotary_factor={params['partial_rotary_factor']} is not "
                           f"supported; slm rotates the whole head")
        theta = params.get("rope_theta", theta)
    return float(theta if theta is not None else 10000.0)


def _check_representable(model_type: str, raw: dict[str, Any], values: dict[str, Any], where: str) -> None:
    """Refuse features the slm decoder does not have, naming the config key."""
    for key, accepted in _MUST_BE.items():
        if raw.get(key) not in accepted:
            raise SlmError(f"{where}: {key}={raw[key]!r} is not supported (slm needs {accepted[0]!r}); "
                           f"this model cannot be imported")
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?") if isinstance(raw["quantization_config"], dict) else "?"
        raise SlmError(f"{where}: quantization_config ({method}) is not supported; import the unquantized model")
    window = values.get("sliding_window") if model_type in _WINDOWED_TYPES else None
    if window is not None and window < values["max_position_embeddings"]:
        raise SlmError(f"{where}: sliding_window={window} is not supported (slm attends to the whole context); "
                       f"import a model whose sliding_window is null")
    layer_types = raw.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        raise SlmError(f"{where}: layer_types={sorted(set(layer_types))} is not supported; slm layers all use "
                       f"full attention")
    head_dim = values.get("head_dim")
    if head_dim is not None and head_dim != values["hidden_size"] // values["num_attention_heads"]:
        raise SlmError(f"{where}: head_dim={head_dim} differs from hidden_size/num_attention_heads="
                       f"{values['hidden_size'] // values['num_attention_heads']}; slm derives head_dim from them")


def model_config_from_hf(raw: dict[str, Any], *, where: str = "config.json") -> LlamaConfig:
    """ModelConfig of an HF Llama / Mistral (no sliding window) / Qwen3 config dict; SlmError naming unsupported keys."""
    model_type = raw.get("model_type")
    if model_type not in _HF_DEFAULTS:
        raise SlmError(f"{where}: model_type={model_type!r} is not supported; slm imports "
                       f"{', '.join(sorted(_HF_DEFAULTS))} (Llama-family decoders)")
    missing = [k for k in _REQUIRED_HF_KEYS if raw.get(k) is None]
    if missing:
        raise SlmError(f"{where}: missing key {missing[0]!r}; add it to config.json")
    values = {**_HF_DEFAULTS[model_type], **{k: v for k, v in raw.items() if v is not None or k == "sliding_window"}}
    _check_representable(model_type, raw, values, where)
    kwargs = {ours: values[hf] for ours, hf in CONFIG_MAP}
    kwargs["n_kv_heads"] = kwargs["n_kv_heads"] or kwargs["n_heads"]
    kwargs.update(rope_theta=_rope_theta(raw, where), qk_norm=model_type in _QK_NORM_TYPES)
    try:
        cfg = LlamaConfig(**kwargs)
    except (SlmError, TypeError) as exc:
        names = ", ".join(f"{ours}={hf}" for ours, hf in CONFIG_MAP[1:6])
        raise SlmError(f"{where}: {str(exc).removeprefix('--model: ')} (slm names: {names})") from None
    return _with_matching_preset(cfg)


def _with_matching_preset(cfg: LlamaConfig) -> LlamaConfig:
    """Name the preset whose architecture `cfg` equals (preset is informational; init_std does not count)."""
    for name, preset in PRESETS.items():
        ref = LlamaConfig(**preset.values)
        if cfg.architecture_fields() == ref.architecture_fields():
            return replace(cfg, preset=name)
    return replace(cfg, preset="")


ADAPTER = HFAdapter(param_map=PARAM_MAP, model_types=tuple(sorted(_HF_DEFAULTS)), config_to_hf=model_config_to_hf,
                    config_from_hf=model_config_from_hf)
