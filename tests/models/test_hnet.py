"""H-Net-Bit specifics beyond the registry invariants: the chunker never looks ahead (per stage), state decode with
rows whose chunk boundaries differ, the ratio loss, exact counts of the named presets, bad settings, and a few
training steps of the 2-stage GPU recipe with shrunk widths (slow)."""

from __future__ import annotations

import pytest
import torch

from slm.cli import main
from slm.errors import SlmError
from slm_testutil import assert_ragged_decode_matches_full
from slm.models import build_model, preset_config
from slm.models.hnet.model import ratio_loss

TWO_STAGE = dict(widths=[32, 48, 64], encoder_layers=[1, 1], decoder_layers=[1, 1], target_ratios=[2.0, 3.0])


def _model(**kw):
    torch.manual_seed(0)
    return build_model(preset_config("hnet-bit-test", init_std=0.2, **{**TWO_STAGE, **kw}))


def _boundaries(m, ids: torch.Tensor) -> list[torch.Tensor]:
    """Boundary masks (B, T_s) of every stage for a training-mode forward of ids."""
    m.train()
    with torch.no_grad():
        m(ids)
    return [stage.last[0].clone() for stage in m.stages()]


def test_the_chunker_never_looks_ahead_at_any_stage():
    m = _model()
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


def test_state_decode_with_rows_whose_boundaries_differ():
    m = _model()
    lens, new = [9, 4, 6], 8
    seqs = [torch.randint(0, 256, (L + new,)) for L in lens]
    per_row = [_boundaries(m, s[None])[0][0] for s in seqs]
    decoded = torch.stack([per_row[b][lens[b]:lens[b] + new] for b in range(3)])  # (3, new) boundaries while decoding
    assert (decoded.any(0) & ~decoded.all(0)).any()  # at some step one row starts a chunk and another does not
    m.eval()
    assert_ragged_decode_matches_full(m, seqs, lens, new)


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
