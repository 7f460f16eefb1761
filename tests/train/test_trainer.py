"""Trainer invariants: bitwise resume, grad-accum equivalence, non-finite skipping, checkpoint safety."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from slm.config import load_run_config
from slm.errors import SlmError
from slm import checkpoint as ckpt

from slm_testutil import run_tiny, tiny_config, train_losses


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_state_dict(path)


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _flat_optimizer(path: Path) -> list[torch.Tensor]:
    opt, _ = ckpt.load_training_state(path)
    out = []
    for name in sorted(opt):
        for pid in sorted(opt[name]["state"]):
            out += [v for _, v in sorted(opt[name]["state"][pid].items()) if torch.is_tensor(v)]
    return out


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_resume_is_bitwise_identical(tmp_path, prepared, optimizer):
    full = tiny_config(tmp_path / "full", prepared, steps=10, checkpoint_every=5, keep_last=5, optimizer=optimizer)
    ref = run_tiny(full, prepared)
    # a crash after step 5's checkpoint: the run dir holds logs up to step 10 but no later checkpoint
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed_dir)
    shutil.rmtree(resumed_dir / "checkpoints/step_000010")
    cfg = tiny_config(resumed_dir, prepared, steps=10, checkpoint_every=5, keep_last=5, optimizer=optimizer,
                      resume="auto")
    res = run_tiny(cfg, prepared)
    assert res.step == 10
    _assert_state_equal(_weights(ref.checkpoint), _weights(res.checkpoint))
    for a, b in zip(_flat_optimizer(ref.checkpoint), _flat_optimizer(res.checkpoint), strict=True):
        assert torch.equal(a, b)
    ref_losses, res_losses = train_losses(ref), train_losses(res)
    for step in range(6, 11):
        assert ref_losses[step] == res_losses[step]  # bitwise: same float
    # the resumed run's log reads as one run: steps 1..10, each once
    steps = [r["step"] for r in res.history if r["kind"] == "train"]
    assert steps == list(range(1, 11))


@pytest.mark.parametrize("resume_at", [4, 6])
def test_resume_across_curriculum_phases(tmp_path, prepared, resume_at):
    phases = [{"seq_len": 16, "steps": 4, "batch_size": 6}, {"seq_len": 32, "steps": 5}]
    full = tiny_config(tmp_path / "full", prepared, phases=phases, checkpoint_every=1, keep_last=20)
    ref = run_tiny(full, prepared)
    assert ref.step == 9
    seq_lens = {r["step"]: r["seq_len"] for r in ref.history if r["kind"] == "train"}
    assert seq_lens[4] == 16 and seq_lens[5] == 32
    d = tmp_path / f"resumed{resume_at}"
    shutil.copytree(tmp_path / f"full/checkpoints/step_{resume_at:06d}", d / f"checkpoints/step_{resume_at:06d}")
    res = run_tiny(tiny_config(d, prepared, phases=phases, checkpoint_every=1, keep_last=20, resume="auto"), prepared)
    _assert_state_equal(_weights(ref.checkpoint), _weights(res.checkpoint))


def test_grad_accumulation_equivalence(tmp_path, prepared):
    one = run_tiny(tiny_config(tmp_path / "a", prepared, steps=3, batch_size=8, grad_accum=1), prepared)
    four = run_tiny(tiny_config(tmp_path / "b", prepared, steps=3, batch_size=2, grad_accum=4), prepared)
    wa, wb = _weights(one.checkpoint), _weights(four.checkpoint)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    la, lb = train_losses(one), train_losses(four)
    for s in la:
        assert la[s] == pytest.approx(lb[s], abs=1e-5)


class _NaNAt:
    """Wraps a task so the loss of one chosen step is NaN."""

    def __init__(self, task, bad_calls: set[int]) -> None:
        self.task, self.bad, self.calls = task, bad_calls, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch, loss_chunk):
        self.calls += 1
        out = self.task.loss(model, batch, loss_chunk)
        return out * float("nan") if self.calls in self.bad else out


def test_non_finite_step_is_skipped_and_logged(tmp_path, prepared):
    from slm.data.loader import TokenDataset
    from slm.tokenizer import byte_tokenizer
    from slm.train.pretrain import PretrainTask

    cfg = tiny_config(tmp_path / "nan", prepared, steps=5)
    task = _NaNAt(PretrainTask(TokenDataset(str(prepared)), byte_tokenizer().token_byte_lengths(), cfg), {3})
    res = run_tiny(cfg, prepared, task=task)
    assert res.step == 5 and res.skipped_steps == 1
    skips = [r for r in res.history if r["kind"] == "skip"]
    assert len(skips) == 1 and skips[0]["step"] == 2  # skipped while at step 2: the counter did not advance
    assert all(torch.isfinite(v).all() for v in _weights(res.checkpoint).values())


def test_too_many_non_finite_steps_abort(tmp_path, prepared):
    from slm.data.loader import TokenDataset
    from slm.tokenizer import byte_tokenizer
    from slm.train.pretrain import PretrainTask

    cfg = tiny_config(tmp_path / "nan2", prepared, steps=5, max_skipped_steps=2)
    task = _NaNAt(PretrainTask(TokenDataset(str(prepared)), byte_tokenizer().token_byte_lengths(), cfg),
                  set(range(1, 100)))
    with pytest.raises(SlmError, match="non-finite"):
        run_tiny(cfg, prepared, task=task)


def test_checkpoint_holds_everything_and_keeps_last_k_plus_best(tmp_path, prepared):
    cfg = tiny_config(tmp_path / "k", prepared, steps=8, checkpoint_every=2, keep_last=2, eval_every=2)
    res = run_tiny(cfg, prepared)
    kept = sorted(p.name for p in (tmp_path / "k/checkpoints").iterdir())
    assert kept[-2:] == ["step_000006", "step_000008"]
    assert res.best_checkpoint is not None and res.best_checkpoint.name in kept
    assert len(kept) <= 3
    files = {p.name for p in res.checkpoint.iterdir()}
    assert {"model.safetensors", "config.yaml", "tokenizer", "optimizer.pt", "trainer_state.pt", "meta.json"} <= files
    _, state = ckpt.load_training_state(res.checkpoint)
    assert state["step"] == 8 and "rng_cpu" in state
    model, saved_cfg = ckpt.load_model(res.checkpoint)
    assert saved_cfg.model == cfg.model and model.num_parameters() > 0
    assert cfg.train.compile == "auto" and saved_cfg.train.compile == "false"  # configs record what auto chose
    assert load_run_config(tmp_path / "k/config.yaml").train.compile == "false"
    metrics = (tmp_path / "k/metrics.jsonl").read_text()
    assert '"kind": "eval"' in metrics and "bpb" in metrics


def test_truncated_checkpoint_is_a_clear_error(tmp_path, prepared):
    res = run_tiny(tiny_config(tmp_path / "tr", prepared, steps=2), prepared)
    weights = res.checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SlmError, match="truncated"):
        ckpt.load_model(res.checkpoint)
    (res.checkpoint / "meta.json").unlink()
    with pytest.raises(SlmError, match="incomplete checkpoint"):
        ckpt.load_model(res.checkpoint)


def test_resume_with_different_model_config_is_refused(tmp_path, prepared):
    run_tiny(tiny_config(tmp_path / "r", prepared, steps=2), prepared)
    cfg = tiny_config(tmp_path / "r", prepared, steps=4, resume="auto")
    cfg.model.n_layers = 3
    with pytest.raises(SlmError, match="model.n_layers"):
        run_tiny(cfg, prepared)


def test_lr_schedules():
    from slm.train.schedule import lr_multiplier

    kw = dict(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_multiplier(0, 100, kind="cosine", **kw) == pytest.approx(0.1)
    assert lr_multiplier(9, 100, kind="cosine", **kw) == pytest.approx(1.0)
    assert lr_multiplier(99, 100, kind="cosine", **kw) == pytest.approx(0.1)
    assert lr_multiplier(50, 100, kind="wsd", decay_fraction=0.2, **kw) == 1.0
    assert lr_multiplier(99, 100, kind="wsd", decay_fraction=0.2, **kw) == pytest.approx(0.1)
    assert lr_multiplier(54, 100, kind="linear", **kw) == pytest.approx(0.55, abs=0.01)
    assert lr_multiplier(70, 100, kind="constant", **kw) == 1.0


def test_activation_checkpointing_gives_the_same_gradients():
    from slm.models import build_model, preset_config

    torch.manual_seed(0)
    m = build_model(preset_config("test")).train()
    x = torch.randint(0, 256, (2, 16))
    y = torch.randint(0, 256, (2, 16))
    m(x, targets=y).backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.gradient_checkpointing = True
    m(x, targets=y).backward()
    for a, p in zip(ref, m.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, prepared):
    from torch._dynamo.utils import counters

    eager = train_losses(run_tiny(tiny_config(tmp_path / "e", prepared, steps=3), prepared))
    torch._dynamo.reset()
    counters.clear()
    compiled = train_losses(run_tiny(tiny_config(tmp_path / "c", prepared, steps=3, compile=True), prepared))
    for s in eager:
        assert compiled[s] == pytest.approx(eager[s], abs=1e-4)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    # evaluating and sampling (KV-cache decode) between steps run the blocks eagerly: no graph is traced for them
    from slm.config import SamplingConfig
    from slm.data.loader import TokenDataset
    from slm.generate.engine import generate
    from slm.tokenizer import byte_tokenizer
    from slm.train.pretrain import PretrainTask
    from slm.train.trainer import train

    def sample(model, step):
        rows = generate(model, [[1, 2, 3], [4, 5]], SamplingConfig(temperature=0, max_new_tokens=4), eos_id=None)
        return [" ".join(map(str, r)) for r in rows]

    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config(tmp_path / "v", prepared, steps=3, compile=True, eval_every=1, sample_every=1)
    tok = byte_tokenizer()
    result = train(cfg, PretrainTask(TokenDataset(str(prepared)), tok.token_byte_lengths(), cfg), tokenizer=tok,
                   progress=False, sample_fn=sample)
    kinds = [r["kind"] for r in result.history]
    assert kinds.count("eval") == 3 and kinds.count("sample") == 3 * 2, kinds  # two prompts
    assert counters["stats"]["unique_graphs"] == graphs


def test_fresh_run_refuses_to_mix_with_old_checkpoints(tmp_path, prepared):
    run_tiny(tiny_config(tmp_path / "o", prepared, steps=2), prepared)
    with pytest.raises(SlmError, match="--run.overwrite=true"):
        run_tiny(tiny_config(tmp_path / "o", prepared, steps=2), prepared)
    cfg = tiny_config(tmp_path / "o", prepared, steps=3)
    cfg.run.overwrite = True
    assert run_tiny(cfg, prepared).step == 3
    assert [p.name for p in (tmp_path / "o/checkpoints").iterdir()] == ["step_000003"]


