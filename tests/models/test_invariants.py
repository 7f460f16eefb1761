"""The invariants every registered architecture must hold, parametrized over the registry (`slm.models.ARCHS`).

A new architecture proves itself by being registered: each test here runs for every (architecture, test variant)
pair, including the test-only `toy-gelu` of toy_arch.py. Nothing here names an architecture; capabilities come
from the spec's flags (supports_packing, hf).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import typing

import pytest
import torch
import torch.nn.functional as F

from slm import checkpoint as ckpt
from slm.config import SamplingConfig, TrainConfig
from slm.errors import SlmError
from slm.generate import generate, generate_naive
from slm.models import ARCHS, DECAYED_ROLES, HIDDEN_MATRIX_ROLES, Role, build_model, cross_entropy, get_arch, preset_config
from slm.train.optim import build_optimizer

from slm_testutil import assert_ragged_decode_matches_full, run_tiny, tiny_config, train_losses

CASES = [pytest.param(spec.name, v, id=f"{spec.name}-{v}") for spec in ARCHS.values() for v in spec.test_variants]
ARCH_NAMES = [pytest.param(spec.name, id=spec.name) for spec in ARCHS.values()]


def _cfg(arch: str, variant: str | None = None, **kw):
    spec = get_arch(arch)
    variant = variant or next(iter(spec.test_variants))
    return preset_config(spec.test_preset, **{"init_std": 0.2, **spec.test_variants[variant], **kw})


def _model(arch: str, variant: str | None = None, **kw):
    torch.manual_seed(0)
    return build_model(_cfg(arch, variant, **kw)).eval()


def _vocab(m) -> int:
    return m.cfg.vocab_size


def test_the_registry_holds_llama_and_the_test_only_architecture():
    assert {"llama", "toy-gelu"} <= set(ARCHS)


@pytest.mark.parametrize("arch,variant", CASES)
def test_no_future_token_leak(arch, variant):
    m = _model(arch, variant)
    x = torch.randint(0, _vocab(m), (2, 24))
    with torch.no_grad():
        base = m(x)
        for t in (0, 7, 22):
            y = x.clone()
            y[:, t + 1:] = torch.randint(0, _vocab(m), y[:, t + 1:].shape)
            out = m(y)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])  # later positions do see the change


def _left_padded(seqs: list[torch.Tensor], lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lens)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.bool)
    for b, L in enumerate(lens):
        ids[b, width - L:] = seqs[b][:L]
        mask[b, width - L:] = True
    return ids, mask


@pytest.mark.parametrize("arch,variant", CASES)
def test_state_decode_equals_full_forward_batch3_ragged(arch, variant):
    m = _model(arch, variant)
    lens, new = [11, 5, 8], 6
    seqs = [torch.randint(0, _vocab(m), (L + new,)) for L in lens]
    assert_ragged_decode_matches_full(m, seqs, lens, new)


@pytest.mark.parametrize("arch,variant", CASES)
def test_pure_decode_step_equals_the_stateful_step_and_modifies_nothing(arch, variant):
    m = _model(arch, variant)
    lens = [7, 3]
    seqs = [torch.randint(0, _vocab(m), (L + 3,)) for L in lens]
    ids, mask = _left_padded(seqs, lens)
    state = m.new_state(2, max(lens) + 3)
    with torch.no_grad():
        m(ids, state=state, attention_mask=mask)
        tensors = tuple(t.clone() for t in state.tensors())
        for i in range(3):
            nxt = torch.stack([seqs[b][lens[b] + i] for b in range(2)])[:, None]
            real = torch.ones(2, 1, dtype=torch.bool)
            given = tuple(t.clone() for t in tensors)
            pure_logits, tensors = m.decode_step(nxt, real, given)
            for a, b in zip(given, tuple(t.clone() for t in given), strict=True):
                assert torch.equal(a, b)
            stateful = m(nxt, state=state, attention_mask=real)
            torch.testing.assert_close(pure_logits, stateful, atol=1e-6, rtol=1e-6)
            for a, b in zip(tensors, state.tensors(), strict=True):
                torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("arch,variant", CASES)
def test_packed_documents_equal_separate_forwards(arch, variant):
    if not get_arch(arch).supports_packing:
        pytest.skip(f"{arch} does not support packed documents (supports_packing=False)")
    m = _model(arch, variant)
    a, b = torch.randint(0, _vocab(m), (1, 7)), torch.randint(0, _vocab(m), (1, 5))
    doc = torch.tensor([[0] * 7 + [1] * 5])
    pos = torch.tensor([list(range(7)) + list(range(5))])
    with torch.no_grad():
        out = m(torch.cat([a, b], 1), doc_ids=doc, position_ids=pos)
        torch.testing.assert_close(out[:, :7], m(a), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, 7:], m(b), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("arch,variant", CASES)
def test_labels_are_shifted_exactly_once(arch, variant):
    """forward(targets=) with aligned targets equals a hand-computed next-token CE: the model never shifts again."""
    m = _model(arch, variant)
    seq = torch.randint(0, _vocab(m), (1, 17))
    x, y = seq[:, :-1], seq[:, 1:]  # the one shift (what the data loader does)
    with torch.no_grad():
        logits = m(x)[0]
        hand = -sum(F.log_softmax(logits[t].float(), -1)[seq[0, t + 1]] for t in range(16)) / 16
        torch.testing.assert_close(m(x, targets=y) / 16, hand, atol=1e-5, rtol=1e-5)
        # a double shift would score position t against token t + 2
        assert abs(float(cross_entropy(logits[:-1][None], seq[:, 2:])) - float(hand)) > 1e-3


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_exact_parameter_counts_of_presets_and_variants(arch):
    spec = get_arch(arch)
    for name, preset in spec.presets.items():
        cfg = preset_config(name, **({} if preset.values.get("vocab_size") else {"vocab_size": 512}))
        built = build_model(cfg, device="meta").num_parameters()
        assert cfg.num_parameters() == built, name
        if preset.params is not None:
            assert built == preset.params, name
    for variant in spec.test_variants:
        cfg = _cfg(arch, variant)
        assert cfg.num_parameters() == build_model(cfg, device="meta").num_parameters(), variant


@pytest.mark.parametrize("arch,variant", CASES)
def test_param_roles_cover_every_parameter_and_drive_the_optimizer(arch, variant):
    m = _model(arch, variant).train()
    roles = m.param_roles()
    params = dict(m.named_parameters())
    assert set(roles) == set(params)
    assert set(roles.values()) <= set(typing.get_args(Role))
    assert sum(r == "output" for r in roles.values()) + sum(r == "embedding" for r in roles.values()) >= 1
    for optimizer in ("adamw", "muon"):
        opt = build_optimizer(m, TrainConfig(optimizer=optimizer))
        seen: dict[int, tuple[str, float]] = {}
        for name, o in opt.optimizers.items():
            for g in o.param_groups:
                for p in g["params"]:
                    assert id(p) not in seen  # every parameter in exactly one group
                    seen[id(p)] = (name, g["weight_decay"])
        assert set(seen) == {id(p) for p in params.values()}
        for pname, p in params.items():
            opt_name, decay = seen[id(p)]
            assert (decay > 0 or opt_name == "muon") == (roles[pname] in DECAYED_ROLES), pname
            assert (opt_name == "muon") == (optimizer == "muon" and roles[pname] in HIDDEN_MATRIX_ROLES), pname


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_flops_per_token_covers_the_matmuls(arch):
    m = _model(arch)
    roles = m.param_roles()
    params = dict(m.named_parameters())
    matmul = sum(params[k].numel() for k, r in roles.items() if r in HIDDEN_MATRIX_ROLES) + m.output_weight.numel()
    assert m.flops_per_token(64) >= 6 * matmul
    assert m.flops_per_token(128) >= m.flops_per_token(64)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_cached_generation_equals_the_naive_reference(arch):
    m = _model(arch)
    prompts = [[5, 9, 3, 7, 1, 2, 8], [4, 6], [10, 11, 12, 13]]
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=8, stop_at_eos=False)
    batched = generate(m, prompts, cfg, eos_id=None)
    assert batched == [generate_naive(m, p, cfg, eos_id=None) for p in prompts]
    assert generate(m, prompts, cfg, eos_id=None) == batched  # again, on a pooled state


def _arch_run(arch, run_dir, prepared, **train_kw):
    cfg = tiny_config(run_dir, prepared, **train_kw)
    return dataclasses.replace(cfg, model=_cfg(arch, vocab_size=320, init_std=0.02))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_resume_is_bitwise_identical(arch, tmp_path, prepared):
    full = _arch_run(arch, tmp_path / "full", prepared, steps=6, checkpoint_every=3, keep_last=5)
    ref = run_tiny(full, prepared)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints/step_000006")
    res = run_tiny(_arch_run(arch, resumed_dir, prepared, steps=6, checkpoint_every=3, keep_last=5, resume="auto"),
                   prepared)
    a, b = ckpt.load_state_dict(ref.checkpoint), ckpt.load_state_dict(res.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = train_losses(ref), train_losses(res)
    assert all(ra[s] == rb[s] for s in range(4, 7))
    model, cfg = ckpt.load_model(res.checkpoint)
    assert type(model) is get_arch(arch).model and cfg.model.arch == arch


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_grad_accumulation_equivalence(arch, tmp_path, prepared):
    one = run_tiny(_arch_run(arch, tmp_path / "a", prepared, steps=2, batch_size=8, grad_accum=1), prepared)
    four = run_tiny(_arch_run(arch, tmp_path / "b", prepared, steps=2, batch_size=2, grad_accum=4), prepared)
    wa, wb = ckpt.load_state_dict(one.checkpoint), ckpt.load_state_dict(four.checkpoint)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch,variant", CASES)
def test_hf_round_trip_where_an_adapter_exists(arch, variant, tmp_path):
    from slm.export import export_hf, import_hf

    m = _model(arch, variant)
    adapter = get_arch(arch).hf
    refusal = "no transformers class" if adapter is None else adapter.refusal(m.cfg)
    if refusal is not None:  # no transformers class, or none that computes this config's function
        with pytest.raises(SlmError, match=re.escape(refusal)):
            export_hf(m, tmp_path / "hf")
        assert not (tmp_path / "hf").exists()
        return
    export_hf(m, tmp_path / "hf")
    back, cfg = ckpt.load_model(import_hf(tmp_path / "hf", tmp_path / "ckpt"))
    assert cfg.model.architecture_fields() == m.cfg.architecture_fields()
    mine, theirs = m.state_dict(), back.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, _vocab(m), (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x), atol=1e-4, rtol=1e-4)


class _DecodeStep(torch.nn.Module):
    """The pure decode step as a module with flat tensor inputs and outputs (what exporters trace)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids, mask, *state):
        logits, new_state = self.model.decode_step(ids, mask, state)
        return (logits, *new_state)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_pure_decode_step_exports_with_torch_export(arch):
    """torch.export (what the ONNX and Core ML converters consume) traces the step without data-dependent Python
    control flow, and the exported program computes the same step."""
    m = _model(arch)
    state = m.new_state(2, 16)
    with torch.no_grad():
        m(torch.randint(0, _vocab(m), (2, 5)), state=state)
    ids, mask = torch.randint(0, _vocab(m), (2, 1)), torch.ones(2, 1, dtype=torch.bool)
    program = torch.export.export(_DecodeStep(m), (ids, mask, *state.tensors()), strict=False)
    got = program.module()(ids, mask, *state.tensors())
    want = _DecodeStep(m)(ids, mask, *state.tensors())
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
