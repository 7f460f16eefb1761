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
A sharded checkpoint (`--train.parallel=fsdp`) holds `dcp/` (torch.distributed.checkpoint shards of weights and
optimizer state, one file per rank + `.metadata`) instead of model.safetensors + optimizer.pt, and meta.json says
`"sharded": "dcp"`. DCP reshards on load, so it resumes on any world size; `load_state_dict` reads it whole in one
process (no process group) for export, eval and init_from. Every shard is in meta.json's file list, so a missing or
truncated shard is the same one-line error as any other missing file.

Trust: a checkpoint is built in a hidden temp dir (`.step_000100.XXXX.tmp`), every file and directory is fsynced,
meta.json is written and fsynced last, and only then is the directory renamed into place; so a listed checkpoint
(`step_*` with a meta.json) is complete after any crash. Loading checks every file's size and sha256 against meta.json
(`verify_checkpoint`, default on for load_model / load_state_dict / load_training_state / resume). sha256 runs at
0.9-1.9 GB/s on this machine's CPU (SHA-NI; the lower figure while other jobs load both cores), i.e. 0.3-0.6 s for
a 135M-parameter fp32 model (0.54 GB); a resume also hashes the AdamW state: `python bench/checkpoint.py` measured
load 5.1 s hashed vs 0.9 s sizes-only for smollm2-135m's 1.6 GB checkpoint at load average ~6 on 2 cores. Each file
is hashed once per process (cached by path, size and mtime), so load_config + load_model + resume hash once.
Pruning renames a checkpoint to a hidden `.step_N.*.deleting` name before deleting it, so a kill mid-prune never
leaves a listed, half-deleted checkpoint; `clean_stale` removes such leftovers and the temp dirs of killed saves when
a run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import RunConfig, load_saved_config, save_config
from .errors import SlmError, atomic_dir, fsync_path, loads_json, os_errors
from .models import CausalLM, build_model

FORMAT = "slm-checkpoint-v1"
SHARDED_DIR = "dcp"  # a sharded checkpoint's torch.distributed.checkpoint folder (meta.json: "sharded")


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


