"""GGUF export: the file round-trips through transformers' GGUF reader (`slm import hf X.gguf`) to our logits within the
dtype's rounding, carries llama.cpp's metadata and a pre-tokenizer llama.cpp knows, and bad inputs fail in one line.
The llama.cpp runtime check (greedy continuations) is in test_llama_cpp.py (slow tier)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from slm.checkpoint import load_model, save_checkpoint
from slm.cli import main
from slm.config import RunConfig
from slm.errors import SlmError
from slm.export.gguf import GGUF_DTYPES, export_gguf, llama_cpp_pre_tokenizer
from slm.export.hf import import_hf
from slm.models import ARCHS, CausalLM, build_model, preset_config
from slm.tokenizer import byte_tokenizer, train_bpe

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")

MODEL_VOCAB = 320  # > the tokenizer's ids: llama.cpp needs a token per embedding row (placeholders fill the rest)


@pytest.fixture(scope="module")
def bpe():
    words = "the king queen castle river stone light dark sword crown speaks walks sings under over 12 345".split()
    gen = torch.Generator().manual_seed(0)
    lines = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (12,), generator=gen)) for _ in range(200)]
    return train_bpe(iter(lines), vocab_size=300, min_frequency=1, show_progress=False)


def tiny_model(**overrides) -> CausalLM:
    model = build_model(preset_config("test", **{"vocab_size": MODEL_VOCAB, "init_std": 0.3, **overrides}))
    model.reset_parameters(seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, bpe) -> Path:
    model = tiny_model(tie_embeddings=False)
    return save_checkpoint(tmp_path_factory.mktemp("gguf") / "ckpt", model=model, config=RunConfig(model=model.cfg),
                           tokenizer=bpe)


def _rounded(model: CausalLM, dtype: str) -> CausalLM:
    """The model with every matrix passed through the GGUF dtype's rounding (what a reader dequantizes to)."""
    out = tiny_model(tie_embeddings=model.cfg.tie_embeddings)
    state = {}
    for name, t in model.state_dict().items():
        if t.dim() < 2 or dtype == "f32":
            state[name] = t
        elif dtype == "f16":
            state[name] = t.half().float()
        else:
            q = gguf.quants.quantize(t.numpy(), gguf.GGMLQuantizationType.Q8_0)
            state[name] = torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).copy())
    out.load_state_dict(state)
    return out


