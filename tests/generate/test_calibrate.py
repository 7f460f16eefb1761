"""Decode dtype/compile "auto" (slm.generate.calibrate): the choice on fake timings, the cache, and a real timing."""

from __future__ import annotations

import pytest
import torch

from slm.config import SamplingConfig
from slm.generate import calibrate as cal
from slm.generate.engine import generate
from slm.models import build_model, preset_config


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_model(preset_config("test", vocab_size=320))
    m.reset_parameters(seed=0)
    return m


@pytest.fixture
def table():
    """(dtype, compile mode) -> (step_s, setup_s) of the fake timings."""
    return {("fp32", False): (0.010, 0.0), ("bf16", False): (0.006, 0.0), ("bf16", True): (0.002, 30.0),
            ("fp32", True): (0.004, 30.0), ("bf16", "autotune"): (0.003, 90.0), ("fp32", "autotune"): (0.003, 90.0)}


@pytest.fixture
def fake(monkeypatch, tmp_path, table):
    """time_decode replaced by `table`; records the calls. The machine is quiet (load 0) unless a test says
    otherwise."""
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cal, "_load", lambda: 0.0)
    calls = []

    def time_decode(m, compile, batch, **kw):
        dtype = "bf16" if next(m.parameters()).dtype == torch.bfloat16 else "fp32"
        calls.append((dtype, compile))
        return table[(dtype, compile)]

    monkeypatch.setattr(cal, "time_decode", time_decode)
    return calls


def test_auto_picks_the_faster_dtype_and_casts_a_copy(model, fake):
    chosen, choice = cal.choose_decode(model, compile="false")
    assert choice.dtype == "bf16" and not choice.compile and fake == [("fp32", False), ("bf16", False)]
    assert next(chosen.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32


def test_compile_is_timed_only_for_long_work_and_chosen_only_when_it_pays(model, fake):
    _, short = cal.choose_decode(model, expected_tokens=100)
    assert not short.compile and ("bf16", True) not in fake  # 100 tokens: not worth a compile to find out
    _, long = cal.choose_decode(model, expected_tokens=1_000_000)
    # both compiled modes timed once; 30 s + 1M x 2 ms beats eager (1M x 6 ms) and autotune (90 s + 1M x 3 ms)
    assert long.compile is True and fake.count(("bf16", True)) == fake.count(("bf16", "autotune")) == 1
    _, again = cal.choose_decode(model, expected_tokens=100)  # cached now: compiling 100 tokens still does not pay
    assert not again.compile and len(fake) == 4


def test_the_faster_compiled_mode_wins(model, fake, table):
    table[("bf16", "autotune")] = (0.001, 90.0)
    _, long = cal.choose_decode(model, expected_tokens=1_000_000)
    assert long.compile == "autotune"  # 90 s + 1M x 1 ms < 30 s + 1M x 2 ms
    _, forced = cal.choose_decode(model, compile="true")  # both cached: the faster mode
    assert forced.compile == "autotune" and len(fake) == 4


def test_a_measurement_from_a_busy_machine_is_taken_again_when_quieter(model, fake, monkeypatch):
    monkeypatch.setattr(cal, "_load", lambda: 8.0)  # other processes compete for the cores
    cal.choose_decode(model, compile="false")
    cal.choose_decode(model, compile="false")  # still busy: the cached entry stands
    assert fake == [("fp32", False), ("bf16", False)]
    monkeypatch.setattr(cal, "_load", lambda: 0.0)
    _, quiet = cal.choose_decode(model, compile="false")
    assert "measured" in quiet.summary and len(fake) == 4
    _, cached = cal.choose_decode(model, compile="false")  # the quiet measurement stays
    assert "cached" in cached.summary and len(fake) == 4


def test_explicit_settings_are_not_timed(model, fake):
    chosen, choice = cal.choose_decode(model, dtype="fp32", compile="false")
    assert chosen is model and (choice.dtype, choice.compile) == ("fp32", False) and fake == []
    _, forced = cal.choose_decode(model, dtype="fp32", compile="true")
    assert forced.compile is True and fake == [("fp32", False)]  # nothing compiled was timed: the plain mode
    _, autotune = cal.choose_decode(model, dtype="fp32", compile="autotune")
    assert autotune.compile == "autotune" and fake == [("fp32", False)]


@pytest.mark.parametrize("bad", [{"dtype": "fp16"}, {"compile": "yes"}])
def test_bad_choices_are_one_line_errors(model, bad):
    from slm.errors import SlmError

    with pytest.raises(SlmError, match="choose"):
        cal.choose_decode(model, **bad)


def test_real_timing_and_the_chosen_model_generates(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    step_s, setup_s = cal.time_decode(model, False, batch=2, steps=3)
    assert step_s > 0 and setup_s >= 0
    chosen, choice = cal.choose_decode(model, compile="false", batch=2)
    assert "measured" in choice.summary and (tmp_path / "cache" / cal.CACHE_FILE).is_file()
    out = generate(chosen, [[1, 2, 3], [4, 5]], SamplingConfig(temperature=0.0, max_new_tokens=5), eos_id=None)
    assert [len(o) for o in out] == [5, 5]
