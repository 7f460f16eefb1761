"""H-Net-Bit specifics beyond the registry invariants: the chunker never looks ahead (per stage), state decode with
rows whose chunk boundaries differ, the ratio loss, the "hybrid" (innermost sliding-window attention layers) and the
short convolution, exact counts of the named presets, bad settings, and a few training steps of the 2-stage GPU
recipe with shrunk widths (slow)."""

from __future__ import annotations

import pytest
import torch

from slm.cli import main
from slm.errors import SlmError
from slm_testutil import assert_chunked_and_packed_match, assert_ragged_decode_matches_full
from slm.models import build_model, preset_config
from slm.models.hnet.model import ratio_loss

TWO_STAGE = dict(widths=[32, 48, 64], encoder_layers=[1, 1], decoder_layers=[1, 1], target_ratios=[2.0, 3.0])
# attention + short conv: 2-stage (window 2 chunks, 4 heads of 16) and 1-stage (window 2, 2 heads of 24)
HYBRID = dict(main_pattern="axa", attn_window=2, attn_heads=4, use_short_conv=True)
HYBRID_1 = dict(widths=[32, 48], encoder_layers=[1], decoder_layers=[1], target_ratios=[2.0], main_pattern="xa",
                attn_window=2, attn_heads=2, use_short_conv=True)
VARIANTS = [pytest.param({}, id="2stage"), pytest.param(HYBRID, id="2stage-hybrid-conv"),
            pytest.param(HYBRID_1, id="1stage-hybrid-conv")]


def _model(**kw):
    torch.manual_seed(0)
    return build_model(preset_config("hnet-bit-test", init_std=0.2, **{**TWO_STAGE, **kw}))


def _boundaries(m, ids: torch.Tensor) -> list[torch.Tensor]:
    """Boundary masks (B, T_s) of every stage for a training-mode forward of ids."""
    m.train()
    with torch.no_grad():
        m(ids)
    return [stage.last[0].clone() for stage in m.stages()]


@pytest.mark.parametrize("kw", [pytest.param({}, id="2stage"), pytest.param(HYBRID, id="2stage-hybrid-conv")])
def test_the_chunker_never_looks_ahead_at_any_stage(kw):
    m = _model(**kw)
    x = torch.randint(0, 256, (2, 40))
    base = _boundaries(m, x)
    assert 0 < int(base[0].sum()) < x.numel() and int(base[1].sum()) > 0  # it does chunk, at both stages
    for t in (3, 17, 30):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, 256, y[:, t + 1:].shape)
        got = _boundaries(m, y)
        assert torch.equal(got[0][:, :t + 1], base[0][:, :t + 1])
        for row in range(2):  # stage 1 sees the chunks that start at bytes <= t
            n = int(base[0][row, :t + 1].sum())
            assert torch.equal(got[1][row, :n], base[1][row, :n])


@pytest.mark.parametrize("kw", VARIANTS)
def test_state_decode_with_rows_whose_boundaries_differ(kw):
    m = _model(**kw)
    lens, new = [9, 4, 6], 8
    seqs = [torch.randint(0, 256, (L + new,)) for L in lens]
    per_row = [_boundaries(m, s[None])[0][0] for s in seqs]
    decoded = torch.stack([per_row[b][lens[b]:lens[b] + new] for b in range(3)])  # (3, new) boundaries while decoding
    assert (decoded.any(0) & ~decoded.all(0)).any()  # at some step one row starts a chunk and another does not
    m.eval()
    assert_ragged_decode_matches_full(m, seqs, lens, new)


