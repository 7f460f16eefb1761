"""HGRN-Bit specifics beyond the registry invariants: the scan, BitLinear's quantizers and exactness, masked steps,
the short convolution (shared and per stream), exact counts of the named presets, bad settings, the recipe's
missing-data error, and the UTF-8 validity of a byte model's samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slm.cli import main
from slm.errors import SlmError
from slm.models import build_model, preset_config
from slm.models.layers.bitlinear import BitLinear, quantize_activations, quantize_weights, ternary_codes
from slm.models.hgrn_bit.conv import ShortConv
from slm.models.layers.scan import _LinearScan, linear_scan, linear_scan_naive
from slm_testutil import assert_chunked_and_packed_match, assert_ragged_decode_matches_full

SHARED = dict(use_short_conv=True)  # Simplified SLM's HEAD configs: one conv on the mixer input
SPLIT = dict(use_short_conv=True, share_conv_kernel=False, conv_bias=True)  # one on each of i_proj, f_proj
CONVS = [pytest.param(SHARED, id="shared-conv"), pytest.param(SPLIT, id="split-conv")]


@pytest.mark.parametrize("T", [1, 2, 5, 16, 37])
def test_scan_equals_the_timestep_loop_with_initial_state_and_resets(T):
    torch.manual_seed(T)
    f, x, h0 = torch.rand(2, T, 3), torch.randn(2, T, 3), torch.randn(2, 3)
    f[:, T // 2] = 0.0  # a reset (document start): h forgets everything before
    torch.testing.assert_close(linear_scan(f, x, h0), linear_scan_naive(f, x, h0), atol=1e-6, rtol=1e-6)


def test_scan_backward_is_the_exact_gradient():
    torch.manual_seed(0)
    args = (torch.rand(2, 9, 3, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(_LinearScan.apply, args)


def test_bitlinear_is_ternary_weights_times_8bit_activations():
    torch.manual_seed(0)
    layer = BitLinear(16, 8)
    torch.nn.init.normal_(layer.weight, 0, 0.1)
    x = torch.randn(3, 5, 16)
    xq, wq = quantize_activations(layer.norm(x)), quantize_weights(layer.weight)
    gamma = layer.weight.abs().mean().to(torch.bfloat16).float()
    assert set(ternary_codes(layer.weight).unique().tolist()) <= {-1, 0, 1}
    torch.testing.assert_close(wq, ternary_codes(layer.weight).float() * gamma)
    levels = (xq * 127 / layer.norm(x).abs().amax(-1, keepdim=True)).detach()
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # 8-bit levels per token
    torch.testing.assert_close(layer(x), F.linear(xq, wq), atol=1e-5, rtol=1e-5)
    # straight-through: the gradient is that of the unquantized product
    x.requires_grad_(True)
    layer(x).sum().backward()
    ref_w = layer.weight.detach().clone().requires_grad_(True)
    xn = layer.norm(x.detach())
    x_ste = xn + (quantize_activations(xn) - xn).detach()
    F.linear(x_ste, ref_w + (quantize_weights(ref_w) - ref_w).detach()).sum().backward()
    torch.testing.assert_close(layer.weight.grad, ref_w.grad, atol=1e-5, rtol=1e-5)


def test_bitlinear_output_does_not_depend_on_the_batch_it_is_computed_in():
    """Integer products are exact in fp32: a row's output is bitwise the same alone or in a batch."""
    torch.manual_seed(0)
    layer = BitLinear(256, 128)
    torch.nn.init.normal_(layer.weight, 0, 0.02)
    x = torch.randn(64, 7, 256)
    with torch.no_grad():
        assert torch.equal(layer(x)[5:6], layer(x[5:6]))
        assert torch.equal(layer(x)[:, 3:4], layer(x[:, 3:4]))


@pytest.mark.parametrize("kw", [pytest.param({}, id="no-conv"), *CONVS])
def test_a_masked_step_leaves_the_state_alone(kw):
    m = build_model(preset_config("hgrn-bit-test", init_std=0.2, **kw)).eval()
    state = m.new_state(2, 16)
    with torch.no_grad():
        m(torch.randint(0, 256, (2, 5)), state=state)
        before = [t.clone() for t in state.tensors()]
        m(torch.randint(0, 256, (2, 1)), state=state, attention_mask=torch.tensor([[True], [False]]))
    for a, b in zip(before, state.tensors()):
        assert torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0])


