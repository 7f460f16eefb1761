"""Hugging Face interchange: export slm checkpoints as `transformers` model folders and import HF / GGUF models back.

This module is file I/O only; what a parameter or config key is called in transformers comes from each
architecture's `HFAdapter` (`slm.models.<arch>.hf`, on its registry entry). An architecture without one is refused
with a one-line reason. Import picks the architecture whose adapter lists the folder's `model_type`.

Design decisions
- Both rename directions are generated from the adapter's table; weights are renamed and cast, never permuted.
- Every imported tensor is checked by name and shape against the model the config implies (built on the meta
  device), so a folder whose weights disagree with its config.json is refused, not half-loaded.
- GGUF files go through transformers (`gguf_file=`), which dequantizes them and undoes llama.cpp's q/k permutation;
  writing our own GGUF reader would duplicate that for one use (the SmolLM2 teacher). GGUF stores floats as f32, so
  eps/theta are rounded to their shortest f32 spelling (9.99999975e-06 -> 1e-05) and presets are recognised.
- Tokenizers travel as files: export writes what `slm.tokenizer.Tokenizer.save` writes (loadable by AutoTokenizer);
  import loads the source folder with `slm.tokenizer.load_tokenizer`, so specials resolve as everywhere else in slm.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checkpoint import load_model, load_tokenizer_of, save_checkpoint, unwrap
from ..config import RunConfig, RunSection, SamplingConfig, TokenizerConfig
from ..errors import SlmError, atomic_dir, check_output_dir, loads_json, os_errors
from ..models import ARCHS, HFAdapter, ModelConfig, build_model, get_arch

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
           "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _torch_dtype(dtype: str, flag: str = "--export.dtype") -> torch.dtype:
    if dtype not in _DTYPES:
        raise SlmError(f"{flag}={dtype!r}: choose float32, bfloat16 or float16")
    return _DTYPES[dtype]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def adapter_of(cfg: ModelConfig) -> HFAdapter:
    """The HF adapter of `cfg`'s architecture; SlmError when transformers has no class for it."""
    spec = get_arch(cfg.arch)
    if spec.hf is None:
        raise SlmError(f"slm export hf: architecture {spec.name!r} has no transformers class; export it with "
                       f"`slm export` to another format or keep the slm checkpoint")
    return spec.hf


def _adapter_for_model_type(raw: dict[str, Any], where: str) -> HFAdapter:
    model_type = raw.get("model_type")
    for spec in ARCHS.values():
        if spec.hf is not None and model_type in spec.hf.model_types:
            return spec.hf
    known = sorted(t for spec in ARCHS.values() if spec.hf is not None for t in spec.hf.model_types)
    raise SlmError(f"{where}: model_type={model_type!r} is not supported; slm imports {', '.join(known)}")


def model_config_to_hf(cfg: ModelConfig, *, dtype: str = "float32", special_ids: dict[str, int | None] | None = None
                       ) -> dict[str, Any]:
    """config.json of the transformers model equivalent to `cfg` (through its architecture's adapter)."""
    return adapter_of(cfg).config_to_hf(cfg, dtype=_dtype_name(_torch_dtype(dtype)), special_ids=special_ids)


def model_config_from_hf(raw: dict[str, Any], *, where: str = "config.json") -> ModelConfig:
    """ModelConfig of an HF config dict, by the adapter that imports its model_type; SlmError naming unsupported keys."""
    return _adapter_for_model_type(raw, where).config_from_hf(raw, where=where)


def to_hf_name(name: str, cfg: ModelConfig) -> str:
    """slm parameter name of a `cfg` model -> HF name (llama: `layers.3.mlp.up_proj.weight` ->
    `model.layers.3.mlp.up_proj.weight`)."""
    return adapter_of(cfg).to_hf_name(name)


