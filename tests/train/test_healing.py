"""Training that heals and checkpoints that can be trusted: spike guard, NaN / absurd-lr injection with rollback,
finite weights only in checkpoints, hash-verified loads, crash-safe pruning, stale temp dirs, preemption signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from slm import checkpoint as ckpt
from slm.data.loader import TokenDataset
from slm.errors import Preempted, SlmError
from slm.tokenizer import byte_tokenizer
from slm.train import trainer as trainer_mod
from slm.train.guard import SpikeGuard
from slm.train.pretrain import PretrainTask

from slm_testutil import run_tiny, tiny_config, train_losses


def _task(cfg, prepared):
    return PretrainTask(TokenDataset(str(prepared)), byte_tokenizer().token_byte_lengths(), cfg)


class _Poison:
    """Wraps a task: the loss of the listed calls (1-based, micro-batches) is multiplied by `factor` (nan = NaN)."""

    def __init__(self, task, calls: set[int], factor: float) -> None:
        self.task, self.bad, self.factor, self.calls = task, calls, factor, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch, loss_chunk):
        self.calls += 1
        out = self.task.loss(model, batch, loss_chunk)
        return out * self.factor if self.calls in self.bad else out


def _kinds(history: list[dict], kind: str) -> list[dict]:
    return [r for r in history if r["kind"] == kind]


def _finite(path: Path) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt.load_state_dict(path).values())


def test_spike_guard_scores_one_sided_against_its_window():
    g = SpikeGuard(zscore=6.0, window=10, min_steps=3)
    assert not g.is_spike(100.0)  # too few losses to judge
    for x in (3.0, 3.1, 2.9, 3.0):
        g.accept(x)
    assert g.is_spike(50.0) and not g.is_spike(3.2) and not g.is_spike(0.1)  # a sudden improvement is fine
    assert not g.is_spike(float("nan"))  # non-finite losses are the trainer's other check
    g2 = SpikeGuard(6.0, 10, 3)
    g2.load_state_dict(g.state_dict())
    assert g2.score(50.0) == g.score(50.0)


def test_guard_judging_every_step_leaves_a_healthy_run_bitwise_unchanged(tmp_path, prepared):
    off = run_tiny(tiny_config(tmp_path / "off", prepared, steps=12, spike_zscore=0, check_finite_every=0), prepared)
    on = run_tiny(tiny_config(tmp_path / "on", prepared, steps=12, spike_min_steps=2), prepared)
    assert not _kinds(on.history, "spike") and on.extras["rollbacks"] == 0
    a, b = ckpt.load_state_dict(off.checkpoint), ckpt.load_state_dict(on.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert train_losses(off) == train_losses(on)


def test_a_poisoned_batch_is_skipped_as_a_spike(tmp_path, prepared):
    cfg = tiny_config(tmp_path / "p", prepared, steps=12, spike_min_steps=4)
    res = run_tiny(cfg, prepared, task=_Poison(_task(cfg, prepared), {8}, 40.0))
    spikes = _kinds(res.history, "spike")
    assert len(spikes) == 1 and spikes[0]["step"] == 7 and spikes[0]["zscore"] > 6
    assert res.step == 12 and res.extras["spiked_steps"] == 1 and _finite(res.checkpoint)


def test_nan_batches_roll_back_to_the_last_checkpoint_and_end_healthy(tmp_path, prepared):
    clean = run_tiny(tiny_config(tmp_path / "clean", prepared, steps=20), prepared)
    cfg = tiny_config(tmp_path / "nan", prepared, steps=20, checkpoint_every=4, keep_last=2, rollback_after=3)
    res = run_tiny(cfg, prepared, task=_Poison(_task(cfg, prepared), set(range(10, 14)), float("nan")))
    rollbacks = _kinds(res.history, "rollback")
    assert len(rollbacks) == 1 and rollbacks[0]["to_step"] == 8 and rollbacks[0]["skipped_data"]
    assert rollbacks[0]["lr_scale"] == 0.5 and res.extras["lr_scale"] == 0.5
    assert res.step == 20 and _finite(res.checkpoint)
    final, ref = train_losses(res)[20], train_losses(clean)[20]
    assert abs(final - ref) < 0.3, (final, ref)


def test_an_absurd_lr_breaks_the_weights_and_the_run_rolls_back(tmp_path, prepared, monkeypatch):
    clean = run_tiny(tiny_config(tmp_path / "clean", prepared, steps=20), prepared)
    real = trainer_mod.lr_multiplier
    fired = []

    def absurd_once(step, total, **kw):  # step 9's update runs at lr = inf, once (not again after the rollback)
        if step == 9 and not fired:
            fired.append(step)
            return float("inf")
        return real(step, total, **kw)

    monkeypatch.setattr(trainer_mod, "lr_multiplier", absurd_once)
    cfg = tiny_config(tmp_path / "lr", prepared, steps=20, checkpoint_every=4, check_finite_every=1)
    res = run_tiny(cfg, prepared)
    rollbacks = _kinds(res.history, "rollback")
    assert len(rollbacks) == 1 and "non-finite weights" in rollbacks[0]["reason"] and rollbacks[0]["to_step"] == 8
    assert res.step == 20 and _finite(res.checkpoint)
    assert all(_finite(p) for p in ckpt.list_checkpoints(tmp_path / "lr"))
    assert abs(train_losses(res)[20] - train_losses(clean)[20]) < 0.3


def test_a_huge_finite_lr_is_caught_by_the_spike_guard_and_rolled_back(tmp_path, prepared, monkeypatch):
    real = trainer_mod.lr_multiplier
    fired = []

    def huge_once(step, total, **kw):
        if step == 9 and not fired:
            fired.append(step)
            return 1e4  # lr 30: finite weights, garbage model
        return real(step, total, **kw)

    monkeypatch.setattr(trainer_mod, "lr_multiplier", huge_once)
    cfg = tiny_config(tmp_path / "h", prepared, steps=20, checkpoint_every=4, spike_min_steps=4, rollback_after=3)
    res = run_tiny(cfg, prepared)
    assert _kinds(res.history, "spike") and len(_kinds(res.history, "rollback")) == 1
    assert res.step == 20 and _finite(res.checkpoint) and train_losses(res)[20] < train_losses(res)[1] - 1.0


def test_instability_without_a_checkpoint_is_one_clear_error(tmp_path, prepared):
    cfg = tiny_config(tmp_path / "n", prepared, steps=8, rollback_after=2)
    with pytest.raises(SlmError, match="no healthy checkpoint to roll back to"):
        run_tiny(cfg, prepared, task=_Poison(_task(cfg, prepared), set(range(2, 100)), float("nan")))


def test_a_non_finite_model_is_never_saved(tmp_path):
    from slm.config import RunConfig
    from slm.models import build_model, preset_config

    model = build_model(preset_config("test"))
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(SlmError, match="inf/nan"):
        ckpt.save_checkpoint(tmp_path / "c", model=model, config=RunConfig(model=model.cfg))
    assert not (tmp_path / "c").exists() and not list(tmp_path.iterdir())


def _flip_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_same_size_corruption_is_caught_on_load_and_resume_auto_passes_over_it(tmp_path, prepared):
    run = tmp_path / "r"
    run_tiny(tiny_config(run, prepared, steps=4, checkpoint_every=2, keep_last=5), prepared)
    latest = run / "checkpoints/step_000004"
    ckpt._VERIFIED.clear()
    _flip_byte(latest / "model.safetensors")
    with pytest.raises(SlmError, match="checksum mismatch"):
        ckpt.load_model(latest)
    res = run_tiny(tiny_config(run, prepared, steps=6, checkpoint_every=2, keep_last=5, resume="auto"), prepared)
    skipped = _kinds(res.history, "resume_skip")
    assert len(skipped) == 1 and "step_000004" in skipped[0]["reason"] and res.step == 6


def test_a_kill_mid_prune_never_leaves_a_listed_incomplete_checkpoint(tmp_path, prepared, monkeypatch):
    run = tmp_path / "k"
    run_tiny(tiny_config(run, prepared, steps=4, checkpoint_every=1, keep_last=5), prepared)

    def killed(path, ignore_errors=False):  # the process dies after the rename, before the delete finishes
        victim = next(Path(path).iterdir())
        (victim / "optimizer.pt").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(run, keep_last=1, best=None)
    monkeypatch.undo()
    for p in ckpt.list_checkpoints(run):
        ckpt.verify_checkpoint(p)  # whatever is listed is complete
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert leftovers and all(n.endswith(".deleting") for n in leftovers)
    assert ckpt.clean_stale(run) == sorted(leftovers)


def test_stale_temp_dirs_of_killed_saves_are_removed_at_start(tmp_path, prepared):
    run = tmp_path / "s"
    run_tiny(tiny_config(run, prepared, steps=2, checkpoint_every=1, keep_last=5), prepared)
    root = run / "checkpoints"
    (root / ".step_000003.abcd.tmp").mkdir()
    (root / ".step_000003.abcd.tmp" / "model.safetensors").write_bytes(b"x" * 1000)
    (root / "step_000004").mkdir()  # no meta.json: an interrupted delete of an older slm
    res = run_tiny(tiny_config(run, prepared, steps=3, checkpoint_every=1, keep_last=5, resume="auto"), prepared)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001", "step_000002", "step_000003"]
    assert _kinds(res.history, "cleanup")[0]["removed"] == [".step_000003.abcd.tmp", "step_000004"]


class _SignalAt:
    """Wraps a task: sends `sig` to this process during the given loss call (as a scheduler would, mid-step)."""

    def __init__(self, task, call: int, sig: int) -> None:
        self.task, self.call, self.sig, self.calls = task, call, sig, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch, loss_chunk):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), self.sig)
        return self.task.loss(model, batch, loss_chunk)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_preemption_signal_saves_at_the_step_boundary_and_resume_is_bitwise(tmp_path, prepared, sig):
    ref = run_tiny(tiny_config(tmp_path / "ref", prepared, steps=8), prepared)
    cfg = tiny_config(tmp_path / "p", prepared, steps=8)
    with pytest.raises(Preempted) as exc:
        run_tiny(cfg, prepared, task=_SignalAt(_task(cfg, prepared), 4, sig))
    assert exc.value.signum == sig and "step 4" in str(exc.value)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "p")] == ["step_000004"]
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)  # handlers restored
    res = run_tiny(tiny_config(tmp_path / "p", prepared, steps=8, resume="auto"), prepared)
    a, b = ckpt.load_state_dict(ref.checkpoint), ckpt.load_state_dict(res.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "p/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 9))


def test_preemption_can_be_turned_off(tmp_path, prepared):
    cfg = tiny_config(tmp_path / "off", prepared, steps=3, preempt_signals=[])
    old = signal.signal(signal.SIGUSR2, lambda *a: None)
    try:
        assert run_tiny(cfg, prepared).step == 3
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_the_cli_exits_128_plus_the_signal_after_a_preemption(monkeypatch, capsys):
    from slm.cli import app

    def preempted(args):
        raise Preempted("stopped by SIGTERM at step 3; checkpoint x saved", signal.SIGTERM)

    monkeypatch.setattr(app.run, "cmd_report", preempted)
    assert app.main(["report", "x"]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SIGTERM" in err and "Traceback" not in err


def test_load_cost_of_hashing_is_paid_once_per_file(tmp_path, monkeypatch):
    from slm.config import RunConfig
    from slm.models import build_model, preset_config

    model = build_model(preset_config("test"))
    path = ckpt.save_checkpoint(tmp_path / "c", model=model, config=RunConfig(model=model.cfg))
    calls = []
    real = ckpt._sha256
    monkeypatch.setattr(ckpt, "_sha256", lambda p: calls.append(p) or real(p))
    ckpt._VERIFIED.clear()
    ckpt.load_model(path)
    ckpt.load_model(path)
    assert len(calls) == len(json.loads((path / "meta.json").read_text())["files"])
    shutil.rmtree(path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(12))
def test_random_injections_end_healthy(tmp_path, prepared, monkeypatch, seed):
    """One random fault per run — NaN losses, a x50 loss spike, an inf lr or a 1e4 x lr, at a random step and for a
    random number of steps — and the run still ends with finite weights and a loss close to the clean run's (no lr cut
    here: halving the lr of a 24-step run would move its last loss by itself)."""
    import random

    rng = random.Random(seed)
    kind = ["nan", "spike", "inf_lr", "huge_lr"][seed % 4]
    at, length = rng.randint(6, 16), rng.randint(1, 6)
    clean = train_losses(run_tiny(tiny_config(tmp_path / "clean", prepared, steps=24), prepared))[24]
    cfg = tiny_config(tmp_path / "f", prepared, steps=24, checkpoint_every=4, spike_min_steps=4, rollback_after=3,
                      check_finite_every=1, rollback_lr_factor=1.0)
    task = _task(cfg, prepared)
    if kind in ("nan", "spike"):
        task = _Poison(task, set(range(at, at + length)), float("nan") if kind == "nan" else 50.0)
    else:
        real, fired = trainer_mod.lr_multiplier, []

        def faulty(step, total, **kw):
            if at <= step < at + length and len(fired) < length:
                fired.append(step)
                return float("inf") if kind == "inf_lr" else 1e4
            return real(step, total, **kw)

        monkeypatch.setattr(trainer_mod, "lr_multiplier", faulty)
    res = run_tiny(cfg, prepared, task=task)
    final = train_losses(res)[24]
    print(f"\ninjection {kind} at {at} x{length}: skipped {res.skipped_steps}, spiked {res.extras['spiked_steps']}, "
          f"rollbacks {res.extras['rollbacks']}, final loss {final:.3f} vs clean {clean:.3f}")
    assert res.step == 24 and _finite(res.checkpoint)
    assert abs(final - clean) < 0.5
