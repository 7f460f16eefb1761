"""Doge beyond the registry invariants: the dynamic mask's key selection with learned (non-tied) dt, parity with
transformers' `DogeForCausalLM` both ways, the CDMoE routing leak of transformers' class next to slm's per-token
routing, the balance loss's index space, expert-usage metrics, and the one-line errors of bad configs."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from slm.cli import main
from slm.errors import SlmError
from slm_testutil import assert_ragged_decode_matches_full
from slm.models import build_model, preset_config
from slm.models.doge.attention import keep_top_keys
from slm.models.doge.hf import ADAPTER
from slm.models.doge.moe import route


def _doge(learned_mask: bool = True, **kw):
    """The test preset with init_std 0.2 and, with `learned_mask`, random A so that dt differs per key (no ties)."""
    torch.manual_seed(0)
    m = build_model(preset_config("doge-test", init_std=0.2, **kw)).eval()
    if learned_mask:
        with torch.no_grad():
            for block in m.layers:
                block.self_attn.A.normal_(0.0, 1.0)
    return m


# -- dynamic mask ---------------------------------------------------------------------------------------------------- #

def test_key_selection_keeps_the_largest_dt_and_breaks_ties_by_recency():
    dt = torch.tensor([[[5.0, 1.0, 1.0, 3.0, 1.0, 0.5]]])  # (B=1, Hk=1, S=6)
    visible = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    keep = keep_top_keys(dt, visible, window=3)[0, 0]
    assert keep[5].tolist() == [True, False, False, True, True, False]  # 5 and 3, then the latest of the tied 1.0s
    assert keep[2].tolist() == [True, True, True, False, False, False]  # <= window visible: all kept
    assert not (keep & ~visible[0, 0]).any()
    tied = keep_top_keys(torch.ones(1, 1, 6), visible, window=2)[0, 0]  # at init (dt = 1): a sliding window
    assert tied.tolist() == torch.ones(6, 6, dtype=torch.bool).tril().triu(-1).tolist()


def test_key_selection_is_a_no_op_up_to_the_window():
    """The selection has no branch on the key count (a symbolic one while exporting): with S <= window, ties and
    hidden keys included, it keeps exactly the visible keys."""
    torch.manual_seed(0)
    dt = torch.randint(0, 3, (2, 2, 7)).float()  # (B, Hk, S): many ties
    visible = torch.rand(2, 1, 5, 7) < 0.7
    for window in (7, 9):
        assert torch.equal(keep_top_keys(dt, visible, window), visible.expand(2, 2, 5, 7))


def test_export_path_selects_on_every_prefill_and_computes_the_same_logits():
    """While exporting, a state's mask always goes through the selection (a no-op when the keys fit the window)."""
    m = _doge(keep_window_size=40)
    ids = torch.randint(0, 256, (2, 30))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, :9] = False  # left padding
    with torch.no_grad():
        want, _ = m.prefill(ids, mask, 48)
        with mock.patch("torch.compiler.is_exporting", return_value=True):
            got, _ = m.prefill(ids, mask, 48)
    torch.testing.assert_close(got[mask], want[mask], atol=1e-6, rtol=1e-6)


def test_learned_mask_no_future_leak_and_packing_with_selection():
    m = _doge()
    x = torch.randint(0, 256, (2, 30))  # window 12 < 30: the selection fires
    with torch.no_grad():
        base = m(x)
        y = x.clone()
        y[:, 20:] = torch.randint(0, 256, (2, 10))
        torch.testing.assert_close(m(y)[:, :20], base[:, :20], atol=1e-6, rtol=0)
        a, b = x[:1, :17], x[1:, :14]
        doc = torch.tensor([[0] * 17 + [1] * 14])
        pos = torch.tensor([list(range(17)) + list(range(14))])
        out = m(torch.cat([a, b], 1), doc_ids=doc, position_ids=pos)
        torch.testing.assert_close(out[:, :17], m(a), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 17:], m(b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{}, {"n_experts": 16, "moe_top_k": 4}], ids=["dense", "moe"])
def test_learned_mask_state_decode_equals_full_forward_beyond_the_window(kw):
    m = _doge(**kw)
    lens, new = [20, 9, 14], 8  # up to 28 keys, window 12
    seqs = [torch.randint(0, 256, (L + new,)) for L in lens]
    assert_ragged_decode_matches_full(m, seqs, lens, new)


# -- transformers parity (dense) ------------------------------------------------------------------------------------- #

def test_dense_export_matches_transformers_beyond_the_window(tmp_path):
    transformers = pytest.importorskip("transformers")
    from slm.export import export_hf

    m = _doge()
    export_hf(m, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "DogeForCausalLM"
    # 40 keys > window 12 with a learned dt. Distinct tokens: in layer 0 a key's dt depends on its token alone, and
    # among equal dt transformers keeps whatever torch.topk returns (CPU and CUDA differ); slm keeps the latest.
    x = torch.stack([torch.randperm(256)[:40] for _ in range(2)])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x), atol=1e-4, rtol=1e-4)


