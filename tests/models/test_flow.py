"""Flow-specific checks (the registry invariants run in test_invariants.py): the window is exactly `window` tokens,
global layers see past it with their own RoPE base, the decode state keeps rings for local layers, the compiled CPU
path handles windows, bad settings are one-line errors, and the SLMS recipes parse and run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from slm.config import load_run_config
from slm.errors import SlmError
from slm.models import build_model, preset_config
from slm.models.layers.attention import window_bias
from slm.models.layers.rope import rope_tables


def _flow(**kw):
    torch.manual_seed(0)
    return build_model(preset_config("flow-test", init_std=0.2, **kw)).eval()


@pytest.mark.parametrize("window", [1, 3, 5])
def test_a_local_layer_sees_exactly_the_last_window_tokens(window):
    m = _flow(n_layers=1, global_every=2, window=window)  # one layer, and it is local
    x = torch.randint(0, 256, (1, 16))
    t = 12
    with torch.no_grad():
        base = m(x)[0, t]
        inside, outside = x.clone(), x.clone()
        inside[0, t - window + 1] = (x[0, t - window + 1] + 1) % 256
        outside[0, t - window] = (x[0, t - window] + 1) % 256
        assert not torch.allclose(m(inside)[0, t], base)  # the oldest token of the window counts
        torch.testing.assert_close(m(outside)[0, t], base, atol=0, rtol=0)  # one further back does not


def test_a_global_layer_sees_past_the_window():
    local_only = _flow(n_layers=2, global_every=3, window=2)
    with_global = _flow(n_layers=2, global_every=2, window=2)  # layer 1 is global
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 2] = (x[0, 2] + 1) % 256
    with torch.no_grad():
        # two local layers of window 2 reach 2 tokens back; token 2 is 13 back from position 15
        torch.testing.assert_close(local_only(y)[0, 15], local_only(x)[0, 15], atol=0, rtol=0)
        assert not torch.allclose(with_global(y)[0, 15], with_global(x)[0, 15])


def test_local_and_global_layers_rotate_with_their_own_fp32_tables():
    m = _flow(rope_theta=1e4, global_rope_theta=1e6)
    cos, sin = rope_tables(m.cfg.head_dim, m.cfg.max_seq_len, 1e6)
    assert m.global_rope_cos.dtype == torch.float32
    torch.testing.assert_close(m.global_rope_cos, cos, atol=0, rtol=0)
    torch.testing.assert_close(m.global_rope_sin, sin, atol=0, rtol=0)
    assert not torch.equal(m.rope_cos, m.global_rope_cos)
    # SLMS's bf16 positions collapsed 2048 positions into 641 values; ours are all distinct
    cos, sin = rope_tables(128, 2048, 1e4)
    assert torch.unique(torch.cat([cos, sin], dim=1), dim=0).shape[0] == 2048


def test_decode_state_keeps_full_caches_for_global_layers_and_rings_for_local_ones():
    cfg = preset_config("flow-1b", n_layers=6, d_model=256, n_heads=4, n_kv_heads=2, ffn_hidden=512, vocab_size=512)
    m = build_model(cfg, device="meta")
    state = m.new_state(2, 1024, device="cpu")
    assert len(state.kv.k) == 1 and len(state.ring.k) == 5  # layer 5 is global
    assert state.kv.k[0].shape[2] == 1024 and state.ring.k[0].shape[2] == cfg.window
    # a state shorter than the window needs no longer ring
    assert m.new_state(1, 16, device="cpu").ring.k[0].shape[2] == 16


def test_window_bias_is_the_additive_form_of_the_window_mask():
    bias = window_bias(6, 3)
    allowed = torch.tensor([[0 <= i - j < 3 for j in range(6)] for i in range(6)])
    assert torch.equal(bias == 0, allowed) and torch.isinf(bias[~allowed]).all()


def test_flops_fall_below_llama_once_the_context_outgrows_the_window():
    flow = preset_config("flow-1b")
    llama = preset_config("smollm2-135m", d_model=2048, n_layers=18, n_heads=16, n_kv_heads=8, ffn_hidden=8192,
                          vocab_size=32768, rope_theta=1e4, max_seq_len=2048)
    assert flow.num_parameters() == llama.num_parameters()
    assert flow.flops_per_token(128) == pytest.approx(llama.flops_per_token(128), rel=0.01)
    assert flow.flops_per_token(2048) < llama.flops_per_token(2048)


@pytest.mark.parametrize("override,message", [
    ({"window": 0}, "model.window=0: must be >= 1"),
    ({"window": 4096}, "larger than --model.max_seq_len"),
    ({"global_every": 0}, "model.global_every=0: must be >= 1"),
    ({"lif_steps": 0, "preset": "pulse-test"}, "model.lif_steps=0"),
    ({"surrogate": "relu", "preset": "pulse-test"}, "choose one of fast_sigmoid, arctan"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(SlmError, match=message.replace(".", r"\.")):
        preset_config(override.pop("preset", "flow-test"), **override)


def test_bad_window_on_the_command_line_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "slm.cli", "train", "recipes/slms-flow.yaml", "--model.window=0",
                           f"--run.out_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "model.window" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("recipe,arch", [("slms-flow", "flow"), ("slms-pulse", "pulse"), ("slms-flow-1b", "flow"),
                                         ("slms-pulse-1b", "pulse")])
def test_slms_recipes_use_the_curriculum_and_muon(recipe, arch):
    cfg = load_run_config(f"recipes/{recipe}.yaml")
    assert cfg.model.arch == arch and cfg.train.optimizer == "muon"
    assert [p.seq_len for p in cfg.train.phase_list()] == [256, 1024, 2048]
    assert cfg.model.max_seq_len >= 2048


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["slms-flow-1b", "slms-pulse-1b"])
def test_full_size_recipes_run_a_few_steps_on_cpu_with_a_shrunk_width(recipe, tmp_path, corpus_dir):
    proc = subprocess.run([sys.executable, "-m", "slm.cli", "train", f"recipes/{recipe}.yaml",
                           f"--run.out_dir={tmp_path}", f"--data.inputs=[{corpus_dir}]", "--data.num_workers=1",
                           "--tokenizer.vocab_size=512", "--tokenizer.max_train_bytes=0", "--model.d_model=64",
                           "--model.n_heads=4", "--model.n_kv_heads=2", "--model.ffn_hidden=128",
                           "--model.vocab_size=512", "--model.n_layers=6", "--train.grad_accum=1",
                           "--train.phases=[{seq_len: 64, steps: 2, batch_size: 2}, {seq_len: 128, steps: 1, "
                           "batch_size: 1}]", "--train.compile=false", "--train.precision=fp32",
                           "--train.eval_every=0", "--train.eval_batches=1", "--train.checkpoint_every=0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "step_000003" / "meta.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["flow-test", "pulse-test"])
def test_compiled_decode_gives_the_same_tokens(preset):
    from slm.config import SamplingConfig
    from slm.generate import generate

    m = _flow() if preset == "flow-test" else build_model(preset_config(preset)).eval()
    prompts = [[5, 9, 3, 7, 1, 2, 8, 4, 4], [4, 6]]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=12, stop_at_eos=False)
    assert generate(m, prompts, cfg, eos_id=None, compile=True) == generate(m, prompts, cfg, eos_id=None)
