"""Core ML export: the pure decode step as an ML program (`.mlpackage`) for iOS 18 / macOS 15, written with coremltools.

One token per call: `input_ids` (1, 1) int32, `attention_mask` (1, 1) int32 (1 = real token) -> `logits` (1, 1, V);
a prompt is fed one token at a time (an app's prefill loop). Two ways to carry the decode state
(`model.new_state(1, seq_len).tensors()`) between calls:
- stateful (default where it works): the state lives in Core ML states `state_0` .. (`ct.StateType`), created zeroed
  by `model.makeState()` and updated in place by each prediction, so the app passes only the token. The wrapper
  registers the state tensors as buffers, runs the pure `decode_step` on them and writes each new tensor back with
  `buffer[:] = new`, which coremltools' torch frontend turns into `coreml_update_state` (a bare `copy_` it rejects).
- io (`--state io`): the state as explicit inputs `state_i` and outputs `present_i` (feed `present_i` back).
Design decisions
- Stateful for attention states (kv_cache, ring_buffer): the KV cache stays on the device instead of crossing the
  API twice per token. Core ML states are fp16 only, so the bool / int64 bookkeeping next to the key/value buffers
  (valid slots, RoPE positions, write slot) is stored as fp16 and cast back inside the graph: 0/1 and integers up to
  2048 are exact in fp16, hence `--seq-len` <= 2048 in this mode. A recurrent state (state_kind `recurrent`) would be
  re-rounded to fp16 every step and drift, so those architectures get the io form, with a note. Zeroed states equal
  `new_state` for the step (its one non-zero tensor, the ring's slot table of -1s, is written but never read by it);
  tests/export/test_coreml.py runs the wrapper from zeros against slm's decode for every architecture. Pulse's
  LIF is a threshold, so an fp16-rounded key can flip a spike (a logit moves by O(1), as under fp16 compute).
- Whole-buffer write-back (the functional step's output) rather than a slice update at the write slot:
  it keeps one exporter for every state layout (KV cache, ring buffer, both), at the price of rewriting each state
  buffer per token, the same order of memory traffic as the attention read of that buffer.
- Core ML has no bool or int64 inputs: in io mode those state tensors travel as int32, cast inside the graph.
- Traced with `torch.jit.trace` (coremltools' most complete frontend) at batch 1 and a fixed state length
  (`--seq-len`). The aten ops the frontend lacks or mis-converts get converters here, registered only for the
  conversion: `index_copy` (the functional cache write) as `scatter_along_axis`; `|` / `&` on bool tensors as
  logical ops; SDPA with grouped-query heads (`enable_gqa`) by repeating key/value heads, since Core ML's SDPA
  requires equal head counts; `addcmul` (recurrent updates) as mul + add. Folded as constants: `int()` of a
  one-element constant (RoPE's `shape // 2` under tracing) and a bfloat16 cast of a constant (BitLinear's weight
  scale; Core ML has no bfloat16).
- On Linux the package converts and its spec is checked (inputs, outputs, states); running `predict` needs macOS:
  coremltools' runtime exists only there. The tests say so.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from ..errors import SlmError, check_output_dir, os_errors

COREML_DTYPES = ("fp32", "fp16")
STATE_MODES = ("stateful", "io")
STATEFUL_MAX_LEN = 2048  # largest integer n with every 0..n exact in fp16 (11 significant bits)
# State kinds whose tensors survive fp16 storage between steps: a cache entry is rounded once when written, a
# recurrent state would be re-rounded every step.
_STATEFUL_KINDS = ("kv_cache", "ring_buffer")
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

    original_to = registry.get_func("to")
    bf16_code = 15  # torch's ScalarType number of bfloat16, which the frontend's dtype tables lack

    def to(context: Any, node: Any) -> None:
        inputs = _get_inputs(context, node)
        where = {4: 1, 5: 1, 7: 1, 8: 1, 6: 2}.get(len(inputs))  # the dtype argument (see the frontend's `to`)
        dtype = inputs[where] if where is not None else None
        if dtype is not None and isinstance(dtype.val, (int, np.integer)) and int(dtype.val) == bf16_code:
            if inputs[0].val is None:
                raise NotImplementedError("a bfloat16 cast of a computed tensor (Core ML has no bfloat16)")
            rounded = torch.tensor(np.asarray(inputs[0].val)).to(torch.bfloat16).float().numpy()
            context.add(mb.const(val=rounded, name=node.name))  # a constant (e.g. a weight scale): folded
            return
        original_to(context, node)

    def addcmul(context: Any, node: Any) -> None:  # input + value * t1 * t2 (a recurrent state update)
        x, t1, t2, value = _get_inputs(context, node, expected=4)
        product = mb.mul(x=t1, y=t2)
        if value.val is None or float(value.val) != 1.0:
            product = mb.mul(x=product, y=np.float32(value.val) if value.val is not None else value)
        context.add(mb.add(x=x, y=product, name=node.name))

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
             "int": to_int, "to": to, "addcmul": addcmul,
             "scaled_dot_product_attention": sdpa}
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


class _StatefulStep(nn.Module):
    """The pure decode step over state held in buffers `state_0` .. (Core ML states), written back in place.

    `buffer_dtype` is fp16 for Core ML; fp32 buffers give the same step without fp16 rounding (the parity test)."""

    def __init__(self, model: nn.Module, reference: tuple[torch.Tensor, ...],
                 buffer_dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.model = model
        self.dtypes = [t.dtype for t in reference]
        for i, t in enumerate(reference):  # zeros, as Core ML's makeState() allocates them
            self.register_buffer(f"state_{i}", torch.zeros(t.shape, dtype=buffer_dtype))

    def states(self) -> list[torch.Tensor]:
        return [getattr(self, f"state_{i}") for i in range(len(self.dtypes))]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        buffers = self.states()
        typed = tuple(b.to(d) for b, d in zip(buffers, self.dtypes))
        logits, new_state = self.model.decode_step(input_ids.long(), attention_mask.bool(), typed)
        for buffer, new in zip(buffers, new_state):
            # A slice assignment, not `buffer.copy_(new)`: coremltools' TorchScript frontend fuses only a copy_ into
            # a slice / select (into `coreml_update_state`); a bare copy_ of a whole buffer it rejects.
            buffer[:] = new.to(buffer.dtype)
        return logits  # (1, 1, V)


def resolve_state_mode(arch: str, state: str | None) -> tuple[str, str | None]:
    """(the state mode to export, a note for the user or None) for `--state` (None: stateful where it works)."""
    from ..models.registry import get_arch

    kind = get_arch(arch).state_kind
    if state is not None and state not in STATE_MODES:
        raise SlmError(f"--state={state!r}: choose one of {', '.join(STATE_MODES)}")
    if kind in _STATEFUL_KINDS:
        return state or "stateful", None
    if state == "stateful":
        raise SlmError(f"--state=stateful: the {arch} {kind} state would be re-rounded to fp16 (Core ML states) every "
                       f"step; use --state io")
    note = None if state else (f"{arch} keeps a {kind} state, which Core ML's fp16 states would round every step: "
                               f"exporting it as inputs/outputs (--state io)")
    return "io", note


def export_coreml(checkpoint_dir: str | Path, out_path: str | Path, *, seq_len: int | None = None,
                  dtype: str = "fp16", minimum_deployment_target: str = "iOS18", overwrite: bool = False,
                  state: str | None = None, notify: Callable[[str], None] | None = None) -> Path:
    """Write OUT.mlpackage: the decode step, its state as Core ML states or as inputs/outputs (module docstring).
    `state`: "stateful", "io" or None (stateful where the architecture allows); `notify` receives one-line notes."""
    from ..checkpoint import load_model, load_tokenizer_of
    from ..errors import atomic_dir

    if dtype not in COREML_DTYPES:
        raise SlmError(f"--dtype={dtype!r}: choose one of {', '.join(COREML_DTYPES)}")
    if minimum_deployment_target not in _TARGETS:
        raise SlmError(f"--minimum-deployment-target={minimum_deployment_target!r}: choose one of "
                       f"{', '.join(_TARGETS)} (the first Core ML versions with the ops this graph uses)")
    if state is not None and state not in STATE_MODES:
        raise SlmError(f"--state={state!r}: choose one of {', '.join(STATE_MODES)}")
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
    mode, note = resolve_state_mode(model.cfg.arch, state)
    seq_len = seq_len or min(model.cfg.max_seq_len, 1024)
    if not 1 < seq_len <= model.cfg.max_seq_len:
        raise SlmError(f"--seq-len={seq_len}: choose 2 .. model.max_seq_len={model.cfg.max_seq_len}")
    if mode == "stateful" and seq_len > STATEFUL_MAX_LEN:
        raise SlmError(f"--seq-len={seq_len}: Core ML states are fp16, exact for slot counts up to "
                       f"{STATEFUL_MAX_LEN}; use --seq-len <= {STATEFUL_MAX_LEN} or --state io")
    if note and notify:
        notify(note)
    reference = model.new_state(1, seq_len).tensors()
    names = [f"state_{i}" for i in range(len(reference))]
    precision = ct.precision.FLOAT32 if dtype == "fp32" else ct.precision.FLOAT16
    convert = _convert_stateful if mode == "stateful" else _convert_io
    try:
        with torch.no_grad(), _converters():
            mlmodel = convert(ct, model, reference, names, precision=precision,
                              target=getattr(ct.target, _TARGETS[minimum_deployment_target]))
    except Exception as exc:  # the converter raises many types (NotImplementedError, KeyError, ...) on unsupported ops
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SlmError(f"slm export coreml: the {model.cfg.arch} decode step does not convert "
                       f"({type(exc).__name__}: {first[:160]}); try `slm export onnx` instead") from None
    how = "Core ML states" if mode == "stateful" else "state in/out"
    mlmodel.short_description = f"slm {model.cfg.arch} decode step ({how}, {seq_len} slots)"
    mlmodel.user_defined_metadata["slm"] = json.dumps({
        "arch": model.cfg.arch, "seq_len": seq_len, "vocab_size": model.cfg.vocab_size, "state_mode": mode,
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


def _token_inputs(ct: Any) -> tuple[list[Any], tuple[torch.Tensor, torch.Tensor]]:
    import numpy as np

    inputs = [ct.TensorType(name="input_ids", shape=(1, 1), dtype=np.int32),
              ct.TensorType(name="attention_mask", shape=(1, 1), dtype=np.int32)]
    return inputs, (torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 1, dtype=torch.int32))


def _convert_stateful(ct: Any, model: nn.Module, reference: tuple[torch.Tensor, ...], names: list[str], *,
                      precision: Any, target: Any) -> Any:
    """The step with its state in fp16 Core ML states (see `_StatefulStep`)."""
    import numpy as np

    inputs, args = _token_inputs(ct)
    traced = torch.jit.trace(_StatefulStep(model, reference).eval(), args, check_trace=False)
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(t.shape), dtype=np.float16), name=n)
              for n, t in zip(names, reference)]
    return ct.convert(traced, inputs=inputs, states=states, outputs=[ct.TensorType(name="logits")],
                      convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=precision, skip_model_load=True)


def _convert_io(ct: Any, model: nn.Module, reference: tuple[torch.Tensor, ...], names: list[str], *,
                precision: Any, target: Any) -> Any:
    """The step with its state as inputs `state_i` and outputs `present_i` (see `_Step`)."""
    import numpy as np

    inputs, args = _token_inputs(ct)
    state_args = tuple(_io(t) for t in reference)
    np_type = {torch.int32: np.int32, torch.float32: np.float32}
    inputs += [ct.TensorType(name=n, shape=tuple(a.shape), dtype=np_type[a.dtype]) for n, a in zip(names, state_args)]
    traced = torch.jit.trace(_Step(model, reference).eval(), (*args, *state_args), check_trace=False)
    outputs = [ct.TensorType(name="logits"), *(ct.TensorType(name=f"present_{i}") for i in range(len(names)))]
    return ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram", minimum_deployment_target=target,
                      compute_precision=precision, skip_model_load=True)


def declared_io(package: str | Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of a saved .mlpackage, read from its spec (works on Linux)."""
    ct = _require_coremltools()
    spec = ct.utils.load_spec(str(package))
    return [i.name for i in spec.description.input], [o.name for o in spec.description.output]


def declared_states(package: str | Path) -> list[tuple[str, list[int], str]]:
    """(name, shape, dtype) of each Core ML state a saved .mlpackage declares, read from its spec (works on Linux)."""
    ct = _require_coremltools()
    spec = ct.utils.load_spec(str(package))
    dtype_names = {v: k.lower() for k, v in ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.items()}
    return [(s.name, list(s.type.stateType.arrayType.shape), dtype_names[s.type.stateType.arrayType.dataType])
            for s in spec.description.state]