@pytest.mark.parametrize("dtype", GGUF_DTYPES)
def test_gguf_round_trips_through_transformers_to_our_logits(tmp_path, checkpoint, dtype):
    """export gguf -> `slm import hf X.gguf` (transformers dequantizes and undoes the q/k row order) -> logits equal
    to our model's with the dtype's rounding applied, to fp32 precision."""
    path = export_gguf(checkpoint, tmp_path / f"m-{dtype}.gguf", dtype=dtype)
    back, _ = load_model(import_hf(path, tmp_path / "back"))
    model, _ = load_model(checkpoint)
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = _rounded(model, dtype)(ids), back(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_gguf_carries_llama_cpp_metadata_and_the_tokenizer(tmp_path, checkpoint, bpe):
    path = export_gguf(checkpoint, tmp_path / "m.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(path))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    cfg = load_model(checkpoint)[0].cfg
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == cfg.n_layers and field("llama.attention.head_count_kv") == cfg.n_kv_heads
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == cfg.vocab_size  # one per embedding row
    assert tokens[: bpe.vocab_size] == [bpe.id_to_token(i) for i in range(bpe.vocab_size)]
    assert field("tokenizer.ggml.bos_token_id") == bpe.bos_id and field("tokenizer.ggml.eos_token_id") == bpe.eos_id
    assert field("tokenizer.chat_template") == bpe.chat_template
    types = field("tokenizer.ggml.token_type")
    assert types[bpe.eos_id] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert len(field("tokenizer.ggml.merges")) == len(json.loads(bpe.to_json())["model"]["merges"])
    assert {t.name for t in reader.tensors} >= {"token_embd.weight", "output.weight", "blk.1.attn_q.weight"}


def test_the_byte_tokenizer_and_smollm2_style_splits_map_to_llama_cpp_names(bpe):
    assert llama_cpp_pre_tokenizer(json.loads(bpe.to_json())) == "gpt-2"
    assert llama_cpp_pre_tokenizer(json.loads(byte_tokenizer().to_json())) == "gpt-2"
    smollm = json.loads(bpe.to_json())
    smollm["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    assert llama_cpp_pre_tokenizer(smollm) == "smollm"
    for bad in ({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}, {"type": "Whitespace"}):
        with pytest.raises(SlmError, match="no llama.cpp equivalent"):
            llama_cpp_pre_tokenizer({**smollm, "pre_tokenizer": bad})


def _cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["export", "gguf", *args])
    return rc, capsys.readouterr().err.strip()


def test_cli_refuses_architectures_llama_cpp_cannot_hold_naming_onnx(tmp_path, capsys, bpe):
    cant = [spec for spec in ARCHS.values() if spec.gguf is None]
    assert cant, "every architecture has a GGUF adapter: nothing to refuse"
    spec = cant[0]
    model = build_model(preset_config(spec.test_preset, vocab_size=MODEL_VOCAB))
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=RunConfig(model=model.cfg), tokenizer=bpe)
    rc, err = _cli(capsys, "--out", str(tmp_path / "m.gguf"), "--checkpoint", str(ckpt))
    assert rc == 2 and len(err.splitlines()) == 1 and "onnx" in err and spec.name in err
    assert not (tmp_path / "m.gguf").exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_cli_bad_inputs_are_one_line_errors_and_leave_nothing(tmp_path, capsys, checkpoint):
    rc, err = _cli(capsys, "--out", str(tmp_path / "m.gguf"), "--checkpoint", str(checkpoint), "--dtype", "q4_k")
    assert rc == 2 and len(err.splitlines()) == 1 and "q4_k" in err
    no_tok = tiny_model()
    bare = save_checkpoint(tmp_path / "bare", model=no_tok, config=RunConfig(model=no_tok.cfg))
    rc, err = _cli(capsys, "--out", str(tmp_path / "m.gguf"), "--checkpoint", str(bare))
    assert rc == 2 and len(err.splitlines()) == 1 and "tokenizer" in err
    mine = tmp_path / "mine.gguf"
    mine.write_text("a user's file")
    rc, err = _cli(capsys, "--out", str(mine), "--checkpoint", str(checkpoint))
    assert rc == 2 and "--overwrite" in err and mine.read_text() == "a user's file"
    rc, err = _cli(capsys, "--out", str(mine), "--checkpoint", str(checkpoint), "--overwrite")
    assert rc == 2 and "not a GGUF" in err and mine.read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare", "mine.gguf"]  # no temp file left behind
    ours = tmp_path / "ours.gguf"
    assert main(["export", "gguf", "--checkpoint", str(checkpoint), "--out", str(ours), "--dtype", "f32"]) == 0
    assert main(["export", "gguf", "--checkpoint", str(checkpoint), "--out", str(ours), "--overwrite",
                 "--dtype", "q8_0"]) == 0
    assert gguf.GGUFReader(str(ours)).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q8_0


def test_cli_dtype_choices_match_the_exporters():
    from slm.cli import ship
    from slm.export import onnx

    assert ship.GGUF_DTYPES == GGUF_DTYPES and ship.ONNX_DTYPES == tuple(onnx.ONNX_DTYPES)


def test_byte_tokenizer_checkpoint_exports_and_round_trips(tmp_path):
    """The merge-free byte vocabulary gets one inert merge (GGUF arrays cannot be empty); ids and logits survive."""
    model = tiny_model()
    tok = byte_tokenizer()
    ckpt = save_checkpoint(tmp_path / "ckpt", model=model, config=RunConfig(model=model.cfg), tokenizer=tok)
    path = export_gguf(ckpt, tmp_path / "byte.gguf", dtype="f32")
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.merges"].contents() == ["a 1"]
    assert reader.fields["tokenizer.ggml.tokens"].contents()[:256] == [tok.id_to_token(i) for i in range(256)]
    back_dir = import_hf(path, tmp_path / "back")
    back, _ = load_model(back_dir)
    ids = torch.randint(0, 261, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids), atol=1e-5, rtol=1e-5)
    from slm.checkpoint import load_tokenizer_of

    text = "a1 b2 café 42!"
    assert load_tokenizer_of(back_dir).encode(text) == tok.encode(text)