def test_import_of_a_transformers_doge_matches_its_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    from slm import checkpoint as ckpt
    from slm.export import import_hf

    torch.manual_seed(1)
    hf_cfg = transformers.DogeConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, keep_window_size=10,
                                     max_position_embeddings=256, tie_word_embeddings=False)
    hf = transformers.DogeForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("self_attn.A"):
                p.normal_(0.0, 0.5)  # a learned dynamic mask: dt differs per key
            elif name.endswith("residual") or "norm" in name:
                p.normal_(1.0, 0.2)
    hf.save_pretrained(tmp_path / "hf")
    model, cfg = ckpt.load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert (cfg.model.arch, cfg.model.keep_window_size, cfg.model.n_kv_heads) == ("doge", 10, 2)
    x = torch.stack([torch.randperm(300)[:30] for _ in range(2)])  # distinct tokens: no dt ties (see above)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)


# -- CDMoE: transformers' leak, slm's per-token routing ------------------------------------------------------------------ #

def _moe_pair():
    """slm's MoE Doge and transformers' DogeForCausalLM(is_moe=True) holding the same weights."""
    transformers = pytest.importorskip("transformers")
    m = _doge(n_experts=16, moe_top_k=4)
    c = m.cfg
    hf_cfg = transformers.DogeConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden,
                                     num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                                     num_key_value_heads=c.n_kv_heads, keep_window_size=c.keep_window_size,
                                     max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps,
                                     tie_word_embeddings=True, is_moe=True, num_experts=c.n_experts,
                                     num_experts_per_tok=c.moe_top_k)
    hf = transformers.DogeForCausalLM(hf_cfg).eval()
    state = {ADAPTER.to_hf_name(k): v for k, v in m.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied
    return m, hf


def test_transformers_cdmoe_routing_leaks_future_tokens_and_other_rows_while_slm_does_not():
    m, hf = _moe_pair()
    x = torch.randint(0, 256, (2, 8))
    y = x.clone()
    y[0, 4] = (y[0, 4] + 1) % 256  # perturb one future token of row 0
    z = x.clone()
    z[1, :] = torch.randint(0, 256, (8,))  # replace row 1 entirely
    with torch.no_grad():
        ours, theirs = m(x), hf(x).logits
        # one token alone: both views of the router logits coincide, so the two implementations agree
        torch.testing.assert_close(hf(x[:1, :1]).logits, m(x[:1, :1]), atol=1e-4, rtol=1e-4)
        # transformers: position 0 and 1 of row 0 change when token 4 changes; row 0 changes when row 1 does
        assert not torch.allclose(hf(y).logits[0, :2], theirs[0, :2], atol=1e-5)
        assert not torch.allclose(hf(z).logits[0], theirs[0], atol=1e-5)
        # slm: nothing at or before the perturbed position moves, and rows are independent
        torch.testing.assert_close(m(y)[0, :4], ours[0, :4], atol=1e-6, rtol=0)
        torch.testing.assert_close(m(z)[0], ours[0], atol=1e-6, rtol=0)
        # and slm's full forward equals transformers run one token at a time (its only leak-free mode)
        cache = None
        steps = []
        for t in range(8):
            out = hf(x[:1, t:t + 1], cache=cache, use_cache=True)
            cache = out.cache
            steps.append(out.logits[:, -1])
        torch.testing.assert_close(torch.stack(steps, 1), ours[:1], atol=1e-4, rtol=1e-4)


def test_routing_reads_only_its_own_token():
    logits = torch.randn(3, 5, 2 * 4)  # (B, T, 2*sqrt(16))
    ids, w = route(logits, n_keys=4, top_k=3)
    perturbed = logits.clone()
    perturbed[1, 2] += torch.randn(8)
    ids2, w2 = route(perturbed, n_keys=4, top_k=3)
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[1, 2] = False
    assert torch.equal(ids[keep], ids2[keep]) and torch.equal(w[keep], w2[keep])
    full = (logits[..., :4, None] + logits[..., None, 4:]).flatten(-2)  # all N sums
    assert torch.equal(ids.sort(-1).values, full.topk(3, -1).indices.sort(-1).values)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5))


