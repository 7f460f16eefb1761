"""precision/compile "auto": the choice logic on fake timings, the cache, resume and the real step timer."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from slm.models import init_model
from slm.runtime import DistInfo, matmul_precision
from slm.train import calibrate as cal
from slm.train.calibrate import Candidate, Timing

from slm_testutil import run_tiny, tiny_config

CPU = DistInfo(device=torch.device("cpu"))


def fake_timer(step_s: dict[str, float], setup_s: dict[str, float] | None = None, calls: list | None = None):
    def time_candidate(c: Candidate) -> Timing:
        if calls is not None:
            calls.append(c.name)
        return Timing(step_s=step_s[c.name], setup_s=(setup_s or {}).get(c.name, 0.0))
    return time_candidate


def test_compile_time_counts_against_compiled_candidates():
    timings = {Candidate("bf16", False): Timing(0.30, 0.0), Candidate("bf16", True): Timing(0.20, 25.0)}
    assert cal.choose(timings, steps=100) == Candidate("bf16", False)  # 30 s < 25 + 20 s
    assert cal.choose(timings, steps=1000) == Candidate("bf16", True)  # 300 s > 25 + 200 s


def test_eager_precisions_are_timed_then_only_the_fastest_is_compiled():
    calls = []
    timer = fake_timer({"fp32": 0.6, "bf16": 0.3, "bf16-matmul": 0.4, "bf16+compile": 0.1}, calls=calls)
    choice, timings = cal.calibrate(timer, cal.PRECISIONS, (False, True), steps=800)
    assert calls == ["fp32", "bf16", "bf16-matmul", "bf16+compile"]
    assert choice == Candidate("bf16", True) and len(timings) == 4


def test_compiled_candidate_loses_when_it_is_slower_per_step():
    timer = fake_timer({"fp32": 0.6, "bf16": 0.3, "bf16-matmul": 0.4, "bf16+compile": 0.35})
    choice, _ = cal.calibrate(timer, cal.PRECISIONS, (False, True), steps=10_000)
    assert choice == Candidate("bf16", False)


def test_pinned_compile_times_only_precisions():
    calls = []
    timer = fake_timer({"fp32+compile": 0.2, "bf16+compile": 0.3, "bf16-matmul+compile": 0.25}, calls=calls)
    choice, _ = cal.calibrate(timer, cal.PRECISIONS, (True,), steps=10)
    assert choice == Candidate("fp32", True) and calls == ["fp32+compile", "bf16+compile", "bf16-matmul+compile"]


def _long_cfg(tmp_path, prepared, **kw):
    # 2000 x 16 x 64 = 2M tokens: long enough for `auto` to measure
    base = {"steps": 2000, "batch_size": 16, "seq_len": 64, "precision": "auto", "compile": "auto"}
    return tiny_config(tmp_path / "run", prepared, **{**base, **kw})


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cal.shutil, "which", lambda name: f"/usr/bin/{name}")  # a C++ compiler is there
    return tmp_path / "cache" / "calibration.json"


def test_measured_choice_is_cached_recorded_and_reused(tmp_path, prepared, cache, monkeypatch):
    calls = []
    speeds = {"fp32": 0.6, "bf16": 0.3, "bf16-matmul": 0.4, "bf16+compile": 0.1}
    monkeypatch.setattr(cal, "step_timer", lambda *a, **k: fake_timer(speeds, {"bf16+compile": 20.0}, calls))
    cfg = _long_cfg(tmp_path, prepared)
    out = cal.resolve_auto(cfg, CPU)
    assert (out.train.precision, out.train.compile) == ("bf16", "true")
    assert "measured" in out.train.calibration and "bf16+compile" in out.train.calibration
    assert len(calls) == 4 and json.loads(cache.read_text())
    again = cal.resolve_auto(cfg, CPU)  # same machine and shapes: no second measurement
    assert len(calls) == 4 and (again.train.precision, again.train.compile) == ("bf16", "true")
    assert "cached" in again.train.calibration
    other = cal.resolve_auto(_long_cfg(tmp_path, prepared, batch_size=8, steps=4000), CPU)  # another batch shape
    assert len(calls) == 8 and other.train.precision == "bf16"


def test_explicit_settings_win_and_narrow_the_candidates(tmp_path, prepared, cache, monkeypatch):
    calls = []
    speeds = {"fp32": 0.6, "fp32+compile": 0.1, "bf16": 0.3, "bf16-matmul": 0.4, "bf16+compile": 0.1}
    monkeypatch.setattr(cal, "step_timer", lambda *a, **k: fake_timer(speeds, calls=calls))
    out = cal.resolve_auto(_long_cfg(tmp_path, prepared, precision="fp32"), CPU)
    assert (out.train.precision, out.train.compile) == ("fp32", "true") and calls == ["fp32", "fp32+compile"]
    calls.clear()
    out = cal.resolve_auto(_long_cfg(tmp_path, prepared, compile="false"), CPU)
    assert (out.train.precision, out.train.compile) == ("bf16", "false") and "bf16+compile" not in calls
    fixed = _long_cfg(tmp_path, prepared, precision="fp32", compile="false")
    assert cal.resolve_auto(fixed, CPU) is fixed


def test_short_runs_skip_measuring(tmp_path, prepared, cache, monkeypatch):
    monkeypatch.setattr(cal, "step_timer", lambda *a, **k: pytest.fail("a short run must not be timed"))
    out = cal.resolve_auto(_long_cfg(tmp_path, prepared, steps=10), CPU)
    assert (out.train.precision, out.train.compile) == (cal.short_run_precision(), "false")
    assert "short run" in out.train.calibration
    monkeypatch.setattr(cal, "cpu_features", lambda: {"amx": True})
    assert cal.resolve_auto(_long_cfg(tmp_path, prepared, steps=10), CPU).train.precision == "bf16"


def test_a_resumed_run_keeps_the_choice_its_checkpoint_recorded(tmp_path, prepared, cache, monkeypatch):
    monkeypatch.setattr(cal, "step_timer", lambda *a, **k: pytest.fail("a resumed run must not re-measure"))
    cfg = _long_cfg(tmp_path, prepared)
    saved = dataclasses.replace(cfg.train, precision="bf16-matmul", compile="false", calibration="measured: x")
    out = cal.resolve_auto(cfg, CPU, saved=saved)
    assert (out.train.precision, out.train.compile, out.train.calibration) == ("bf16-matmul", "false", "measured: x")


def test_cuda_keeps_its_rules(tmp_path, prepared, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(cal.importlib.util, "find_spec", lambda name: object())
    out = cal.resolve_auto(_long_cfg(tmp_path, prepared), DistInfo(device=torch.device("cuda")))
    assert (out.train.precision, out.train.compile) == ("fp16", "true")


@pytest.mark.parametrize("precision", cal.PRECISIONS)
def test_timing_a_candidate_leaves_weights_and_rng_as_they_were(tmp_path, prepared, precision):
    cfg = _long_cfg(tmp_path, prepared)
    model = init_model(cfg.model, "cpu", 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    timing = cal.step_timer(model, cfg.train, 2, 16, torch.device("cpu"), timed=2)(Candidate(precision, False))
    assert timing.step_s > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"


def test_matmul_precision_sets_and_restores_the_onednn_setting():
    before = torch.backends.mkldnn.matmul.fp32_precision
    with matmul_precision("bf16-matmul", torch.device("cpu")):
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    with matmul_precision("bf16", torch.device("cpu")):
        assert torch.backends.mkldnn.matmul.fp32_precision == before


def test_trainer_records_the_choice_in_config_and_log(tmp_path, prepared, cache, monkeypatch):
    speeds = {"fp32": 0.6, "bf16": 0.3, "bf16-matmul": 0.2, "bf16-matmul+compile": 0.3}
    monkeypatch.setattr(cal, "step_timer", lambda *a, **k: fake_timer(speeds))
    cfg = _long_cfg(tmp_path, prepared)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, phases=[]))
    from slm.train.trainer import Trainer
    from slm.train.pretrain import PretrainTask
    from slm.data.loader import TokenDataset
    from slm.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    t = Trainer(cfg, PretrainTask(TokenDataset(str(prepared)), tok.token_byte_lengths(), cfg), tokenizer=tok,
                progress=False)
    assert (t.tc.precision, t.tc.compile) == ("bf16-matmul", "false")
    saved = (tmp_path / "run/config.yaml").read_text()
    assert "bf16-matmul" in saved and "measured" in saved
    t.logger.close()
    log = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "calibration" and r["precision"] == "bf16-matmul" for r in log)


def test_a_forced_bf16_matmul_run_trains(tmp_path, prepared):
    result = run_tiny(tiny_config(tmp_path / "mm", prepared, steps=4, precision="bf16-matmul"), prepared)
    assert result.step == 4


def test_cached_timings_decide_again_for_each_run_length(tmp_path, prepared, cache, monkeypatch):
    calls = []
    speeds = {"fp32": 0.6, "bf16": 0.3, "bf16-matmul": 0.4, "bf16+compile": 0.1}
    monkeypatch.setattr(cal, "step_timer", lambda *a, **k: fake_timer(speeds, {"bf16+compile": 1000.0}, calls))
    short = cal.resolve_auto(_long_cfg(tmp_path, prepared, steps=2000), CPU)  # saves 400 s < 1000 s of compiling
    long = cal.resolve_auto(_long_cfg(tmp_path, prepared, steps=20_000), CPU)  # saves 4000 s: compile
    assert (short.train.compile, long.train.compile) == ("false", "true") and len(calls) == 4
