"""Core ML export: the decode step converts to an ML program, by default with its KV cache in fp16 Core ML states
(iOS 18 / macOS 15) and for recurrent states with the state as inputs/outputs; every architecture whose step
coremltools cannot convert is refused in one line naming ONNX. Prediction needs macOS (coremltools' runtime exists
only there), so on Linux the stateful wrapper itself is run in PyTorch against slm's decode, and the package's spec is
checked (states, inputs, outputs, one state write per state); the runtime parity test runs on macOS only."""

from __future__ import annotations

import collections
import json
import sys

import numpy as np
import pytest
import torch

from slm.checkpoint import save_checkpoint
from slm.cli import main
from slm.config import RunConfig
from slm.errors import SlmError
from slm.models import ARCHS, build_model, preset_config
from slm.tokenizer import byte_tokenizer

ct = pytest.importorskip("coremltools")

from slm.export.coreml import (  # noqa: E402
    STATEFUL_MAX_LEN, _StatefulStep, declared_io, declared_states, export_coreml, resolve_state_mode)

SEQ = 32
FAST = ("llama", "pulse")  # an attention model and the spiking variant (the SLMS use case); the rest in the slow tier
ARCH_PARAMS = [pytest.param(name, id=name, marks=() if name in FAST else pytest.mark.slow) for name in ARCHS]
VARIANTS = [pytest.param(name, variant, id=f"{name}-{variant}") for name, spec in ARCHS.items()
            for variant in spec.test_variants]


def _model(arch: str, variant: str | None = None, **overrides):
    spec = ARCHS[arch]
    values = spec.test_variants[variant] if variant else {}
    model = build_model(preset_config(spec.test_preset, vocab_size=320, init_std=0.3, **{**values, **overrides}))
    model.reset_parameters(seed=0)
    return model.eval()


def _checkpoint(tmp_path, arch: str, **overrides):
    model = _model(arch, **overrides)
    return model, save_checkpoint(tmp_path / "ckpt", model=model, config=RunConfig(model=model.cfg),
                                  tokenizer=byte_tokenizer())


def _export_or_xfail(tmp_path, ckpt, **kw):
    try:
        return export_coreml(ckpt, tmp_path / "m.mlpackage", seq_len=SEQ, dtype="fp32", **kw)
    except SlmError as exc:  # refused: one line naming the format that works, nothing left behind
        assert "slm export onnx" in str(exc) and "\n" not in str(exc)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
        pytest.xfail(str(exc))


def _op_counts(package) -> collections.Counter:
    spec = ct.utils.load_spec(str(package))
    main_fn = spec.mlProgram.functions["main"]
    return collections.Counter(op.type for op in main_fn.block_specializations[main_fn.opset].operations)


def _stateful_or_skip(arch: str) -> None:
    if resolve_state_mode(arch, None)[0] != "stateful":
        pytest.skip(f"{arch} ({ARCHS[arch].state_kind}) exports its state as inputs/outputs")