def params_finite(model: torch.nn.Module) -> bool:
    """True when every parameter and buffer of `model` is finite (one fused reduction per dtype group)."""
    tensors = [t for t in unwrap(model).state_dict().values() if t.is_floating_point()]
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors)  # inf/nan anywhere makes that tensor's norm non-finite
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: RunConfig, tokenizer: Any = None,
                    optimizer_state: dict | None = None, trainer_state: dict | None = None,
                    extra_meta: dict | None = None, overwrite: bool = False) -> Path:
    """Write a checkpoint directory atomically. `tokenizer` is a slm Tokenizer (with .save) or a folder to copy.

    An existing `path` is replaced only with `overwrite` and only when slm wrote it (`slm.errors.atomic_dir`). A model
    with a non-finite weight is refused (SlmError): such a checkpoint could only poison a resume."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise SlmError(f"{path}: not saved — weights {', '.join(bad[:3])} hold inf/nan; lower --train.lr or resume "
                       f"from an earlier checkpoint")
    with os_errors("writing checkpoint", path), atomic_dir(path, overwrite=overwrite, kind="checkpoint") as tmp:
        _write_file(tmp / "model.safetensors", lambda f: save_file(state, f, metadata={"format": "pt"}), path)
        if optimizer_state is not None:
            _write_file(tmp / "optimizer.pt", lambda f: torch.save(optimizer_state, f), path)
        _finish_checkpoint(tmp, path, config, tokenizer, trainer_state, extra_meta)
    _VERIFIED.pop(str(path.resolve()), None)
    return path


def _finish_checkpoint(tmp: Path, path: Path, config: RunConfig, tokenizer: Any, trainer_state: dict | None,
                       extra_meta: dict | None, sharded: bool = False) -> None:
    """Config, tokenizer and trainer state next to the weights already in `tmp`, then the manifest (meta.json) last."""
    save_config(config, tmp / "config.yaml")
    if tokenizer is not None:
        if hasattr(tokenizer, "save"):
            tokenizer.save(tmp / "tokenizer")
        else:
            shutil.copytree(tokenizer, tmp / "tokenizer")
    if trainer_state is not None:
        _write_file(tmp / "trainer_state.pt", lambda f: torch.save(trainer_state, f), path)
    files = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    meta = {"format": FORMAT, "step": (trainer_state or {}).get("step"), "files": files, **(extra_meta or {})}
    if sharded:
        meta["sharded"] = SHARDED_DIR
    for name in files:  # everything the manifest lists is on disk before the manifest is
        fsync_path(tmp / name)
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # last: a dir without it is incomplete


def _share_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (as is without a process group)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded_checkpoint(path: str | Path, *, state: dict, main: bool, config: RunConfig, tokenizer: Any = None,
                            trainer_state: dict | None = None, extra_meta: dict | None = None,
                            overwrite: bool = False) -> Path:
    """Collective (every rank calls it): write a sharded checkpoint, the same directory as `save_checkpoint` with
    `dcp/` (torch.distributed.checkpoint: one `__<rank>_0.distcp` file per rank, `.metadata` written by rank 0 once
    every rank's shard is on disk) in place of model.safetensors + optimizer.pt. `state` is the DCP state dict
    ({"model": ..., "optim": ...}, DTensor shards or whole tensors). Rank 0 owns the temp dir, writes the replicated
    files and meta.json (listing every shard with its size and sha256) last, then renames the dir into place."""
    import torch.distributed.checkpoint as dcp

    path = Path(path)
    if not main:
        tmp = _share_from_main(None)
        if tmp is None:  # rank 0 failed before the save started; it raises, the job fails there
            raise SlmError(f"{path}: not saved — rank 0 could not create the checkpoint dir")
        dcp.save(state, checkpoint_id=Path(tmp) / SHARDED_DIR)  # no_dist: False (a non-main rank has a group)
        return path
    with os_errors("writing checkpoint", path), atomic_dir(path, overwrite=overwrite, kind="checkpoint") as tmp:
        _share_from_main(str(tmp))
        try:
            with single_process_dcp():
                dcp.save(state, checkpoint_id=tmp / SHARDED_DIR, no_dist=not torch.distributed.is_initialized())
        except RuntimeError as exc:
            free = shutil.disk_usage(tmp).free
            raise SlmError(f"{path}: writing the sharded state failed ({str(exc).splitlines()[0][:120]}); "
                           f"{free / 2**20:,.0f} MiB free — free space or write elsewhere") from None
        _finish_checkpoint(tmp, path, config, tokenizer, trainer_state, extra_meta, sharded=True)
    _VERIFIED.pop(str(path.resolve()), None)
    return path


@contextlib.contextmanager
def single_process_dcp() -> Iterator[None]:
    """DCP warns on every single-process save/load ("assuming the intent is ..."): that is the intent here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def is_sharded(path: str | Path) -> bool:
    """Whether checkpoint `path` holds its weights and optimizer state as DCP shards (see save_sharded_checkpoint)."""
    try:
        meta = loads_json((Path(path) / "meta.json").read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("sharded") == SHARDED_DIR


def _load_sharded_weights(path: Path) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights of a sharded checkpoint, read in this process alone (no process group): what
    `slm export` / `slm eval` / `--train.init_from` need. Shapes and dtypes come from the DCP metadata."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path / SHARDED_DIR))
    try:
        entries = reader.read_metadata().state_dict_metadata
        state = {k.removeprefix("model."): torch.empty(tuple(m.size), dtype=m.properties.dtype)
                 for k, m in entries.items() if k.startswith("model.") and isinstance(m, TensorStorageMetadata)}
        with single_process_dcp():
            dcp.load({"model": state}, storage_reader=reader, no_dist=True)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        why = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise SlmError(f"{path / SHARDED_DIR}: unreadable sharded weights ({type(exc).__name__}: {why}); the "
                       f"checkpoint is corrupt — re-save it or use an earlier one") from None
    return state


def _write_file(path: Path, write: Any, dest: Path) -> None:
    """Run a library writer on `path` (inside the temp dir of checkpoint `dest`); torch and safetensors report a full
    disk as a RuntimeError without errno ("unexpected pos ..."), named here with the free space."""
    try:
        write(str(path))
    except RuntimeError as exc:
        free = shutil.disk_usage(path.parent).free
        raise SlmError(f"{dest}: writing {path.name} failed ({str(exc).splitlines()[0][:120]}); {free / 2**20:,.0f} "
                       f"MiB free on that disk — free space or write elsewhere") from None


# (resolved dir) -> ((name, size, mtime_ns) of meta.json and each listed file): what was hashed already
_VERIFIED: dict[str, tuple] = {}


def _fingerprint(path: Path, names: list[str]) -> tuple:
    out = []
    for name in ["meta.json", *names]:
        st = (path / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def verify_checkpoint(path: str | Path, *, full_hash: bool = True) -> dict:
    """Check the directory is a complete slm checkpoint whose files match meta.json (sizes, and sha256 unless
    `full_hash=False`); return its meta. Raises SlmError naming what is wrong."""
    path = Path(path)
    fix = "re-save it, or resume from an earlier checkpoint"
    if not path.is_dir():
        raise SlmError(f"{path}: checkpoint directory not found; pass a directory written by slm train / slm import hf")
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise SlmError(f"{path}: incomplete checkpoint (no meta.json; the save was interrupted?); {fix}")
    try:
        meta = loads_json(meta_file.read_bytes())
    except (OSError, ValueError):
        raise SlmError(f"{meta_file}: corrupt checkpoint metadata; {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise SlmError(f"{meta_file}: not an {FORMAT} checkpoint (format={fmt!r})")
    files = meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("bytes"), int)
                                              and isinstance(v.get("sha256"), str) for v in files.values()):
        raise SlmError(f"{meta_file}: corrupt checkpoint metadata (bad file list); {fix}")
    for name, info in files.items():
        f = path / name
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            raise SlmError(f"{f}: truncated or missing checkpoint file (expected {info['bytes']} bytes); {fix}")
    if full_hash:
        key = str(path.resolve())
        seen = _fingerprint(path, sorted(files))
        if _VERIFIED.get(key) != seen:
            for name, info in files.items():
                if _sha256(path / name) != info["sha256"]:
                    raise SlmError(f"{path / name}: checksum mismatch (corrupt checkpoint file); {fix}")
            _VERIFIED[key] = seen
    return meta


def load_config(path: str | Path) -> RunConfig:
    verify_checkpoint(path)
    return load_saved_config(Path(path) / "config.yaml")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a verified checkpoint (sizes and sha256 against meta.json; hashed once per process)."""
    verify_checkpoint(path)
    if is_sharded(path):
        return _load_sharded_weights(Path(path))
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
    out: list[dict] = []
    names = ("optimizer.pt", "trainer_state.pt")
    if is_sharded(path):  # the optimizer state is in dcp/, read collectively by the trainer
        out, names = [{}], ("trainer_state.pt",)
    for name in names:
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


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint so that no crash can leave it listed but incomplete: rename it to a hidden name first."""
    if not path.is_dir():
        return
    doomed = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".deleting", dir=path.parent))
    os.replace(path, doomed / path.name)  # atomic: from here on it is not a `step_*` any more
    fsync_path(path.parent)
    shutil.rmtree(doomed, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep_last: int, best: Path | None,
                      protect: tuple[Path, ...] = ()) -> None:
    """Delete all but the newest `keep_last` checkpoints, the best one and `protect` (e.g. the rollback target)."""
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    keep.update(Path(p) for p in protect)
    if best is not None:
        keep.add(Path(best))
    for p in ckpts:
        if p not in keep:
            remove_checkpoint(p)


