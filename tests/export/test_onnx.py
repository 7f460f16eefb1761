"""ONNX export, checked in onnxruntime for every registered architecture: the prefill graph's logits equal slm's full
forward on ragged left-padded prompts (<= 1e-4 fp32), the decode graph's logits equal slm's stateful steps, and a
greedy loop in onnxruntime reproduces slm's greedy tokens. Exporting is slow on 2 cores (~20 s of CPU per
architecture), so the default tier runs Llama and the slow tier every other architecture and fp16. An architecture
whose step does not trace is refused with the source line that stops torch.export; its cases are reported as xfail
with that line (today: doge's position check, hgrn_bit's prefill length, hnet_bit's data-dependent chunking)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slm.checkpoint import save_checkpoint
from slm.cli import main
from slm.config import RunConfig, SamplingConfig
from slm.errors import SlmError
from slm.generate import generate
from slm.models import ARCHS, CausalLM, build_model, preset_config
from slm.tokenizer import byte_tokenizer

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from slm.export.onnx import OnnxLM, export_onnx  # noqa: E402

MAX_LEN = 64
TEXTS = ["To be, or not to be, that is the question:", "Whether 'tis nobler", "in the mind to suffer"]
ARCH_PARAMS = [pytest.param(name, id=name, marks=() if name == "llama" else pytest.mark.slow) for name in ARCHS]


def _model(arch: str) -> CausalLM:
    spec = ARCHS[arch]
    model = build_model(preset_config(spec.test_preset, vocab_size=320, init_std=0.3))
    model.reset_parameters(seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cache: dict[tuple[str, str], tuple[CausalLM, Path]] = {}

    def get(arch: str, dtype: str = "fp32") -> tuple[CausalLM, Path]:
        if (arch, dtype) not in cache:
            root = tmp_path_factory.mktemp(f"onnx-{arch}-{dtype}")
            model = _model(arch)
            ckpt = save_checkpoint(root / "ckpt", model=model, config=RunConfig(model=model.cfg),
                                   tokenizer=byte_tokenizer())
            try:
                cache[arch, dtype] = model, export_onnx(ckpt, root / "onnx", dtype=dtype, max_len=MAX_LEN)
            except SlmError as exc:  # refused with the source line that does not trace: reported, not hidden
                if "does not trace" not in str(exc) or arch == "llama":
                    raise
                pytest.xfail(str(exc))
        return cache[arch, dtype]

    return get


def _prompts() -> list[list[int]]:
    tok = byte_tokenizer()
    return [tok.encode(t) for t in TEXTS]


def _left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):], mask[row, width - len(p):] = torch.tensor(p), True
    return ids, mask


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_onnx_prefill_and_decode_logits_equal_slm(exported, arch):
    model, folder = exported(arch)
    lm = OnnxLM(folder)
    ids, mask = _left_pad(_prompts())
    state = model.new_state(ids.shape[0], MAX_LEN)
    with torch.no_grad():
        want = model(ids, state=state, attention_mask=mask)
    got, onnx_state = lm.prefill(ids.numpy(), mask.numpy())
    real = mask.numpy()
    np.testing.assert_allclose(got[real], want.numpy()[real], atol=1e-4, rtol=1e-4)
    one = torch.ones(ids.shape[0], 1, dtype=torch.bool)
    nxt = want[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    for _ in range(6):
        with torch.no_grad():
            want = model(nxt, state=state, attention_mask=one)
        got, onnx_state = lm.step(nxt.numpy(), one.numpy(), onnx_state)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-4)
        nxt = want[:, -1].argmax(-1, keepdim=True)


@pytest.mark.parametrize("arch", ARCH_PARAMS)
def test_onnx_greedy_loop_matches_slm_token_for_token(exported, arch):
    model, folder = exported(arch)
    prompts = _prompts()
    want = generate(model, prompts, SamplingConfig(temperature=0.0, max_new_tokens=16), eos_id=None)
    assert OnnxLM(folder).greedy(prompts, 16) == want


@pytest.mark.slow
def test_onnx_fp16_greedy_matches_slm(exported):
    model, folder = exported("llama", "fp16")
    prompts = _prompts()
    want = generate(model, prompts, SamplingConfig(temperature=0.0, max_new_tokens=16), eos_id=None)
    assert OnnxLM(folder).greedy(prompts, 16) == want


def test_cli_onnx_bad_inputs_are_one_line_errors(tmp_path, capsys):
    model = _model("llama")
    bare = save_checkpoint(tmp_path / "bare", model=model, config=RunConfig(model=model.cfg))
    ok = save_checkpoint(tmp_path / "ok", model=model, config=RunConfig(model=model.cfg), tokenizer=byte_tokenizer())
    for ckpt, args, needle in ((ok, ["--dtype", "int4"], "int4"), (bare, [], "tokenizer"),
                               (ok, ["--max-len", "1000"], "--max-len")):
        rc = main(["export", "onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    rc = main(["export", "onnx", "--checkpoint", str(bare), "--out", str(mine), "--overwrite"])
    assert rc == 2 and (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "mine", "ok"]