@pytest.mark.parametrize("arch,variant", VARIANTS)
def test_stateful_wrapper_matches_slm_decode(arch, variant):
    """The module that becomes the stateful package, run in PyTorch from zeroed buffers (what Core ML's makeState()
    gives), equals slm's own decode token for token; past the ring window for windowed layers."""
    _stateful_or_skip(arch)
    model = _model(arch, variant)
    state = model.new_state(1, SEQ)
    step = _StatefulStep(model, model.new_state(1, SEQ).tensors(), buffer_dtype=torch.float32)
    one = torch.ones(1, 1, dtype=torch.int32)
    with torch.no_grad():
        for token in torch.randint(0, 320, (12,), generator=torch.Generator().manual_seed(0)).tolist():
            ids = torch.tensor([[token]])
            want = model(ids, state=state, attention_mask=one.bool())
            torch.testing.assert_close(step(ids.int(), one), want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch,variant", VARIANTS)
def test_fp16_states_lose_nothing_but_the_cache_rounding(arch, variant):
    """With fp16 buffers (Core ML's only state dtype) the bool / int64 bookkeeping survives exactly: the wrapper equals
    the pure decode step whose float tensors alone are rounded to fp16 between steps (spikes included)."""
    _stateful_or_skip(arch)
    model = _model(arch, variant)
    tensors = tuple(model.new_state(1, SEQ).tensors())
    step = _StatefulStep(model, tensors)  # fp16 buffers
    one = torch.ones(1, 1, dtype=torch.int32)
    with torch.no_grad():
        for token in torch.randint(0, 320, (12,), generator=torch.Generator().manual_seed(1)).tolist():
            ids = torch.tensor([[token]])
            want, tensors = model.decode_step(ids, one.bool(), tensors)
            tensors = tuple(t.half().float() if t.is_floating_point() else t for t in tensors)
            torch.testing.assert_close(step(ids.int(), one), want, atol=1e-4, rtol=1e-4)
        for buffer, t in zip(step.states(), tensors):
            if not t.is_floating_point():
                assert torch.equal(buffer.to(t.dtype), t)
    # the bound `--seq-len` <= STATEFUL_MAX_LEN rests on: every slot count up to it is exact in fp16, the next is not
    counts = torch.arange(STATEFUL_MAX_LEN + 2)
    assert torch.equal(counts[:-1].half().long(), counts[:-1]) and counts[-1].half().long() != counts[-1]


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_coreml_package_declares_its_states(tmp_path, arch):
    model, ckpt = _checkpoint(tmp_path, arch)
    mode, _ = resolve_state_mode(arch, None)
    out = _export_or_xfail(tmp_path, ckpt)
    reference = model.new_state(1, SEQ).tensors()
    spec = ct.utils.load_spec(str(out))
    assert spec.specificationVersion >= 9  # iOS 18 / macOS 15
    meta = json.loads(spec.description.metadata.userDefined["slm"])
    assert meta["state_mode"] == mode
    assert [s["shape"] for s in meta["state"]] == [list(t.shape) for t in reference]
    inputs, outputs = declared_io(out)
    types = {i.name: (list(i.type.multiArrayType.shape), i.type.multiArrayType.dataType)
             for i in spec.description.input}
    int32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.INT32
    assert types["input_ids"] == types["attention_mask"] == ([1, 1], int32)
    names = [f"state_{i}" for i in range(len(reference))]
    if mode == "io":  # a recurrent state: inputs/outputs, no Core ML state
        assert inputs == ["input_ids", "attention_mask", *names]
        assert outputs == ["logits", *[f"present_{i}" for i in range(len(reference))]]
        assert declared_states(out) == []
        return
    assert inputs == ["input_ids", "attention_mask"] and outputs == ["logits"]
    assert declared_states(out) == [(n, list(t.shape), "float16") for n, t in zip(names, reference)]
    ops = _op_counts(out)
    assert ops["read_state"] == ops["write_state"] == len(reference)  # every state read once and written back


def test_coreml_io_package_declares_the_state_inputs_and_outputs(tmp_path):
    model, ckpt = _checkpoint(tmp_path, "llama")
    out = _export_or_xfail(tmp_path, ckpt, state="io")
    n = len(model.new_state(1, SEQ).tensors())
    inputs, outputs = declared_io(out)
    assert inputs == ["input_ids", "attention_mask", *[f"state_{i}" for i in range(n)]]
    assert outputs == ["logits", *[f"present_{i}" for i in range(n)]]
    assert declared_states(out) == [] and _op_counts(out)["write_state"] == 0
    spec = ct.utils.load_spec(str(out))
    meta = json.loads(spec.description.metadata.userDefined["slm"])
    assert meta["state_mode"] == "io"
    shapes = {i.name: list(i.type.multiArrayType.shape) for i in spec.description.input}
    assert shapes["state_0"] == meta["state"][0]["shape"]


def test_recurrent_states_fall_back_to_io_with_a_note():
    recurrent = [name for name, spec in ARCHS.items() if spec.state_kind == "recurrent"]
    if not recurrent:
        pytest.skip("no registered architecture keeps a recurrent state")
    mode, note = resolve_state_mode(recurrent[0], None)
    assert mode == "io" and "--state io" in note and "\n" not in note
    assert resolve_state_mode(recurrent[0], "io") == ("io", None)
    with pytest.raises(SlmError, match="use --state io"):
        resolve_state_mode(recurrent[0], "stateful")


def test_cli_prints_the_io_fallback_note(tmp_path, capsys):
    recurrent = [name for name, spec in ARCHS.items() if spec.state_kind == "recurrent"]
    if not recurrent:
        pytest.skip("no registered architecture keeps a recurrent state")
    _, ckpt = _checkpoint(tmp_path, recurrent[0])
    rc = main(["export", "coreml", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.mlpackage"),
               "--seq-len", str(SEQ), "--dtype", "fp32"])
    first = capsys.readouterr().err.strip().splitlines()[0]
    assert rc in (0, 2) and first.startswith("note: ") and "--state io" in first  # 2: the step may not convert


def test_cli_coreml_bad_inputs_are_one_line_errors(tmp_path, capsys):
    _, ckpt = _checkpoint(tmp_path, "llama", max_seq_len=4096)
    for args, needle in ((["--dtype", "int8"], "int8"), (["--seq-len", "100000"], "--seq-len"),
                         (["--state", "kv"], "--state"),
                         (["--seq-len", str(STATEFUL_MAX_LEN + 1)], "--state io")):
        assert main(["export", "coreml", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.mlpackage"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert main(["export", "coreml", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")]) == 2
    assert ".mlpackage" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_cli_spells_the_exporters_choices():
    from slm.cli import ship
    from slm.export import coreml

    assert ship.COREML_DTYPES == coreml.COREML_DTYPES and ship.COREML_STATE_MODES == coreml.STATE_MODES


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
@pytest.mark.parametrize("mode", ["stateful", "io"])
def test_coreml_decode_matches_slm_on_macos(tmp_path, mode):
    model, ckpt = _checkpoint(tmp_path, "llama")
    package = export_coreml(ckpt, tmp_path / "m.mlpackage", seq_len=SEQ, dtype="fp32", state=mode)
    mlmodel = ct.models.MLModel(str(package))
    state = model.new_state(1, SEQ)
    arrays = [t.int().numpy() if t.dtype in (torch.bool, torch.int64) else t.numpy() for t in state.tensors()]
    coreml_state = mlmodel.make_state() if mode == "stateful" else None
    for token in [5, 9, 200, 7]:
        ids = torch.tensor([[token]])
        with torch.no_grad():
            want = model(ids, state=state, attention_mask=torch.ones(1, 1, dtype=torch.bool))
        feed = {"input_ids": ids.int().numpy(), "attention_mask": np.ones((1, 1), dtype=np.int32)}
        if mode == "stateful":
            got = mlmodel.predict(feed, state=coreml_state)
            np.testing.assert_allclose(got["logits"], want.numpy(), atol=5e-2, rtol=5e-2)  # fp16 keys/values
        else:
            feed.update({f"state_{i}": a for i, a in enumerate(arrays)})
            got = mlmodel.predict(feed)
            np.testing.assert_allclose(got["logits"], want.numpy(), atol=1e-3, rtol=1e-3)
            arrays = [got[f"present_{i}"] for i in range(len(arrays))]