def clean_stale(run_dir: str | Path) -> list[str]:
    """Remove what killed runs left in checkpoints/: temp dirs of interrupted saves (`.step_*.tmp`), checkpoints
    caught mid-delete (`.step_*.deleting`, `.step_*.old`) and `step_*` dirs without meta.json (incomplete; an older
    slm could leave them). Returns the names removed. Call only when no other process writes this run dir."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        stale = (p.name.startswith(".step_") and p.name.endswith((".tmp", ".deleting", ".old"))) or (
            p.name.startswith("step_") and p.is_dir() and not (p / "meta.json").is_file())
        if stale:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def is_healthy(path: Path) -> str | None:
    """None when checkpoint `path` verifies (sizes and sha256) and its weights are finite, else the reason."""
    try:
        verify_checkpoint(path)
        state = load_state_dict(path)
    except SlmError as exc:
        return str(exc)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return f"{path}: weights {', '.join(bad[:3])} hold inf/nan" if bad else None


def resume_path(cfg: RunConfig, warn: Any = None) -> Path | None:
    """The checkpoint `--train.resume` names: a path, "auto" = the run dir's newest healthy one (None when it has
    none), or None. "auto" passes over a checkpoint that fails its checksums or holds non-finite weights (an older
    slm could save one), reporting each through `warn(message)`."""
    if not cfg.train.resume:
        return None
    if cfg.train.resume == "auto":
        for path in reversed(list_checkpoints(cfg.run_dir())):
            reason = is_healthy(path)
            if reason is None:
                return path
            if warn is not None:
                warn(f"skipping checkpoint {path.name} for resume: {reason}")
        return None
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
        loss = loads_json((path / "meta.json").read_bytes()).get("val", {}).get("loss")
    except (OSError, ValueError, AttributeError):
        return None
    return loss if isinstance(loss, (int, float)) and math.isfinite(loss) else None
