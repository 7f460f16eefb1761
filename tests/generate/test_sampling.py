"""Sampling rules on hand-made logits: penalty math, top-k, top-p's smallest-set rule, greedy, seeding, validation."""

import math

import pytest
import torch

from slm.errors import SlmError
from slm.generate import (SamplingConfig, apply_repetition_penalty, apply_top_k, apply_top_p, sample_next,
                          seen_mask)


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 0.5, -3.0]]))


def test_seen_mask_from_history_ignores_padding():
    history = torch.tensor([[3, 1, 3, -1], [-1, -1, 0, 2]])
    expected = torch.tensor([[False, True, False, True, False], [True, False, True, False, False]])
    assert torch.equal(seen_mask(history, 5), expected)


def test_sample_next_penalty_changes_greedy_choice_for_mask_and_history_forms():
    logits = torch.tensor([[2.0, 1.5, -1.0], [2.0, 1.5, -1.0]])
    cfg = SamplingConfig(temperature=0.0, repetition_penalty=2.0)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    history = torch.tensor([[0, -1], [2, 2]])
    assert sample_next(logits, cfg, None, mask).tolist() == [1, 0]  # 2.0 / 2 = 1.0 < 1.5
    assert sample_next(logits, cfg, None, history).tolist() == [1, 0]


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, -2.0, 2.5, 1.0]])
    out = apply_top_k(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert torch.equal(apply_top_k(logits, 0), logits)
    assert torch.equal(apply_top_k(logits, 99), logits)


@pytest.mark.parametrize("p, kept", [(0.4, {3}), (0.6, {3, 0}), (0.79, {3, 0}), (0.81, {3, 0, 4}),
                                     (0.9, {3, 0, 4}), (0.97, {3, 0, 4, 1}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_smallest_set_reaching_mass_p(p, kept):
    probs = torch.tensor([[0.30, 0.04, 0.02, 0.50, 0.14]])  # sorted: 3 .50, 0 .30, 4 .14, 1 .04, 2 .02
    logits = probs.log()
    out = apply_top_p(logits, p)
    assert {i for i in range(5) if math.isfinite(out[0, i].item())} == kept
    # The survivors keep their relative probabilities.
    renorm = out.softmax(-1)[0]
    mass = sum(probs[0, i].item() for i in kept)
    for i in kept:
        assert renorm[i].item() == pytest.approx(probs[0, i].item() / mass, rel=1e-5)


def test_top_p_stops_as_soon_as_mass_reaches_p_exactly():
    out = apply_top_p(torch.zeros(1, 4), 0.5)  # uniform: two tokens hold exactly 0.5
    assert int(torch.isfinite(out).sum()) == 2


def test_top_p_only_samples_inside_nucleus():
    probs = torch.tensor([[0.30, 0.04, 0.02, 0.50, 0.14]]).expand(2000, 5)
    cfg = SamplingConfig(temperature=1.0, top_p=0.75)
    draws = sample_next(probs.log(), cfg, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 3}


def test_top_k_one_is_greedy_at_any_temperature():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 256, generator=gen)
    for temperature in (0.5, 1.0, 5.0):
        cfg = SamplingConfig(temperature=temperature, top_k=1)
        assert torch.equal(sample_next(logits, cfg, gen), logits.argmax(-1))


def test_same_seed_same_draws_different_seed_different_draws():
    logits = torch.zeros(32, 256)
    cfg = SamplingConfig(temperature=1.0)
    a = sample_next(logits, cfg, torch.Generator().manual_seed(1))
    b = sample_next(logits, cfg, torch.Generator().manual_seed(1))
    c = sample_next(logits, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("field, value", [("top_p", 0.0), ("top_p", 1.5), ("temperature", -1.0), ("top_k", -1),
                                          ("repetition_penalty", 0.0), ("max_new_tokens", 0), ("num_samples", 0)])
def test_invalid_config_names_the_flag(field, value):
    with pytest.raises(SlmError, match=rf"--sample\.{field} "):
        SamplingConfig(**{field: value})