def test_short_conv_is_a_causal_depthwise_conv1d_then_silu_that_skips_masked_inputs_and_restarts_per_document():
    torch.manual_seed(0)
    conv = ShortConv(6, 4, bias=True)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, 9, 6)
    want = F.silu(F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=3, groups=6)[..., :9]).transpose(1, 2)
    torch.testing.assert_close(conv(x, None, None, None), want, atol=1e-6, rtol=1e-6)  # nn.Conv1d's semantics
    valid = torch.tensor([[False, True, True, False, True, True, True, False, True]] * 2)
    got = conv(x, valid, None, None)[valid].view(2, -1, 6)
    torch.testing.assert_close(got, conv(x[valid].view(2, -1, 6), None, None, None))  # gaps are not inputs
    reset = torch.zeros(2, 9, dtype=torch.bool)
    reset[:, 5] = True
    torch.testing.assert_close(conv(x, None, reset, None)[:, 5:], conv(x[:, 5:], None, None, None))


@pytest.mark.parametrize("kw", CONVS)
def test_short_conv_never_looks_ahead_and_state_decode_equals_the_full_forward(kw):
    torch.manual_seed(0)
    m = build_model(preset_config("hgrn-bit-test", init_std=0.2, **kw)).eval()
    x = torch.randint(0, 256, (2, 24))
    with torch.no_grad():
        base = m(x)
        for t in (0, 1, 2, 7, 22):  # t < conv_size: the window reaches back past the start
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, 256, y[:, t + 1:].shape)
            out = m(y)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])
    lens, new = [11, 2, 8], 6  # a 2-token prompt: a window that is mostly the zeros before the start
    seqs = [torch.randint(0, 256, (L + new,)) for L in lens]
    assert_ragged_decode_matches_full(m, seqs, lens, new)


@pytest.mark.parametrize("kw", CONVS)
def test_short_conv_chunked_prefill_and_packed_rows_equal_separate_forwards(kw):
    torch.manual_seed(0)
    m = build_model(preset_config("hgrn-bit-test", init_std=0.2, **kw)).eval()
    x = torch.randint(0, 256, (3, 30))
    docs = [torch.randint(0, 256, (1, n)) for n in (7, 2, 9)]  # a document shorter than the window
    assert_chunked_and_packed_match(m, x, [(0, 2), (2, 3), (3, 17), (17, 30)], docs)


def test_short_conv_counts():
    assert preset_config("hgrn-bit-test", **SHARED).num_parameters() == 140_800 + 2 * 64 * 4  # 2 layers x d x taps
    assert preset_config("hgrn-bit-test", **SPLIT).num_parameters() == 140_800 + 2 * 2 * (64 * 4 + 64)  # + biases
    assert preset_config("simplified-slm", **SHARED).num_parameters() == 20_756_480
    for kw in (SHARED, SPLIT):
        cfg = preset_config("hgrn-bit-test", **kw)
        assert build_model(cfg, device="meta").num_parameters() == cfg.num_parameters()


def test_named_preset_counts():
    assert preset_config("simplified-slm").num_parameters() == 20_744_192
    assert preset_config("simplified-slm", vocab_size=320).num_parameters() == 20_809_728  # slm's byte tokenizer
    assert build_model(preset_config("simplified-slm"), device="meta").num_parameters() == 20_744_192


@pytest.mark.parametrize("override,needle", [
    (dict(d_model=0), "--model.d_model=0"),
    (dict(mlp_ratio=0.0), "--model.mlp_ratio"),
    (dict(norm_eps=-1.0), "--model.norm_eps"),
    (dict(use_short_conv=True, conv_size=1), "--model.conv_size=1"),
])
def test_bad_settings_are_one_line_errors(override, needle):
    with pytest.raises(SlmError, match=needle.replace(".", r"\.")) as err:
        preset_config("hgrn-bit-test", **override)
    assert "\n" not in str(err.value)


def test_missing_data_is_an_error_never_random_bytes(tmp_path, capsys):
    code = main(["train", "recipes/hgrn-bit.yaml", f"--run.out_dir={tmp_path / 'run'}",
                 f"--data.inputs=[{tmp_path / 'nothing.txt'}]"])
    err = capsys.readouterr().err
    assert code == 2 and "nothing.txt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.bin"))


