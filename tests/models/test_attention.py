"""The dense causal attention of compiled CPU training and the one-query decode attention
(slm.models.layers.attention) compute what SDPA computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from slm.models import build_model, preset_config
from slm.models.layers.attention import causal_bias, dense_causal_attention, step_attention, use_dense


def _qkv(B: int, H: int, Hk: int, T: int, D: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, h, T, D, generator=g, dtype=dtype).requires_grad_() for h in (H, Hk, Hk)]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("H,Hk", [(9, 3), (4, 4), (6, 1)])
def test_step_attention_matches_sdpa_with_a_mask(H, Hk, fused):
    q, k, v = (t.detach() for t in _qkv(2, H, Hk, 12, 8))
    q = q[:, :, :1]  # one query per row
    mask = torch.rand(2, 1, 1, 12, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:, :, :, 0] = True  # every row attends to something
    rep = H // Hk
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), attn_mask=mask)
    torch.testing.assert_close(step_attention(q, k, v, mask, fused=fused), want)


@pytest.mark.parametrize("fused", [False, True])
def test_step_attention_with_a_key_bias_and_a_mask_per_kv_head(fused):
    """Doge's decode step: an additive per-key bias (B, Hk, S) and a selection per K/V head (B, Hk, 1, S)."""
    B, H, Hk, S = 2, 6, 2, 10
    q, k, v = (t.detach() for t in _qkv(B, H, Hk, S, 8))
    q = q[:, :, :1]
    g = torch.Generator().manual_seed(3)
    bias = torch.randn(B, Hk, S, generator=g, dtype=q.dtype)
    mask = torch.rand(B, Hk, 1, S, generator=g) < 0.5
    mask[..., 0] = True
    rep = H // Hk
    float_mask = (bias[:, :, None] + torch.zeros_like(bias[:, :, None]).masked_fill(~mask, float("-inf")))
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                          attn_mask=float_mask.repeat_interleave(rep, 1))
    torch.testing.assert_close(step_attention(q, k, v, mask, bias=bias, fused=fused), want)


def test_step_attention_fused_form_equals_the_gemm_form_in_bf16():
    """The compiled decode step's broadcast-and-sum form rounds where the GEMM form does: same bf16 outputs up to the
    order of fp32 summation."""
    q, k, v = (t.detach().to(torch.bfloat16) for t in _qkv(3, 8, 2, 40, 16))
    q = q[:, :, :1]
    mask = torch.rand(3, 1, 1, 40, generator=torch.Generator().manual_seed(2)) < 0.7
    mask[:, :, :, -1] = True
    gemm, fused = step_attention(q, k, v, mask, fused=False), step_attention(q, k, v, mask, fused=True)
    assert fused.dtype == gemm.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), gemm.float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("H,Hk,T", [(4, 2, 9), (6, 6, 16), (6, 1, 5), (3, 3, 1)])
def test_dense_attention_matches_sdpa_output_and_grads(H, Hk, T):
    q, k, v = _qkv(2, H, Hk, T, 8)
    d_out = torch.randn(2, H, T, 8, dtype=torch.float64)
    rep = H // Hk
    want = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)
    want_grads = torch.autograd.grad(want, (q, k, v), d_out)
    got = dense_causal_attention(q, k, v, causal_bias(32).double())  # a bias longer than T: its corner is used
    got_grads = torch.autograd.grad(got, (q, k, v), d_out)
    torch.testing.assert_close(got, want)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b)


def test_dense_attention_has_no_future_leak():
    q, k, v = _qkv(1, 2, 1, 12, 4)
    out = dense_causal_attention(q, k, v, causal_bias(12).double())
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[:, :, 7:] += 5.0
    v2[:, :, 7:] -= 3.0
    out2 = dense_causal_attention(q, k2, v2, causal_bias(12).double())
    torch.testing.assert_close(out[:, :, :7], out2[:, :, :7])
    assert not torch.allclose(out[:, :, 7:], out2[:, :, 7:])


def test_dense_attention_errors():
    q, k, v = _qkv(1, 3, 2, 4, 4)
    with pytest.raises(ValueError, match="multiple"):
        dense_causal_attention(q, k, v, causal_bias(4).double())
    q, k, v = _qkv(1, 2, 1, 8, 4)
    with pytest.raises(ValueError, match="covers 4 positions"):
        dense_causal_attention(q, k, v, causal_bias(4).double())


def test_dense_path_only_while_compiling_on_cpu_with_grad():
    q = torch.zeros(1, 2, 16, 4)
    assert not use_dense(q)  # eager: SDPA is faster unfused
    seen = []

    def probe(x):
        seen.append(use_dense(x))
        return x * 2

    torch.compile(probe, backend="eager")(q)
    with torch.no_grad():
        torch.compile(probe, backend="eager")(q + 1)
    assert seen == [True, False]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["test", "flow-test", "pulse-test"])  # flow/pulse: windowed dense attention
def test_compiled_model_with_dense_attention_matches_eager_grads(preset):
    cfg = preset_config(preset, max_seq_len=64)
    torch.manual_seed(0)
    model = build_model(cfg)
    x = torch.randint(0, cfg.vocab_size, (3, 40))
    y = torch.randint(0, cfg.vocab_size, (3, 40))
    model(x, targets=y).backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    torch.compile(model)(x, targets=y).backward()
    for a, p in zip(want, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-5, rtol=1e-4)
