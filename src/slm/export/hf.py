"""Hugging Face interchange: export slm checkpoints as `transformers` model folders and import HF / GGUF models back.

Design decisions
- The rename is data, not code: `PARAM_MAP` lists each slm parameter name next to its HF name (with the `model.`
  prefix) and both directions are generated from it; `CONFIG_MAP` does the same for config fields. Our module names
  already equal HF Llama's, so the table is short, but a future architecture only adds rows.
- No tensor is permuted: our RoPE is HF's rotate-half layout and RMSNorm computes like `LlamaRMSNorm`, so export is a
  rename plus a dtype cast and the exported model reproduces our logits in plain `transformers` (no remote code).
- qk_norm models export as `Qwen3ForCausalLM`: Qwen3 applies an RMSNorm over head_dim to each query/key head before
  RoPE, with the same eps as the block norms and no biases, which is exactly our `Attention` with `qk_norm=True`
  (the parity test checks the logits). Everything else exports as `LlamaForCausalLM`.
- config.json carries `rope_theta` and `rope_parameters` both: transformers 5 reads the latter (and folds a top-level
  `rope_theta` into it), 4.x and llama.cpp's converter read the former; same for `dtype`/`torch_dtype`.
- Import reads config.json by hand with the per-model-type defaults of the HF config classes written down as data
  (`_HF_DEFAULTS`), so a safetensors import needs neither transformers nor remote code. Anything our decoder cannot
  represent (biases, scaled/partial RoPE, sliding windows, a head_dim other than hidden_size/heads, quantized weights)
  is refused with the config key named, rather than imported into a model that would silently compute something else.
- GGUF files go through transformers (`gguf_file=`), which dequantizes them and undoes llama.cpp's q/k permutation;
  writing our own GGUF reader would duplicate that for one use (the SmolLM2 teacher). GGUF stores floats as f32, so
  eps/theta are rounded to their shortest f32 spelling (9.99999975e-06 -> 1e-05) and presets are recognised.
- Tokenizers travel as files: export writes what `slm.tokenizer.Tokenizer.save` writes (loadable by AutoTokenizer);
  import loads the source folder with `slm.tokenizer.load_tokenizer`, so specials resolve as everywhere else in slm.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import RunConfig, RunSection, TokenizerConfig
from ..errors import SlmError, atomic_dir
from ..generate.sampling import SamplingConfig
from ..model import PRESETS, ModelConfig, preset_config
from ..train.checkpoint import build_model, load_model, load_tokenizer_of, save_checkpoint, unwrap

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

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

# Derived buffers some HF checkpoints carry; they are recomputed from the config, never loaded.
_IGNORED_HF_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# ModelConfig field -> HF config key (rope_theta, head_dim and qk_norm <-> model_type are handled explicitly).
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

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ---------------------------------------------------------------------------------------------------------------- #
# names


def _compile(template: str) -> re.Pattern:
    before, sep, after = template.partition("{i}")
    body = re.escape(before) + (r"(?P<i>\d+)" + re.escape(after) if sep else "")
    return re.compile(f"^{body}$")


_TO_HF = [(_compile(ours), hf) for ours, hf in PARAM_MAP]
_FROM_HF = [(_compile(hf), ours) for ours, hf in PARAM_MAP]


def _rename(name: str, table: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, template in table:
        match = pattern.match(name)
        if match:
            return template.format(**match.groupdict())
    return None


def to_hf_name(name: str) -> str:
    """slm parameter name -> HF name (`layers.3.mlp.up_proj.weight` -> `model.layers.3.mlp.up_proj.weight`)."""
    hf = _rename(name, _TO_HF)
    if hf is None:
        raise ValueError(f"parameter {name!r} has no row in slm.export.hf.PARAM_MAP; add one")
    return hf


def from_hf_name(name: str) -> str | None:
    """HF tensor name -> slm parameter name, or None when the table has no row for it."""
    return _rename(name, _FROM_HF)


def _torch_dtype(dtype: str, flag: str = "--export.dtype") -> torch.dtype:
    if dtype not in _DTYPES:
        raise SlmError(f"{flag}={dtype!r}: choose float32, bfloat16 or float16")
    return _DTYPES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------------------------- #
# config


def model_config_to_hf(cfg: ModelConfig, *, dtype: str = "float32", special_ids: dict[str, int | None] | None = None
                       ) -> dict[str, Any]:
    """config.json of the `LlamaForCausalLM` (or, with qk_norm, `Qwen3ForCausalLM`) equivalent to `cfg`."""
    arch, model_type = _EXPORT_ARCH[cfg.qk_norm]
    name = _dtype_name(_torch_dtype(dtype))
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


def model_config_from_hf(raw: dict[str, Any], *, where: str = "config.json") -> ModelConfig:
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
        cfg = ModelConfig(**kwargs)
    except (SlmError, TypeError) as exc:
        names = ", ".join(f"{ours}={hf}" for ours, hf in CONFIG_MAP[1:6])
        raise SlmError(f"{where}: {str(exc).removeprefix('--model: ')} (slm names: {names})") from None
    return _with_matching_preset(cfg)


def _with_matching_preset(cfg: ModelConfig) -> ModelConfig:
    """Name the preset whose architecture `cfg` equals (preset is informational; init_std does not count)."""
    ignore = {"preset", "init_std"}
    for name in PRESETS:
        ref = preset_config(name)
        if all(getattr(cfg, f.name) == getattr(ref, f.name) for f in fields(ModelConfig) if f.name not in ignore):
            return replace(cfg, preset=name)
    return replace(cfg, preset="")


# ---------------------------------------------------------------------------------------------------------------- #
# weights


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, *, where: str,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Rename HF tensors to slm names, check every name and shape against `cfg`, cast to `dtype`."""
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in hf_state.items():
        name = from_hf_name(hf_name)
        if name is None and _IGNORED_HF_TENSORS.search(hf_name):
            continue
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # tied: HF uses the embedding as the head too, whatever a stale lm_head copy holds
        if name is None or name not in expected:
            raise SlmError(f"{where}: unexpected tensor {hf_name!r} (biases, extra layers or q/k norms the config "
                           f"does not declare are not supported); the weights do not match config.json")
        if tuple(tensor.shape) != expected[name]:
            raise SlmError(f"{where}: tensor {hf_name!r} has shape {tuple(tensor.shape)} but config.json implies "
                           f"{expected[name]}; the weights do not match config.json")
        out[name] = tensor.to(dtype).contiguous()
    missing = [to_hf_name(k) for k in expected if k not in out]
    if missing:
        hint = "; set tie_word_embeddings=true if the head shares the embedding" if "lm_head.weight" in missing else ""
        raise SlmError(f"{where}: missing tensor(s) {missing[:3]} ({len(missing)} in all){hint}")
    return out


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SlmError(f"{path}: unreadable safetensors file ({exc}); re-download or re-save the model") from None