@pytest.mark.parametrize("kw", [pytest.param({}, id="no-conv"), *CONVS])
def test_first_step_gradients_do_not_depend_on_accumulation(kw):
    """What the trainer needs of a model for grad accumulation: 4 x 2 rows give the gradients of 1 x 8."""
    torch.manual_seed(0)
    m = build_model(preset_config("hgrn-bit-test", vocab_size=320, init_std=0.02, **kw)).train()
    x = torch.randint(0, 256, (8, 33))

    def grads(parts: int) -> dict[str, torch.Tensor]:
        m.zero_grad()
        for part in x.chunk(parts):
            (m(part[:, :-1], targets=part[:, 1:]) / (8 * 32)).backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    one, four = grads(1), grads(4)
    for k in one:
        torch.testing.assert_close(one[k], four[k], atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("preset,over", [("hgrn-bit-test", {}), ("hnet-bit-test", {"tie_embeddings": False}),
                                         ("hnet-bit-test", dict(main_pattern="xa", attn_heads=2, **SHARED))])
def test_ternary_export_is_2_bits_and_generates_identically(preset, over, tmp_path):
    import dataclasses

    from slm import checkpoint as ckpt
    from slm.config import SamplingConfig
    from slm.generate import generate
    from slm.models.hgrn_bit.ternary import export_ternary, import_ternary, pack_codes, unpack_codes
    from slm.tokenizer import byte_tokenizer
    from slm_testutil import tiny_config

    codes = torch.randint(-1, 2, (7, 5), dtype=torch.int8)
    assert torch.equal(unpack_codes(pack_codes(codes), (7, 5)), codes) and pack_codes(codes).numel() == 9
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_config(tmp_path / "run", tmp_path),
                              model=preset_config(preset, vocab_size=320, d_model=128, init_std=0.05, **over))
    model = build_model(cfg.model).eval()
    ckpt.save_checkpoint(tmp_path / "ck", model=model, config=cfg, tokenizer=byte_tokenizer())
    info = export_ternary(tmp_path / "ck", tmp_path / "m.safetensors")
    assert info["ratio_vs_fp16"] > 1.5
    back, _ = ckpt.load_model(import_ternary(tmp_path / "m.safetensors", tmp_path / "ck2"))
    x = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), atol=1e-5, rtol=1e-5)
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=24, stop_at_eos=False)
    prompts = [[72, 101, 108, 108, 111], [84, 111]]
    assert generate(back, prompts, sampling, eos_id=None) == generate(model, prompts, sampling, eos_id=None)


def test_utf8_validity_of_a_byte_models_samples(tmp_path):
    import dataclasses

    from slm.eval.generation import utf8_validity
    from slm.report import write_report
    from slm.stages import generate_samples
    from slm.tokenizer import byte_tokenizer
    from slm_testutil import tiny_config

    tok = byte_tokenizer()
    e_acute = list("é".encode())  # [0xC3, 0xA9]
    assert utf8_validity(tok, [[72, 105], e_acute, [0xC3, 72], [0xFF]], max_new_tokens=8) == 0.5
    assert utf8_validity(tok, [[72, 0xC3]], max_new_tokens=2) == 1.0  # the limit cut a character: not held against it
    assert utf8_validity(tok, [[72, 0xC3]], max_new_tokens=8) == 0.0  # it stopped (EOS) inside one
    assert utf8_validity(tok, [[72, tok.eos_id, 105]], max_new_tokens=8) == 1.0  # special tokens add no bytes
    assert utf8_validity(tok, [], max_new_tokens=8) is None

    cfg = tiny_config(tmp_path / "run", tmp_path)
    cfg = dataclasses.replace(cfg, model=preset_config("hgrn-bit-test", vocab_size=320, init_std=0.2, **SHARED),
                              sample=dataclasses.replace(cfg.sample, prompts=["Hi", ""], max_new_tokens=12,
                                                         num_samples=3, temperature=1.0))
    torch.manual_seed(0)
    texts, generations = generate_samples(cfg, tok, build_model(cfg.model))
    assert len(texts) == len(generations) == 6 and texts[0].startswith("Hi")
    share = utf8_validity(tok, generations, 12)
    each = [utf8_validity(tok, [g], 12) for g in generations]
    assert share == sum(each) / 6 and 0.0 <= share <= 1.0
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    report = write_report(tmp_path / "run", {"samples": texts, "samples_utf8_valid": share})
    assert f"| samples: valid UTF-8 (share) | {share:,.4f} |" in report.read_text()
