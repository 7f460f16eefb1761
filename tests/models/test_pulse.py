"""Pulse-specific checks: the LIF neuron's dynamics and surrogate gradient, spike rates at initialisation (why the
input is normalised), per-layer spike-rate metrics, and exact parameter counts."""

from __future__ import annotations

import math

import pytest
import torch

from slm.models import build_model, preset_config
from slm.models.layers.lif import lif_rate, spike, surrogate_grad
from slm.models.pulse.model import LIF, PulseBlock


def test_lif_dynamics_match_the_hand_computed_recurrence():
    # constant input 0.6, beta 0.95, threshold 1, reset by subtraction:
    # u1 = 0.6 (no spike); u2 = 0.57 + 0.6 = 1.17 (spike); u3 = 1.1115 + 0.6 - 1 = 0.7115 (no spike) -> rate 1/3
    rate = lif_rate(torch.tensor([0.6, 0.0, 5.0]), torch.tensor(0.95), steps=3)
    torch.testing.assert_close(rate, torch.tensor([1 / 3, 0.0, 1.0]))
    # more steps, finer rates: a strong input fires every step, a weak one never
    assert lif_rate(torch.tensor([0.3]), torch.tensor(0.95), steps=10).item() == pytest.approx(0.3, abs=0.11)


@pytest.mark.parametrize("arctan", [False, True])
def test_surrogate_gradient_is_positive_peaked_at_threshold_and_is_what_backward_uses(arctan):
    x = torch.linspace(-2, 2, 81, requires_grad=True)
    spike(x, 25.0, arctan).sum().backward()
    g = surrogate_grad(x.detach(), 25.0, arctan)
    torch.testing.assert_close(x.grad, g)
    assert (g > 0).all() and g.argmax() == 40  # x = 0
    peak = 25.0 / 2 if arctan else 1.0
    assert g[40].item() == pytest.approx(peak, rel=1e-4)  # linspace puts x[40] within 1e-7 of 0
    assert g[0] == g[-1]  # symmetric around the threshold (SLMS's surrogate was odd)


def test_spike_rates_at_init_are_alive_only_with_the_normalised_input():
    torch.manual_seed(0)
    m = build_model(preset_config("pulse-test", vocab_size=256)).train()
    x = torch.randint(0, 256, (4, 32))
    raw_rates = []

    def raw_hook(module, args, _out):
        raw_rates.append(lif_rate(args[0], module.beta, steps=module.cfg.lif_steps).mean().item())

    hooks = [mod.register_forward_hook(raw_hook) for mod in m.modules() if isinstance(mod, LIF)]
    m(x, targets=x).backward()
    for h in hooks:
        h.remove()
    rates = m.step_metrics()
    per_lif = [v for k, v in rates.items() if k != "spike_rate"]
    assert len(per_lif) == 2 * m.cfg.n_layers
    assert all(0.05 < r < 0.95 for r in per_lif), rates  # normalised input: neurons fire at a useful rate
    assert max(raw_rates) < 0.01  # the raw sublayer output (|I| ~ 0.02-0.1) never reaches the threshold
    assert rates["spike_rate"] == pytest.approx(sum(per_lif) / len(per_lif))
    # gradients reach every parameter through the surrogate, incl. the LIF decays, scales and gates
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert any(p.grad.abs().sum() > 0 for n, p in m.named_parameters() if n.endswith(".beta"))


def test_pulse_blocks_add_six_scalars_each_and_they_are_not_decayed():
    cfg = preset_config("pulse-test")
    m = build_model(cfg)
    flow = build_model(preset_config("flow-test"))
    assert m.num_parameters() - flow.num_parameters() == 6 * cfg.n_layers == cfg.num_parameters() - 90_432
    roles = m.param_roles()
    scalars = {n for n, p in m.named_parameters() if p.dim() == 0}
    assert len(scalars) == 6 * cfg.n_layers and all(roles[n] == "scalar" for n in scalars)
    assert all(isinstance(b, PulseBlock) for b in m.layers)
    betas = [p.item() for n, p in m.named_parameters() if n.endswith(".beta")]
    assert betas == [pytest.approx(cfg.lif_beta)] * (2 * cfg.n_layers)


def test_spike_rates_are_not_recorded_in_eval_mode():
    m = build_model(preset_config("pulse-test")).eval()
    with torch.no_grad():
        m(torch.randint(0, 256, (1, 8)))
    assert all(math.isclose(v, 0.0) for v in m.step_metrics().values())
