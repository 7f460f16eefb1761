"""Checkpoints: one directory per checkpoint, written to a temp dir and renamed, verified on load.

Layout of `step_000100/`:
  model.safetensors    weights (safetensors: no pickle, memory-mappable, the format HF export also uses)
  config.yaml          the resolved run config; `load_model` rebuilds the model from its `model` section through the
                       architecture registry (`model.arch`; a config without it is llama)
  tokenizer/           tokenizer.json + tokenizer_config.json (when the run has a tokenizer)
  optimizer.pt         optimizer state (tensors + plain containers; read with torch.load(weights_only=True))
  trainer_state.pt     step, phase, data-loader position, scheduler state, RNG states, best val loss
  meta.json            format tag, step, and size + sha256 of every file above — written last; a checkpoint without
                       it, or whose files differ from it, is reported as truncated with the fix
A training checkpoint holds all of these; a model-only checkpoint (e.g. from `slm import hf`) omits the two .pt files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import RunConfig, load_saved_config, save_config
from .errors import SlmError, atomic_dir
from .models import CausalLM, build_model

FORMAT = "slm-checkpoint-v1"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: RunConfig, tokenizer: Any = None,
                    optimizer_state: dict | None = None, trainer_state: dict | None = None,
                    extra_meta: dict | None = None) -> Path:
    """Write a checkpoint directory atomically. `tokenizer` is a slm Tokenizer (with .save) or a folder to copy."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        save_config(config, tmp / "config.yaml")
        if tokenizer is not None:
            if hasattr(tokenizer, "save"):
                tokenizer.save(tmp / "tokenizer")
            else:
                shutil.copytree(tokenizer, tmp / "tokenizer")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        meta = {"format": FORMAT, "step": (trainer_state or {}).get("step"), "files": files, **(extra_meta or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return path


def verify_checkpoint(path: str | Path, *, full_hash: bool = False) -> dict:
    """Check the directory is a complete slm checkpoint; return its meta. Raises SlmError naming what is wrong."""
    path = Path(path)
    fix = "re-save it, or resume from an earlier checkpoint"
    if not path.is_dir():
        raise SlmError(f"{path}: checkpoint directory not found; pass a directory written by slm train / slm import hf")
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise SlmError(f"{path}: incomplete checkpoint (no meta.json; the save was interrupted?); {fix}")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SlmError(f"{meta_file}: corrupt checkpoint metadata; {fix}") from None
    if meta.get("format") != FORMAT:
        raise SlmError(f"{meta_file}: not an {FORMAT} checkpoint (format={meta.get('format')!r})")
    for name, info in meta["files"].items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            raise SlmError(f"{f}: truncated or missing checkpoint file (expected {info['bytes']} bytes); {fix}")
        if full_hash and _sha256(f) != info["sha256"]:
            raise SlmError(f"{f}: checksum mismatch (corrupt checkpoint file); {fix}")
    return meta


def load_config(path: str | Path) -> RunConfig:
    verify_checkpoint(path)
    return load_saved_config(Path(path) / "config.yaml")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    f = Path(path) / "model.safetensors"
    try:
        return load_file(str(f))
    except (SafetensorError, OSError) as exc:
        raise SlmError(f"{f}: unreadable weights ({exc}); the checkpoint is corrupt — re-save it") from None


def load_model(path: str | Path, *, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None) -> tuple[CausalLM, RunConfig]:
    """Rebuild the model from the checkpoint's own config and load its weights (eval mode)."""
    cfg = load_config(path)
    model = build_model(cfg.model, device="meta")
    state = load_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise SlmError(f"{path}: weights do not match its config.yaml (missing {missing[:3]}, unexpected "
                       f"{unexpected[:3]}); the checkpoint is inconsistent")
    model.materialize_buffers()  # the non-persistent buffers hold no data after assign=True onto meta
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), cfg


def load_tokenizer_of(path: str | Path):
    """The tokenizer saved inside a checkpoint (or None when it has none)."""
    from .tokenizer import load_tokenizer

    tdir = Path(path) / "tokenizer"
    return load_tokenizer(tdir) if tdir.is_dir() else None


def load_training_state(path: str | Path) -> tuple[dict, dict]:
    """Optimizer state and trainer state of a training checkpoint (weights_only: never unpickles arbitrary objects)."""
    path = Path(path)
    verify_checkpoint(path)
    out = []
    for name in ("optimizer.pt", "trainer_state.pt"):
        f = path / name
        if not f.is_file():
            raise SlmError(f"{path}: model-only checkpoint (no {name}); it can be fine-tuned from "
                           f"(--train.init_from) but not resumed")
        try:
            out.append(torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:  # torch raises several types for corrupt/unsafe files
            raise SlmError(f"{f}: unreadable ({type(exc).__name__}); the checkpoint is corrupt — resume from an "
                           f"earlier one") from None
    return out[0], out[1]


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (step order)."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step_*") if (p / "meta.json").is_file())


def prune_checkpoints(run_dir: str | Path, keep_last: int, best: Path | None) -> None:
    """Delete all but the newest `keep_last` checkpoints and the best one."""
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    if best is not None:
        keep.add(Path(best))
    for p in ckpts:
        if p not in keep:
            shutil.rmtree(p, ignore_errors=True)


def resume_path(cfg: RunConfig) -> Path | None:
    """The checkpoint `--train.resume` names: a path, "auto" = the run dir's latest (None when it has none), or None."""
    if not cfg.train.resume:
        return None
    if cfg.train.resume == "auto":
        found = list_checkpoints(cfg.run_dir())
        return found[-1] if found else None
    return Path(cfg.train.resume)


def resolve_checkpoint(path: str | Path, prefer: str = "latest") -> Path:
    """A checkpoint dir as given, or for a run dir its latest (or best) complete checkpoint."""
    path = Path(path)
    if (path / "meta.json").is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise SlmError(f"{path}: neither a checkpoint nor a run dir with checkpoints/; pass a checkpoint directory")
    if prefer == "best":
        best = [p for p in found if _val_loss(p) is not None]
        if best:
            return min(best, key=_val_loss)
    return found[-1]


def _val_loss(path: Path) -> float | None:
    try:
        return json.loads((path / "meta.json").read_text()).get("val", {}).get("loss")
    except (OSError, json.JSONDecodeError):
        return None
