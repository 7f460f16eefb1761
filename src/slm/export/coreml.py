"""Core ML export: the pure decode step as an ML program (`.mlpackage`) for iOS 18 / macOS 15, written with coremltools.

The package computes one token per call with the decode state as explicit inputs and outputs, exactly the tensors
of `model.new_state(1, seq_len).tensors()`: `input_ids` (1, 1) int32, `attention_mask` (1, 1) int32 (1 = real token),
`state_0` .. -> `logits` (1, 1, V), `present_0` ..; feed `present_i` back as `state_i`. A prompt is fed one token at
a time (an app's prefill loop); the state starts as zeros (shapes and dtypes are in the package's metadata).

Design decisions
- Stateless step with the state in/out rather than `ct.StateType`: Core ML states are fp16 tensors updated in place,
  while every slm decode state carries bool / int64 bookkeeping (which slots hold real tokens, RoPE positions, the
  write slot) next to its key/value buffers. Passing the whole state keeps one generic exporter for every architecture
  (SLMS's own converter traces a fixed 1 x 1024 full-logits forward with no cache at all: O(T^2) per token).
- Core ML has no bool or int64 model inputs: those state tensors travel as int32 and are cast inside the graph.
- Traced with `torch.jit.trace` (coremltools' most complete frontend) at batch 1 and a fixed state length
  (`--seq-len`). Three aten ops the frontend lacks or mis-converts get converters here, registered only for the
  conversion: `index_copy` (the functional cache write) as `scatter_along_axis`; `|` / `&` on bool tensors as
  logical ops; SDPA with grouped-query heads (`enable_gqa`) by repeating key/value heads, since Core ML's SDPA
  requires equal head counts. `int()` of a one-element constant (RoPE's `shape // 2` under tracing) is folded.
- On Linux the package converts and its spec is checked (inputs/outputs declared as above); running `predict` needs
  macOS — coremltools' runtime exists only there. The tests say so.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

from ..errors import SlmError, check_output_dir, os_errors

COREML_DTYPES = ("fp32", "fp16")
_TARGETS = {"iOS18": "iOS18", "macOS15": "macOS15"}


def _require_coremltools() -> Any:
    try:
        import coremltools
    except ImportError:
        raise SlmError("slm export coreml needs coremltools; run: pip install coremltools") from None
    return coremltools


def _io(t: torch.Tensor) -> torch.Tensor:
    """A state tensor as Core ML can take it (bool and int64 as int32)."""
    return t.int() if t.dtype in (torch.bool, torch.int64) else t


class _Step(nn.Module):
    """The pure decode step with Core ML-typed inputs/outputs (int32 ids, mask and bookkeeping)."""

    def __init__(self, model: nn.Module, reference: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.model = model
        self.dtypes = [t.dtype for t in reference]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *state: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        typed = tuple(t.to(d) for t, d in zip(state, self.dtypes))
        logits, new_state = self.model.decode_step(input_ids.long(), attention_mask.bool(), typed)
        return (logits, *(_io(t) for t in new_state))


@contextlib.contextmanager
def _converters() -> Iterator[None]:
    """Register the extra torch-op converters (see the module docstring) for the duration of one conversion."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY as registry
    from coremltools.converters.mil.mil import types

    def index_copy(context: Any, node: Any) -> None:
        x, dim, index, src = _get_inputs(context, node, expected=4)
        axis = dim.val
        shape = [1] * src.rank
        shape[axis] = -1
        idx = mb.reshape(x=mb.cast(x=index, dtype="int32"), shape=shape)  # broadcast the slots over src's shape
        idx = mb.add(x=idx, y=mb.cast(x=mb.fill(shape=mb.shape(x=src), value=0.0), dtype="int32"))
        boolean = x.dtype == types.bool
        data, upd = (mb.cast(x=x, dtype="int32"), mb.cast(x=src, dtype="int32")) if boolean else (x, src)
        out = mb.scatter_along_axis(data=data, indices=idx, updates=upd, axis=axis, mode="update")
        context.add(mb.cast(x=out, dtype="bool", name=node.name) if boolean else out, node.name)

    def logical(fn: Any) -> Any:
        def convert(context: Any, node: Any) -> None:
            x, y = _get_inputs(context, node, expected=2)
            if x.dtype != types.bool or y.dtype != types.bool:
                raise NotImplementedError(f"{node.kind} on non-bool tensors")
            context.add(fn(x=x, y=y, name=node.name))
        return convert

    original_int = registry.get_func("int")

    def to_int(context: Any, node: Any) -> None:
        x = _get_inputs(context, node, expected=1)[0]
        if x.val is not None and np.asarray(x.val).size == 1 and np.asarray(x.val).ndim > 0:
            context.add(mb.const(val=np.int32(np.asarray(x.val).reshape(())), name=node.name))
            return
        original_int(context, node)

    def sdpa(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node, min_expected=3)
        q, k, v = inputs[:3]
        mask = inputs[3] if len(inputs) > 3 else None
        if k.shape[1] != q.shape[1]:  # GQA: each key/value head serves n_heads // n_kv_heads consecutive heads
            rep = q.shape[1] // k.shape[1]

            def expand(x: Any) -> Any:
                b, h, t, d = x.shape
                x = mb.tile(x=mb.expand_dims(x=x, axes=[2]), reps=[1, 1, rep, 1, 1])
                return mb.reshape(x=x, shape=[b, h * rep, t, d])
            k, v = expand(k), expand(v)
        scores = mb.mul(x=mb.matmul(x=q, y=k, transpose_y=True), y=np.float32(1.0 / np.sqrt(q.shape[-1])))
        if mask is not None and mask.val is None:
            if mask.dtype == types.bool:
                mask = mb.select(cond=mask, a=np.float32(0.0), b=np.float32(-1e30))
            scores = mb.add(x=scores, y=mask)
        context.add(mb.matmul(x=mb.softmax(x=scores, axis=-1), y=v, name=node.name))

    added = {"index_copy": index_copy, "or": logical(mb.logical_or), "and": logical(mb.logical_and),
             "int": to_int, "scaled_dot_product_attention": sdpa}
    saved = {name: registry.name_to_func_mapping.get(name) for name in added}
    for name, fn in added.items():
        registry.set_func_by_name(fn, name)
    try:
        yield
    finally:
        for name, fn in saved.items():
            if fn is None:
                registry.name_to_func_mapping.pop(name, None)
            else:
                registry.set_func_by_name(fn, name)