@pytest.mark.parametrize("kw", VARIANTS[1:])
def test_hybrid_and_short_conv_never_look_ahead(kw):
    m = _model(**kw).eval()
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        base = m(x)
        for t in (0, 3, 17, 30):
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, 256, y[:, t + 1:].shape)
            out = m(y)
            torch.testing.assert_close(out[:, :t + 1], base[:, :t + 1], atol=1e-6, rtol=0)
            # at init W_res = 0: a byte that starts no chunk cannot move its own logits, so only t = 0 must see it
            assert t > 0 or not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_attention_rings_wrap_per_row_and_decode_equals_the_full_forward():
    """Window 2 chunks: every row's ring wraps several times, rows at different chunk counts at every step."""
    m = _model(**HYBRID_1).eval()
    attn = m.trunk.inner.layers[1].attn
    lens, new = [21, 5, 13], 16
    seqs = [torch.randint(0, 256, (L + new,)) for L in lens]
    assert_ragged_decode_matches_full(m, seqs, lens, new)
    state = m.new_state(3, 64)
    with torch.no_grad():
        m(torch.nn.utils.rnn.pad_sequence([s.flip(0) for s in seqs], batch_first=True).flip(1), state=state,
          attention_mask=torch.nn.utils.rnn.pad_sequence([torch.ones(len(s), dtype=torch.bool) for s in seqs],
                                                         batch_first=True).flip(1))
    chunks = state.get(attn.slots[3])  # (3,) chunks each row's attention layer has seen
    assert (chunks > 2 * attn.window).all() and len(set(chunks.tolist())) > 1


@pytest.mark.parametrize("kw", VARIANTS[1:])
def test_hybrid_chunked_prefill_and_packed_rows_equal_separate_forwards(kw):
    m = _model(**kw).eval()
    x = torch.randint(0, 256, (3, 40))
    docs = [torch.randint(0, 256, (1, n)) for n in (17, 3, 20)]
    assert_chunked_and_packed_match(m, x, [(0, 9), (9, 10), (10, 27), (27, 40)], docs)


def test_hybrid_gradients_do_not_depend_on_accumulation():
    """4 x 2 rows give the gradients of 1 x 8 (token loss and ratio loss, both per-row means)."""
    torch.manual_seed(0)
    m = build_model(preset_config("hnet-bit-test", **HYBRID_1, vocab_size=320, init_std=0.02)).train()
    x = torch.randint(0, 256, (8, 33))

    def grads(parts: int) -> dict[str, torch.Tensor]:
        m.zero_grad()
        for part in x.chunk(parts):
            loss = m(part[:, :-1], targets=part[:, 1:]) / (8 * 32) + sum(m.aux_losses().values()) / parts
            loss.backward()
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    one, four = grads(1), grads(4)
    assert one.keys() == four.keys() and any("attn.q_proj" in k for k in one) and any("h_conv" in k for k in one)
    for k in one:
        torch.testing.assert_close(one[k], four[k], atol=1e-7, rtol=1e-5)