def test_moe_export_and_import_are_refused_with_one_line(tmp_path):
    from slm.export import export_hf

    m = _doge(n_experts=16, moe_top_k=4)
    with pytest.raises(SlmError, match="no faithful transformers equivalent") as exc:
        export_hf(m, tmp_path / "hf")
    assert "\n" not in str(exc.value) and not (tmp_path / "hf").exists()
    cfg = {"model_type": "doge", "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "is_moe": True, "num_experts": 16}
    with pytest.raises(SlmError, match="is_moe=true is not imported"):
        ADAPTER.config_from_hf(cfg)
    with pytest.raises(SlmError, match="rope_scaling.rope_type='dynamic'"):
        ADAPTER.config_from_hf({**cfg, "is_moe": False, "rope_scaling": {"rope_type": "dynamic", "factor": 4.0}})


# -- balance loss and usage -------------------------------------------------------------------------------------------- #

def test_balance_loss_is_in_expert_id_space_and_reaches_the_trainer_hook():
    m = _doge(learned_mask=False, n_experts=16, moe_top_k=4).train()
    moe = m.layers[0].mlp
    x = torch.randn(1, 4096, 64)
    with torch.no_grad():
        moe.router_gate.weight.zero_()  # all sums equal: a uniform router, top-k ties -> the loss is ~1 per Switch
    moe(x)
    assert abs(float(moe.balance_loss.detach()) - 1.0) < 1e-5
    with torch.no_grad():  # every token prefers expert (1, 2) = id 6 by a wide margin
        moe.router_gate.weight.zero_()
        bias = torch.zeros(8)
        bias[1], bias[4 + 2] = 50.0, 50.0
        x = torch.zeros(1, 64, 64)
        x[..., 0] = 1.0
        moe.router_gate.weight[:, 0] = bias
    moe(x)
    # f_6 = 1/K (one of each token's K picks), P_6 ~ 1: loss ~ N / K; a mismatched index space would not see it
    assert abs(float(moe.balance_loss.detach()) - 16 / 4) < 1e-3
    m.zero_grad()
    ids = torch.randint(0, 256, (2, 16))
    m(ids, targets=ids)  # a training-mode forward records the balance loss and the usage counts
    losses = m.aux_losses()
    assert set(losses) == {"moe_balance"} and losses["moe_balance"].requires_grad
    losses["moe_balance"].backward()
    assert m.layers[0].mlp.router_gate.weight.grad.abs().sum() > 0
    metrics = m.step_metrics()
    assert 0 < metrics["expert_entropy"] <= 1 and 0 < metrics["experts_used"] <= 1
    assert all(float(layer.mlp.usage.sum()) == 0 for layer in m.layers)  # read resets the counts
    with torch.no_grad():
        m.eval()
        for layer in m.layers:
            layer.mlp.balance_loss = None
        m(ids)
    assert m.aux_losses() == {}  # inference records nothing


def test_dense_doge_has_no_aux_loss_or_usage_metrics():
    m = _doge(learned_mask=False).train()
    ids = torch.randint(0, 256, (2, 16))
    m(ids, targets=ids).backward()
    assert m.aux_losses() == {} and m.step_metrics() == {}


# -- bad input --------------------------------------------------------------------------------------------------------- #

@pytest.mark.parametrize("override,needle", [
    ("--model.keep_window_size=0", "--model.keep_window_size=0"),
    ("--model.n_experts=10", "--model.n_experts=10: must be a perfect square"),
    ("--model.moe_top_k=20", "--model.moe_top_k=20"),
], ids=["window", "square", "topk"])
def test_bad_doge_config_is_one_line_exit_2(override, needle, tmp_path, capsys):
    extra = ["--model.n_experts=16"] if "top_k" in override else []
    code = main(["train", "--model.preset=doge-test", *extra, override, f"--run.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("slm: error") and needle in err[0], err
    assert not (tmp_path / "run").exists()


# -- the trainer sees the MoE through the contract; recipes ------------------------------------------------------------ #

def test_moe_training_logs_balance_loss_and_expert_usage(tmp_path, prepared):
    import dataclasses

    from slm_testutil import run_tiny, tiny_config

    cfg = tiny_config(tmp_path / "run", prepared, steps=3)
    cfg = dataclasses.replace(cfg, model=preset_config("doge-test", vocab_size=320, n_experts=16, moe_top_k=4))
    result = run_tiny(cfg, prepared)
    rows = [r for r in result.history if r["kind"] == "train"]
    assert len(rows) == 3
    for r in rows:
        assert r["aux_moe_balance"] > 0 and 0 < r["expert_entropy"] <= 1 and 0 < r["experts_used"] <= 1


@pytest.mark.parametrize("name", ["doge-sft", "doge-dpo", "doge-grpo"])
def test_doge_posttrain_recipes_parse(name):
    from pathlib import Path

    from slm.posttrain.config import load_posttrain_config

    cfg, post = load_posttrain_config(Path(__file__).parents[2] / "recipes" / f"{name}.yaml")
    assert cfg.train.total_steps() > 0 and post.init_from.startswith("runs/doge")
