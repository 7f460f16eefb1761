"""Llama-specific checks: RoPE relativity, chunked prefill, padding offsets, closed-form counts, chunked CE.
The invariants every architecture must hold run from tests/models/test_invariants.py over the registry."""

from __future__ import annotations

import pytest
import torch

from slm.models import CausalLM, build_model, cross_entropy, preset_config
from slm.models.layers.rope import apply_rope, rope_tables
from slm.models.llama import PRESETS

def _model(**kw) -> CausalLM:
    torch.manual_seed(0)
    m = build_model(preset_config("test", init_std=0.2, **kw))
    return m.eval()


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


def test_sequence_longer_than_max_seq_len_is_an_error():
    m = _model()
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.zeros(1, m.cfg.max_seq_len + 1, dtype=torch.long))
