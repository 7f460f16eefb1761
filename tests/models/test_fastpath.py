"""The fast path changes no loss curve beyond bf16 tolerance, and its pieces compute what the plain path computes.

The fast path is what `precision: auto` + `compile: true` pick on an AMX CPU or CUDA: bf16 autocast, the fused
chunked cross-entropy (gradients formed in the forward pass, GEMMs in bf16), torch.compile of model and loss, and the
static-shape decode step. 50 training steps of the tiny model in fp32 and on the fast path must give the same loss
curve within a bf16 tolerance.
"""

from __future__ import annotations

import pytest
import torch

from slm.generate import SamplingConfig, generate
from slm.models import CausalLM, build_model, chunked_cross_entropy, cross_entropy, preset_config
from slm_testutil import run_tiny, tiny_config, train_losses

STEPS = 50
# bf16 keeps 8 mantissa bits, so per-step losses (about 5.8 falling to 3) differ in the third decimal; the bound leaves
# an order of magnitude of room for that drift over 50 steps, while a wrong gradient, mask or scale is off by more.
ABS_TOL, REL_TOL = 0.02, 0.005


def _curve(tmp_path, prepared, name: str, **train_kw) -> list[float]:
    cfg = tiny_config(tmp_path / name, prepared, steps=STEPS, batch_size=4, seq_len=64, warmup_steps=5, lr=3e-3,
                      **train_kw)
    losses = train_losses(run_tiny(cfg, prepared))
    return [losses[s] for s in sorted(losses)]


def _assert_same_curve(fast: list[float], ref: list[float]) -> None:
    assert len(fast) == len(ref) == STEPS
    assert ref[-1] < ref[0] - 1.0  # the reference does learn, so matching it means something
    for step, (got, want) in enumerate(zip(fast, ref), 1):
        assert got == pytest.approx(want, abs=ABS_TOL, rel=REL_TOL), f"step {step}: fast {got:.4f} vs fp32 {want:.4f}"
    assert fast != ref  # the fast path really ran in bf16


@pytest.mark.parametrize("precision", ["bf16", "bf16-matmul"])  # the calibration's CPU candidates besides fp32
def test_bf16_loss_curve_matches_fp32(tmp_path, prepared, precision):
    ref = _curve(tmp_path, prepared, "fp32", precision="fp32")
    fast = _curve(tmp_path, prepared, precision, precision=precision)
    _assert_same_curve(fast, ref)
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"  # the trainer restored the process-wide setting


@pytest.mark.slow
def test_compiled_bf16_loss_curve_matches_fp32(tmp_path, prepared):
    ref = _curve(tmp_path, prepared, "fp32", precision="fp32")
    fast = _curve(tmp_path, prepared, "bf16c", precision="bf16", compile=True)
    _assert_same_curve(fast, ref)


def _model(**kw) -> CausalLM:
    torch.manual_seed(0)
    return build_model(preset_config("test", init_std=0.2, **kw))


@pytest.mark.parametrize("compile_kernels", [False, True])
def test_fused_ce_under_autocast_matches_fp32_reference(compile_kernels):
    """Loss and grads of the bf16 fused CE stay within bf16 error of an fp32 plain CE (incl. ignored targets)."""
    torch.manual_seed(1)
    h = torch.randn(40, 64, requires_grad=True)
    w = (0.3 * torch.randn(256, 64)).requires_grad_()
    t = torch.randint(0, 256, (40,))
    t[3:9] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(h, w, t, chunk=16, compile_kernels=compile_kernels)
    loss.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = cross_entropy((h @ w.t())[None], t[None])
    ref.backward()
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(gh, h.grad, atol=2e-3, rtol=5e-2)
    torch.testing.assert_close(gw, w.grad, atol=2e-3, rtol=5e-2)


def test_compiled_ce_chunk_equals_eager_in_fp32():
    """The compiled chunk kernel (one-hot by index comparison, gradient written transposed) computes what the eager
    in-place one computes, ignored targets and a short last chunk included."""
    torch.manual_seed(2)
    h = torch.randn(37, 32, dtype=torch.float64).float()
    w = 0.3 * torch.randn(128, 32)
    t = torch.randint(0, 128, (37,))
    t[::5] = -100
    got = []
    for compile_kernels in (False, True):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = chunked_cross_entropy(hh, ww, t, chunk=16, reduction="sum", compile_kernels=compile_kernels)
        loss.backward()
        got.append((loss.detach(), hh.grad, ww.grad))
    for eager, compiled in zip(*got):
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


def test_fused_ce_without_grad_computes_only_the_loss():
    h, w = torch.randn(10, 64), torch.randn(256, 64)
    t = torch.randint(0, 256, (10,))
    with torch.no_grad():
        got = chunked_cross_entropy(h, w, t, chunk=4, reduction="sum")
    torch.testing.assert_close(got, cross_entropy((h @ w.t())[None], t[None], reduction="sum"))


def test_static_decode_step_equals_growing_cache_path():
    """forward_step (whole buffer + valid mask) == reserve/update (growing slice), with left padding in the batch."""
    m = _model().eval()
    ids = torch.randint(1, 256, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, :3] = False
    nxt = torch.randint(1, 256, (2, 5))
    outs = []
    for static in (True, False):
        cache = m.new_state(2, 12)
        with torch.no_grad():
            m(ids, state=cache, attention_mask=mask)
            steps = []
            for i in range(5):
                tok, real = nxt[:, i:i + 1], torch.ones(2, 1, dtype=torch.bool)
                if static:
                    cache.advance(1)
                    steps.append(m.forward_step(tok, cache, real))
                else:
                    positions, amask = cache.reserve(real)  # the general path, as a two-token call would use
                    x = m.embed_tokens(tok)
                    cos, sin = m.rope_cos[positions][:, None], m.rope_sin[positions][:, None]
                    for j, layer in enumerate(m.layers):
                        x = layer(x, cos, sin, j, cache, amask)
                    steps.append(torch.nn.functional.linear(m.norm(x), m.output_weight))
        outs.append(torch.cat(steps, 1))
    torch.testing.assert_close(outs[0], outs[1], atol=2e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", [True, "autotune"])
def test_compiled_decode_gives_the_same_tokens(mode):
    m = build_model(preset_config("test", tie_embeddings=False, init_std=0.3))
    m.reset_parameters(seed=0)
    prompts = [torch.randint(1, 256, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (3, 9, 5)]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=20)
    assert generate(m, prompts, cfg, eos_id=None, compile=mode) == generate(m, prompts, cfg, eos_id=None)
