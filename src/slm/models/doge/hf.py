"""How Doge maps onto transformers' `DogeForCausalLM` (model_type "doge", in transformers since 4.5x; no remote code).

- Dense Doge: parameter names equal transformers' under its `model.` prefix, so export and import are a renaming
  (`PARAM_MAP`); the parity test checks logits to 1e-4 in fp32 both ways.
- CDMoE Doge is refused both ways, with the reason: transformers' `DogeCDMoE` routes token t by the router logits of
  tokens t/2 and B*T/2 + t/2 (a `view(2, B*T, -1)` of a (B, T, 2 sqrt(N)) tensor), so the same weights compute a
  different function there — one that reads future tokens and other rows of the batch. Exporting would silently
  change the model; importing would silently change theirs. The MoE rows of `PARAM_MAP` stay so that the leak test can
  load one set of weights into both implementations.
- Import reads config.json by hand (no transformers needed) and refuses, naming the key, what this decoder does not
  have: biases, another activation, scaled RoPE (SmallDoge's recipes set `rope_scaling: dynamic`; dynamic NTK rescales
  every position by the current length, so a token's logits would depend on how many tokens follow it), sliding
  windows, a head_dim other than hidden_size / heads. Dropout values are ignored (they do not change inference).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ...errors import SlmError
from ..registry import HFAdapter
from .config import PRESETS, DogeConfig

PARAM_MAP: tuple[tuple[str, str], ...] = (
    ("embed_tokens.weight", "model.embed_tokens.weight"),
    ("layers.{i}.input_layernorm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.self_attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("layers.{i}.self_attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("layers.{i}.self_attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("layers.{i}.self_attn.A", "model.layers.{i}.self_attn.A"),
    ("layers.{i}.self_attn.dt_proj.weight", "model.layers.{i}.self_attn.dt_proj.weight"),
    ("layers.{i}.self_attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("layers.{i}.self_attn.q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
    ("layers.{i}.self_attn.k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"),
    ("layers.{i}.input_residual", "model.layers.{i}.input_residual"),
    ("layers.{i}.post_attention_layernorm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("layers.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("layers.{i}.mlp.router_gate.weight", "model.layers.{i}.mlp.router_gate.weight"),  # CDMoE only
    ("layers.{i}.mlp.down_embed", "model.layers.{i}.mlp.down_embed.weight"),  # CDMoE only
    ("layers.{i}.mlp.up_embed", "model.layers.{i}.mlp.up_embed.weight"),  # CDMoE only
    ("layers.{i}.post_attention_residual", "model.layers.{i}.post_attention_residual"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),  # untied models only
)

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
    ("keep_window_size", "keep_window_size"),
    ("moe_top_k", "num_experts_per_tok"),
    ("moe_aux_coef", "router_aux_loss_coef"),
)
_REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# transformers' DogeConfig defaults for keys a config.json may omit
_HF_DEFAULTS: dict[str, Any] = {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "initializer_range": 0.02,
                                "max_position_embeddings": 2048, "num_key_value_heads": None, "keep_window_size": 2048,
                                "num_experts_per_tok": 64, "router_aux_loss_coef": 0.001}
_MUST_BE: dict[str, tuple[Any, ...]] = {  # key -> accepted values (None = absent, the default applies)
    "attention_bias": (False, None),
    "mlp_bias": (False, None),
    "hidden_act": ("silu", "swish", None),
    "sliding_window": (None,),
    "is_moe": (False, None),
}


def moe_refusal(cfg: DogeConfig) -> str | None:
    """Why `cfg` has no faithful transformers equivalent (None when it has one)."""
    if cfg.is_moe:
        return ("CDMoE Doge has no faithful transformers equivalent: DogeCDMoE routes each token by other tokens' "
                "router logits (view(2, B*T, -1)), so the same weights would compute a different, leaking function")
    return None


def model_config_to_hf(cfg: DogeConfig, *, dtype: str = "float32", special_ids: dict[str, int | None] | None = None
                       ) -> dict[str, Any]:
    """config.json of the `DogeForCausalLM` equivalent to dense `cfg`; SlmError for CDMoE (see `moe_refusal`)."""
    reason = moe_refusal(cfg)
    if reason:
        raise SlmError(f"slm export hf: {reason}")
    out: dict[str, Any] = {"architectures": ["DogeForCausalLM"], "model_type": "doge"}
    out.update({hf: getattr(cfg, ours) for ours, hf in CONFIG_MAP})
    out.update({
        "hidden_act": "silu",
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "hidden_dropout": 0.0,
        "sliding_window": None, "is_moe": False, "num_experts": 0 if not cfg.is_moe else cfg.n_experts,
        "use_cache": True, "dtype": dtype, "torch_dtype": dtype,
    })
    out.update({f"{k}_token_id": v for k, v in (special_ids or {}).items()})
    return out


def _rope_theta(raw: dict[str, Any], where: str) -> float:
    theta = raw.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):
        params = raw.get(key)
        if params is None:
            continue
        rope_type = params.get("rope_type", params.get("type", "default")) if isinstance(params, dict) else params
        if rope_type != "default":
            raise SlmError(f"{where}: {key}.rope_type={rope_type!r} is not supported; slm's Doge uses plain RoPE "
                           f"(dynamic NTK makes a token's logits depend on the tokens after it)")
        theta = params.get("rope_theta", theta)
    return float(theta if theta is not None else 10000.0)


def model_config_from_hf(raw: dict[str, Any], *, where: str = "config.json") -> DogeConfig:
    """DogeConfig of a dense transformers Doge config dict; SlmError naming any key slm cannot represent."""
    if raw.get("model_type") != "doge":
        raise SlmError(f"{where}: model_type={raw.get('model_type')!r} is not 'doge'")
    missing = [k for k in _REQUIRED_HF_KEYS if raw.get(k) is None]
    if missing:
        raise SlmError(f"{where}: missing key {missing[0]!r}; add it to config.json")
    for key, accepted in _MUST_BE.items():
        if raw.get(key) not in accepted:
            if key == "is_moe":
                raise SlmError(f"{where}: is_moe=true is not imported: transformers' DogeCDMoE routes each token by "
                               f"other tokens' router logits, so slm's per-token routing would change the function")
            raise SlmError(f"{where}: {key}={raw[key]!r} is not supported (slm needs {accepted[0]!r})")
    values = {**_HF_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    head_dim = values.get("head_dim")
    if head_dim is not None and head_dim != values["hidden_size"] // values["num_attention_heads"]:
        raise SlmError(f"{where}: head_dim={head_dim} differs from hidden_size/num_attention_heads; slm derives it")
    kwargs = {ours: values[hf] for ours, hf in CONFIG_MAP}
    kwargs["n_kv_heads"] = kwargs["n_kv_heads"] or kwargs["n_heads"]
    kwargs["rope_theta"] = _rope_theta(raw, where)
    try:
        cfg = DogeConfig(**kwargs)
    except (SlmError, TypeError) as exc:
        raise SlmError(f"{where}: {exc}") from None
    for name, preset in PRESETS.items():  # name the preset it equals (informational)
        if DogeConfig(**preset.values).architecture_fields() == replace(cfg, preset="").architecture_fields():
            return replace(cfg, preset=name)
    return cfg


ADAPTER = HFAdapter(param_map=PARAM_MAP, model_types=("doge",), config_to_hf=model_config_to_hf,
                    config_from_hf=model_config_from_hf, refusal=moe_refusal)