def export_coreml(checkpoint_dir: str | Path, out_path: str | Path, *, seq_len: int | None = None,
                  dtype: str = "fp16", minimum_deployment_target: str = "iOS18", overwrite: bool = False) -> Path:
    """Write OUT.mlpackage: the decode step with the state in/out (see the module docstring)."""
    from ..checkpoint import load_model, load_tokenizer_of
    from ..errors import atomic_dir

    if dtype not in COREML_DTYPES:
        raise SlmError(f"--dtype={dtype!r}: choose one of {', '.join(COREML_DTYPES)}")
    if minimum_deployment_target not in _TARGETS:
        raise SlmError(f"--minimum-deployment-target={minimum_deployment_target!r}: choose one of "
                       f"{', '.join(_TARGETS)} (the first Core ML versions with the ops this graph uses)")
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise SlmError(f"{out_path}: name the output OUT.mlpackage (Core ML ML programs are packages)")
    check_output_dir(out_path, overwrite=overwrite)
    ct = _require_coremltools()
    checkpoint_dir = Path(checkpoint_dir)
    tokenizer = load_tokenizer_of(checkpoint_dir)
    if tokenizer is None:
        raise SlmError(f"{checkpoint_dir}: the checkpoint has no tokenizer/ folder; a Core ML export carries its "
                       f"token ids in its metadata (export from a run's checkpoint, or import one with a tokenizer)")
    model, _ = load_model(checkpoint_dir)
    seq_len = seq_len or min(model.cfg.max_seq_len, 1024)
    if not 1 < seq_len <= model.cfg.max_seq_len:
        raise SlmError(f"--seq-len={seq_len}: choose 2 .. model.max_seq_len={model.cfg.max_seq_len}")
    reference = model.new_state(1, seq_len).tensors()
    args = (torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 1, dtype=torch.int32), *(_io(t) for t in reference))
    names = [f"state_{i}" for i in range(len(reference))]
    try:
        with torch.no_grad(), _converters():
            traced = torch.jit.trace(_Step(model, reference), args, check_trace=False)
            np_type = {torch.int32: "int32", torch.float32: "float32"}
            import numpy as np

            inputs = [ct.TensorType(name=n, shape=tuple(a.shape), dtype=getattr(np, np_type[a.dtype]))
                      for n, a in zip(["input_ids", "attention_mask", *names], args)]
            outputs = [ct.TensorType(name="logits"), *(ct.TensorType(name=f"present_{i}") for i in range(len(names)))]
            precision = ct.precision.FLOAT32 if dtype == "fp32" else ct.precision.FLOAT16
            mlmodel = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                                 minimum_deployment_target=getattr(ct.target, _TARGETS[minimum_deployment_target]),
                                 compute_precision=precision, skip_model_load=True)
    except Exception as exc:  # the converter raises many types (NotImplementedError, KeyError, ...) on unsupported ops
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SlmError(f"slm export coreml: the {model.cfg.arch} decode step does not convert "
                       f"({type(exc).__name__}: {first[:160]}); try `slm export onnx` instead") from None
    mlmodel.short_description = f"slm {model.cfg.arch} decode step (state in/out, {seq_len} slots)"
    mlmodel.user_defined_metadata["slm"] = json.dumps({
        "arch": model.cfg.arch, "seq_len": seq_len, "vocab_size": model.cfg.vocab_size,
        "state": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                  for n, t in zip(names, reference)],
        "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id, "chat_template": tokenizer.chat_template})
    with os_errors("exporting to", out_path), atomic_dir(out_path, overwrite=overwrite, kind="coreml-export") as tmp:
        staged = tmp / "staged.mlpackage"  # coremltools insists on the extension; its contents become OUT's
        mlmodel.save(str(staged))
        for item in list(staged.iterdir()):
            item.rename(tmp / item.name)
        staged.rmdir()
        tokenizer.save(tmp / "slm-tokenizer")
    return out_path


def declared_io(package: str | Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of a saved .mlpackage, read from its spec (works on Linux)."""
    ct = _require_coremltools()
    spec = ct.utils.load_spec(str(package))
    return [i.name for i in spec.description.input], [o.name for o in spec.description.output]