def test_the_hybrid_decode_step_exports_with_torch_export():
    m = _model(**HYBRID).eval()
    state = m.new_state(2, 16)
    with torch.no_grad():
        m(torch.randint(0, 256, (2, 9)), state=state)
    ids, mask = torch.randint(0, 256, (2, 1)), torch.tensor([[True], [False]])

    class Step(torch.nn.Module):
        def forward(self, ids, mask, *tensors):
            logits, new = m.decode_step(ids, mask, tensors)
            return (logits, *new)

    program = torch.export.export(Step(), (ids, mask, *state.tensors()), strict=False)
    for a, b in zip(program.module()(ids, mask, *state.tensors()), Step()(ids, mask, *state.tensors()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_hybrid_and_short_conv_counts():
    base = 103_264  # hnet-bit-test
    assert preset_config("hnet-bit-test", main_pattern="xa", attn_heads=2).num_parameters() == base - 5 * 48
    assert preset_config("hnet-bit-test", **HYBRID_1).num_parameters() == base - 5 * 48 + 4 * (32 + 32 + 48)
    # hnet-bit-1stage with the hybrid's layout: 4 attention blocks at 384 (each 5 d below an HGRN-Bit block)
    assert preset_config("hnet-bit-1stage", main_pattern="xaxaxaxa").num_parameters() == 21_348_096
    assert preset_config("hnet-bit-1stage", main_pattern="xaxaxaxa", use_short_conv=True).num_parameters() == \
        21_348_096 + 4 * (8 * 256 + 4 * 384)
    for kw in (HYBRID, HYBRID_1):
        cfg = preset_config("hnet-bit-test", **{**TWO_STAGE, **kw})
        assert build_model(cfg, device="meta").num_parameters() == cfg.num_parameters()


def test_ratio_loss_is_one_at_the_target_and_trains_the_router():
    n = 3.0
    b = torch.tensor([[True, False, False] * 4])
    p = torch.full((1, 12), 1 / n)
    assert abs(float(ratio_loss(b, p, torch.ones_like(b), n)) - 1.0) < 1e-6
    m = _model()
    m.train()
    m(torch.randint(0, 256, (2, 24)))
    aux = m.aux_losses()
    assert set(aux) == {"ratio_0", "ratio_1"}
    assert set(m.step_metrics()) == {"chunk_ratio_0", "chunk_ratio_1", "chunk_ratio"}
    sum(aux.values()).backward()
    assert m.trunk.q_proj.weight.grad.abs().sum() > 0
    m.eval()
    assert m.aux_losses() == {}


def test_named_preset_counts():
    assert preset_config("hnet-bit-1stage").num_parameters() == 21_355_776
    assert preset_config("hnet-bit-2stage").num_parameters() == 189_667_840
    assert preset_config("hnet-bit-1stage", vocab_size=320).num_parameters() == 21_388_544
    assert preset_config("hnet-bit-2stage", vocab_size=320).num_parameters() == 189_733_376


@pytest.mark.parametrize("override,needle", [
    (dict(target_ratios=[1.0]), "--model.target_ratios[0]=1.0"),
    (dict(target_ratios=[0.5]), "must be > 1"),
    (dict(main_pattern=""), "--model.main_pattern=''"),
    (dict(main_pattern="xq"), "unknown layer kind"),
    (dict(main_pattern="xab"), "--model.main_pattern='xab': unknown layer kind(s) ['b']; allowed: 'x' (HGRN-Bit"),
    (dict(main_pattern="xa", attn_heads=5), "--model.attn_heads=5"),
    (dict(main_pattern="xa", attn_heads=16), "even head dim"),
    (dict(main_pattern="xa", attn_window=0), "--model.attn_window=0"),
    (dict(use_short_conv=True, conv_size=1), "--model.conv_size=1"),
    (dict(widths=[32, 48, 64]), "--model.encoder_layers=[1]: needs 2 entries"),
    (dict(widths=[32]), "at least two widths"),
    (dict(widths=[48, 32]), "non-decreasing"),
    (dict(target_ratios=[2.0, 2.0]), "--model.target_ratios=[2.0, 2.0]: needs 1 entries"),
    (dict(ratio_loss_weight=-1.0), "--model.ratio_loss_weight"),
])
def test_bad_settings_are_one_line_errors(override, needle):
    with pytest.raises(SlmError) as err:
        preset_config("hnet-bit-test", **override)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_setting_from_the_command_line_exits_2(tmp_path, capsys):
    code = main(["train", "recipes/hnet-bit.yaml", f"--run.out_dir={tmp_path}", "--model.target_ratios=[1]"])
    assert code == 2 and "target_ratios" in capsys.readouterr().err


@pytest.mark.slow
def test_the_2stage_gpu_recipe_trains_a_few_steps_on_cpu_with_shrunk_widths(tmp_path, prepared):
    code = main(["train", "recipes/hnet-bit-2stage.yaml", f"--run.out_dir={tmp_path}", "--run.device=cpu",
                 f"--data.prepared_dir={prepared}", "--model.widths=[32,48,64]", "--model.main_pattern=xx",
                 "--model.max_seq_len=256", "--train.steps=3", "--train.batch_size=2", "--train.grad_accum=1",
                 "--train.seq_len=128", "--train.warmup_steps=1", "--train.eval_every=3", "--train.eval_batches=1",
                 "--train.checkpoint_every=3", "--train.sample_every=0", "--train.precision=fp32",
                 "--eval.seq_len=128", "--eval.batch_size=2", "--sample.max_new_tokens=8", "--train.num_threads=1",
                 "--train.tensorboard=false"])
    assert code == 0
