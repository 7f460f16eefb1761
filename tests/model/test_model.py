"""Model invariants: causality, cache == full forward, RoPE relativity, exact parameter counts, chunked CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slm.models import CausalLM, build_model, cross_entropy, preset_config
from slm.models.layers.rope import apply_rope, rope_tables
from slm.models.llama import PRESETS

VARIANTS = {
    "gqa-tied": dict(),
    "mha-untied": dict(n_kv_heads=4, tie_embeddings=False),
    "qk-norm": dict(qk_norm=True),
    "mqa-theta": dict(n_kv_heads=1, rope_theta=1e5),
}


def _model(**kw) -> CausalLM:
    torch.manual_seed(0)
    m = build_model(preset_config("test", init_std=0.2, **kw))
    return m.eval()


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_future_token_leak(variant):
    m = _model(**VARIANTS[variant])
    x = torch.randint(0, 256, (2, 24))
    base = m(x)
    for t in (0, 7, 22):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, 256, y[:, t + 1:].shape)
        out = m(y)
        assert torch.equal(out[:, : t + 1], base[:, : t + 1]) or torch.allclose(out[:, : t + 1], base[:, : t + 1],
                                                                                atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])  # later positions do see the change


@pytest.mark.parametrize("variant", VARIANTS)
def test_kv_cache_decode_equals_full_forward_batch3(variant):
    m = _model(**VARIANTS[variant])
    lens = [11, 5, 8]
    seqs = [torch.randint(0, 256, (L + 6,)) for L in lens]
    width = max(lens)
    cache = m.new_state(3, width + 6)
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.bool)
    for b, L in enumerate(lens):
        ids[b, width - L:] = seqs[b][:L]
        mask[b, width - L:] = True
    with torch.no_grad():
        step_logits = [m(ids, state=cache, attention_mask=mask)[:, -1]]
        for i in range(6):  # decode 6 tokens one at a time, each row its own continuation
            nxt = torch.stack([seqs[b][lens[b] + i] for b in range(3)])[:, None]
            step_logits.append(m(nxt, state=cache)[:, -1])
        for b, L in enumerate(lens):
            full = m(seqs[b][None])[0]  # (L+6, V)
            for i, logits in enumerate(step_logits):
                torch.testing.assert_close(logits[b], full[L - 1 + i], atol=2e-5, rtol=1e-5)


def test_cache_chunked_prefill_equals_full():
    m = _model()
    x = torch.randint(0, 256, (2, 20))
    cache = m.new_state(2, 20)
    with torch.no_grad():
        parts = [m(x[:, :8], state=cache), m(x[:, 8:15], state=cache), m(x[:, 15:], state=cache)]
        torch.testing.assert_close(torch.cat(parts, 1), m(x), atol=2e-5, rtol=1e-5)


def test_rope_depends_only_on_relative_position():
    cos, sin = rope_tables(16, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(i: int, j: int) -> float:
        qi = apply_rope(q, cos[i:i + 1], sin[i:i + 1])
        kj = apply_rope(k, cos[j:j + 1], sin[j:j + 1])
        return float((qi * kj).sum())

    for shift in (1, 5, 30):
        assert score(3, 1) == pytest.approx(score(3 + shift, 1 + shift), abs=1e-5)
        assert score(10, 10) == pytest.approx(score(10 + shift, 10 + shift), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(4, 1), abs=1e-3)  # but it does depend on the distance


def test_model_logits_invariant_to_absolute_offset_with_cache():
    """Same tokens after a left pad of different length give the same logits: positions count real tokens only."""
    m = _model()
    x = torch.randint(0, 256, (1, 9))
    outs = []
    for pad in (0, 4):
        ids = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], 1)
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], 1)
        with torch.no_grad():
            outs.append(m(ids, state=m.new_state(1, 13), attention_mask=mask)[:, -9:])
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name,expected", [("smollm2-135m", 134_515_008), ("flow-1b", 1_199_646_720),
                                           ("smollm2-360m", 361_821_120)])
def test_preset_parameter_counts(name, expected):
    assert preset_config(name).num_parameters() == expected


@pytest.mark.parametrize("name", [n for n in PRESETS if n in ("test", "tiny", "small-30m")])
def test_closed_form_count_matches_module(name):
    for kw in ({}, {"tie_embeddings": False, "qk_norm": True}):
        cfg = preset_config(name, vocab_size=512, **kw)
        with torch.device("meta"):
            m = build_model(cfg)
        assert m.num_parameters() == cfg.num_parameters()


def test_smollm2_preset_builds_with_exact_count():
    with torch.device("meta"):
        m = build_model(preset_config("smollm2-135m"))
    assert m.num_parameters() == 134_515_008


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_cross_entropy_equals_plain_with_grads(chunk):
    m = _model(tie_embeddings=False)
    x = torch.randint(0, 256, (2, 12))
    t = torch.randint(0, 256, (2, 12))
    t[0, :4] = -100
    loss = m(x, targets=t, loss_chunk=chunk) / (t != -100).sum()
    loss.backward()
    grads = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    ref = cross_entropy(m(x), t)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    for g, p in zip(grads, m.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)


def test_labels_shifted_exactly_once():
    """The model's loss with aligned targets equals a hand-computed next-token CE over a token sequence."""
    m = _model()
    seq = torch.randint(0, 256, (1, 17))
    x, y = seq[:, :-1], seq[:, 1:]  # the one shift (what the data loader does)
    logits = m(x)[0]
    hand = -sum(F.log_softmax(logits[t], -1)[seq[0, t + 1]] for t in range(16)) / 16
    torch.testing.assert_close(m(x, targets=y) / 16, hand, atol=1e-5, rtol=1e-5)
    # a double shift would compare position t with token t+2: clearly different
    assert abs(float(cross_entropy(logits[:-1][None], seq[:, 2:]).detach()) - float(hand.detach())) > 1e-3


def test_sequence_longer_than_max_seq_len_is_an_error():
    m = _model()
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, m.cfg.max_seq_len + 1, dtype=torch.long))


def test_document_masking_equals_separate_forwards():
    m = _model()
    a, b = torch.randint(0, 256, (1, 7)), torch.randint(0, 256, (1, 5))
    packed = torch.cat([a, b], 1)
    doc = torch.tensor([[0] * 7 + [1] * 5])
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        out = m(packed, doc_ids=doc, position_ids=pos)
        torch.testing.assert_close(out[:, :7], m(a), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 7:], m(b), atol=2e-5, rtol=1e-5)