def _load_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe pickles
        raise SlmError(f"{path}: unreadable weights ({type(exc).__name__}: {exc}); convert it to safetensors") from None


def _read_shard_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SlmError(f"{index}: not a valid shard index ({type(exc).__name__}); re-download the model") from None
    return [index.parent / name for name in dict.fromkeys(weight_map.values())]


# Weight files in the order transformers prefers them: (file, loader, is_shard_index).
_WEIGHT_FILES = (
    ("model.safetensors", _load_safetensors, False),
    ("model.safetensors.index.json", _load_safetensors, True),
    ("pytorch_model.bin", _load_torch_bin, False),
    ("pytorch_model.bin.index.json", _load_torch_bin, True),
)


def read_hf_weights(src_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF model folder: single or sharded safetensors, else pytorch_model.bin (weights_only)."""
    src_dir = Path(src_dir)
    for name, loader, sharded in _WEIGHT_FILES:
        path = src_dir / name
        if not path.is_file():
            continue
        if not sharded:
            return loader(path)
        state: dict[str, torch.Tensor] = {}
        for shard in _read_shard_index(path):
            if not shard.is_file():
                raise SlmError(f"{shard}: shard listed in {name} is missing; download every shard of the model")
            state.update(loader(shard))
        return state
    raise SlmError(f"{src_dir}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin; "
                   f"point to a complete Hugging Face model folder")


# ---------------------------------------------------------------------------------------------------------------- #
# export


def _generation_config(special_ids: dict[str, int | None], sample: SamplingConfig | None) -> dict[str, Any]:
    gen: dict[str, Any] = {f"{k}_token_id": v for k, v in special_ids.items()}
    if sample is not None:
        gen["do_sample"] = sample.temperature > 0
        if gen["do_sample"]:
            gen.update(temperature=sample.temperature, top_k=sample.top_k, top_p=sample.top_p)
        if sample.repetition_penalty != 1.0:
            gen["repetition_penalty"] = sample.repetition_penalty
        gen["max_new_tokens"] = sample.max_new_tokens
    return gen


def _resolve_tokenizer(tokenizer: Tokenizer | str | Path | None) -> Tokenizer | None:
    """An slm Tokenizer from a Tokenizer, a tokenizer.json / HF folder path, or None."""
    if tokenizer is None or hasattr(tokenizer, "save"):
        return tokenizer
    from ..tokenizer import load_tokenizer

    return load_tokenizer(tokenizer)


def export_hf(checkpoint_dir_or_model: str | Path | nn.Module, out_dir: str | Path, *,
              tokenizer: Tokenizer | str | Path | None = None, dtype: str = "float32") -> Path:
    """Write a `transformers` model folder (model.safetensors, config.json, generation_config.json, tokenizer files).

    `checkpoint_dir_or_model` is an slm checkpoint directory (its tokenizer is exported too unless `tokenizer` is
    given) or an slm `Transformer`. `tokenizer` is an slm Tokenizer or a tokenizer.json / tokenizer folder path.
    """
    torch_dtype = _torch_dtype(dtype)
    sample = None
    if isinstance(checkpoint_dir_or_model, nn.Module):
        model = unwrap(checkpoint_dir_or_model)
    else:
        model, run_cfg = load_model(checkpoint_dir_or_model)
        sample = run_cfg.sample
        if tokenizer is None:
            tokenizer = load_tokenizer_of(checkpoint_dir_or_model)
    tokenizer = _resolve_tokenizer(tokenizer)
    cfg: ModelConfig = model.cfg
    special_ids: dict[str, int | None] = {}
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise SlmError(f"--tokenizer: {tokenizer.vocab_size} ids but the model embeds only {cfg.vocab_size}; "
                           f"export with the tokenizer the model was trained with")
        special_ids = {"bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id}
    state = {to_hf_name(k): v.detach().to("cpu", torch_dtype).contiguous() for k, v in model.state_dict().items()}
    config = model_config_to_hf(cfg, dtype=dtype, special_ids=special_ids)
    generation = _generation_config(special_ids, sample)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------- #
# import


def _write_slm_checkpoint(cfg: ModelConfig, hf_state: dict[str, torch.Tensor], out_ckpt_dir: str | Path, *,
                          dtype: str, tokenizer: Tokenizer | None, source: Path, where: str) -> Path:
    state = state_dict_from_hf(hf_state, cfg, where=where, dtype=_torch_dtype(dtype, "--dtype"))
    if tokenizer is not None and tokenizer.vocab_size > cfg.vocab_size:
        raise SlmError(f"{source}: the tokenizer has {tokenizer.vocab_size} ids (specials included) but the model "
                       f"embeds only {cfg.vocab_size}; name existing tokens as bos/eos/pad in tokenizer_config.json")
    model = build_model(cfg, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    # The checkpoint's own tokenizer folder: loadable by slm (a .gguf source is not), provenance goes to meta.json.
    tok_path = str((Path(out_ckpt_dir) / "tokenizer").resolve())
    tok_cfg = TokenizerConfig(kind="pretrained", path=tok_path) if tokenizer is not None else TokenizerConfig()
    run_cfg = RunConfig(run=RunSection(name=Path(out_ckpt_dir).name), tokenizer=tok_cfg, model=cfg)
    return save_checkpoint(out_ckpt_dir, model=model, config=run_cfg, tokenizer=tokenizer,
                           extra_meta={"imported_from": str(source)})


def _read_config_json(src_dir: Path) -> dict[str, Any]:
    path = src_dir / "config.json"
    if not path.is_file():
        raise SlmError(f"{path}: not found; point to a Hugging Face model folder (config.json + model.safetensors)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlmError(f"{path}: unreadable JSON ({type(exc).__name__}); re-download the model") from None
    if not isinstance(raw, dict):
        raise SlmError(f"{path}: expected a JSON object; re-download the model")
    return raw


def import_hf(src_dir: str | Path, out_ckpt_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Convert an HF Llama / Mistral / Qwen3 folder (or a .gguf file) into a model-only slm checkpoint."""
    src = Path(src_dir)
    if src.suffix.lower() == ".gguf":
        return import_gguf_via_transformers(src, out_ckpt_dir, dtype=dtype)
    if not src.is_dir():
        raise SlmError(f"{src}: not a directory; pass a Hugging Face model folder or a .gguf file")
    raw = _read_config_json(src)
    cfg = model_config_from_hf(raw, where=str(src / "config.json"))
    _torch_dtype(dtype, "--dtype")  # fail on a bad dtype before reading gigabytes
    hf_state = read_hf_weights(src)
    tokenizer = None
    if (src / "tokenizer.json").is_file():
        from ..tokenizer import load_tokenizer

        tokenizer = load_tokenizer(src)
    return _write_slm_checkpoint(cfg, hf_state, out_ckpt_dir, dtype=dtype, tokenizer=tokenizer, source=src,
                                 where=str(src))


def _shortest_f32(value: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores f32: 9.99999975e-06 -> 1e-05)."""
    import numpy as np

    return float(str(np.float32(value)))


def import_gguf_via_transformers(gguf_path: str | Path, out_ckpt_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Load a Llama-family GGUF with transformers (dequantized to fp32) and write it as an slm checkpoint."""
    import importlib.util

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise SlmError(f"{gguf_path}: GGUF file not found; pass the path of a .gguf file")
    for module in ("transformers", "gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise SlmError(f"{gguf_path}: importing GGUF needs `{module}`; run: pip install transformers gguf accelerate")
    _torch_dtype(dtype, "--dtype")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SlmError(f"{gguf_path}: transformers cannot load this GGUF ({first_line}); use a Llama-family GGUF") from None
    raw = hf_model.config.to_dict()
    raw.pop("quantization_config", None)  # the weights are dequantized by now
    raw["rms_norm_eps"] = _shortest_f32(raw.get("rms_norm_eps", 1e-6))
    if isinstance(raw.get("rope_parameters"), dict) and "rope_theta" in raw["rope_parameters"]:
        raw["rope_parameters"]["rope_theta"] = _shortest_f32(raw["rope_parameters"]["rope_theta"])
    cfg = model_config_from_hf(raw, where=str(gguf_path))
    hf_state = dict(hf_model.state_dict())
    del hf_model
    from ..tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="slm-gguf-tok-") as tmp:
        try:
            AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        except (ValueError, KeyError, OSError, RuntimeError) as exc:
            raise SlmError(f"{gguf_path}: transformers cannot convert its tokenizer ({type(exc).__name__}); "
                           f"import an HF folder with tokenizer.json instead") from None
        tokenizer = load_tokenizer(tmp)
    return _write_slm_checkpoint(cfg, hf_state, out_ckpt_dir, dtype=dtype, tokenizer=tokenizer, source=gguf_path,
                                 where=str(gguf_path))