# ---------------------------------------------------------------------------------------------------------------- #
# weights


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], cfg: ModelConfig, *, where: str,
                       dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Rename HF tensors to slm names, check every name and shape against `cfg`, cast to `dtype`."""
    adapter = adapter_of(cfg)
    expected = {k: tuple(v.shape) for k, v in build_model(cfg, device="meta").state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in hf_state.items():
        name = adapter.from_hf_name(hf_name)
        if name is None and adapter.ignored_hf_tensors.search(hf_name):
            continue
        if name == adapter.tied_output and cfg.tie_embeddings:
            continue  # tied: HF uses the embedding as the head too, whatever a stale lm_head copy holds
        if name is None or name not in expected:
            raise SlmError(f"{where}: unexpected tensor {hf_name!r} (biases, extra layers or q/k norms the config "
                           f"does not declare are not supported); the weights do not match config.json")
        if tuple(tensor.shape) != expected[name]:
            raise SlmError(f"{where}: tensor {hf_name!r} has shape {tuple(tensor.shape)} but config.json implies "
                           f"{expected[name]}; the weights do not match config.json")
        out[name] = tensor.to(dtype).contiguous()
    missing = [adapter.to_hf_name(k) for k in expected if k not in out]
    if missing:
        tied = adapter.to_hf_name(adapter.tied_output)
        hint = "; set tie_word_embeddings=true if the head shares the embedding" if tied in missing else ""
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
        weight_map = loads_json(index.read_bytes())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise SlmError(f"{index}: not a valid shard index ({type(exc).__name__}); re-download the model") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SlmError(f"{index}: not a valid shard index (weight_map); re-download the model")
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
              tokenizer: Tokenizer | str | Path | None = None, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Write a `transformers` model folder (model.safetensors, config.json, generation_config.json, tokenizer files).

    `checkpoint_dir_or_model` is an slm checkpoint directory (its tokenizer is exported too unless `tokenizer` is
    given) or an slm model. `tokenizer` is an slm Tokenizer or a tokenizer.json / tokenizer folder path. An existing
    `out_dir` is replaced only with `overwrite` and only when it is a previous slm output (`slm.errors.atomic_dir`).
    """
    torch_dtype = _torch_dtype(dtype)
    check_output_dir(out_dir, overwrite=overwrite)  # before any work
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
    adapter = adapter_of(cfg)
    state = {adapter.to_hf_name(k): v.detach().to("cpu", torch_dtype).contiguous()
             for k, v in model.state_dict().items()}
    config = model_config_to_hf(cfg, dtype=dtype, special_ids=special_ids)
    generation = _generation_config(special_ids, sample)
    out_dir = Path(out_dir)
    with os_errors("exporting to", out_dir), atomic_dir(out_dir, overwrite=overwrite, kind="hf-export") as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------- #
# import


def _write_slm_checkpoint(cfg: ModelConfig, hf_state: dict[str, torch.Tensor], out_ckpt_dir: str | Path, *,
                          dtype: str, tokenizer: Tokenizer | None, source: Path, where: str,
                          overwrite: bool = False) -> Path:
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
                           extra_meta={"imported_from": str(source)}, overwrite=overwrite)


def _read_config_json(src_dir: Path) -> dict[str, Any]:
    path = src_dir / "config.json"
    if not path.is_file():
        raise SlmError(f"{path}: not found; point to a Hugging Face model folder (config.json + model.safetensors)")
    try:
        raw = loads_json(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SlmError(f"{path}: unreadable JSON ({type(exc).__name__}); re-download the model") from None
    if not isinstance(raw, dict):
        raise SlmError(f"{path}: expected a JSON object; re-download the model")
    return raw


def import_hf(src_dir: str | Path, out_ckpt_dir: str | Path, *, dtype: str = "float32", overwrite: bool = False) -> Path:
    """Convert an HF Llama / Mistral / Qwen3 folder (or a .gguf file) into a model-only slm checkpoint.

    An existing `out_ckpt_dir` is replaced only with `overwrite` and only when it is a previous slm output."""
    src = Path(src_dir)
    check_output_dir(out_ckpt_dir, overwrite=overwrite)  # before reading gigabytes
    if src.suffix.lower() == ".gguf":
        return import_gguf_via_transformers(src, out_ckpt_dir, dtype=dtype, overwrite=overwrite)
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
                                 where=str(src), overwrite=overwrite)


def _shortest_f32(value: float) -> float:
    """The shortest decimal that is the same float32 (GGUF stores f32: 9.99999975e-06 -> 1e-05)."""
    import numpy as np

    return float(str(np.float32(value)))


def _drop_tokens_past(tokenizer_json: Path, n_vocab: int) -> None:
    """Remove added tokens with ids >= n_vocab: transformers' byte-level GGUF tokenizer appends GPT-2's default
    `<|endoftext|>` when the file's vocabulary has none, one id past the model's embedding."""
    raw = loads_json(tokenizer_json.read_bytes())
    kept = [t for t in raw.get("added_tokens", []) if t.get("id", 0) < n_vocab]
    if len(kept) != len(raw.get("added_tokens", [])):
        raw["added_tokens"] = kept
        tokenizer_json.write_text(json.dumps(raw, ensure_ascii=False), encoding="utf-8")


def import_gguf_via_transformers(gguf_path: str | Path, out_ckpt_dir: str | Path, *, dtype: str = "float32",
                                 overwrite: bool = False) -> Path:
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
        _drop_tokens_past(Path(tmp) / "tokenizer.json", cfg.vocab_size)
        tokenizer = load_tokenizer(tmp)
    return _write_slm_checkpoint(cfg, hf_state, out_ckpt_dir, dtype=dtype, tokenizer=tokenizer, source=gguf_path,
                                 where=str(gguf_path), overwrite=overwrite)
