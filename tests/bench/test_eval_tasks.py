"""bench/eval_tasks.py builds the README's offline-task table from lm-eval's result dicts: a group's random-guess
baseline is weighted like its accuracy, every model gets a column, and only the marked README block changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "eval_tasks.py"


def _module():
    spec = importlib.util.spec_from_file_location("eval_tasks", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RESULTS = {  # the shape of lm-eval's simple_evaluate output plus slm's baselines (slm.eval.harness.run_tasks)
    "results": {
        "grp": {"sample_len": 30, "acc,none": 0.4, "acc_stderr,none": "N/A"},
        "grp_a": {"sample_len": 10, "acc,none": 0.5, "acc_norm,none": 0.6},
        "grp_b": {"sample_len": 20, "acc,none": 0.35, "acc_norm,none": 0.3},
        "gen": {"sample_len": 5, "exact_match,strip": 0.2, "exact_match_stderr,strip": "N/A"},
    },
    "group_subtasks": {"grp": ["grp_a", "grp_b"], "gen": []},
    "slm_random_baseline": {"grp_a": 0.5, "grp_b": 0.2},
}


def test_group_baseline_is_weighted_by_examples_scored():
    scores = _module().task_scores(RESULTS, ["grp", "gen"])
    assert scores["grp"]["metrics"] == {"acc": 0.4}
    assert abs(scores["grp"]["baseline"] - (10 * 0.5 + 20 * 0.2) / 30) < 1e-12
    assert scores["gen"] == {"metrics": {"exact_match": 0.2}, "n": 5, "baseline": None}


def test_table_has_a_column_per_model_and_fills_only_the_marked_block(tmp_path):
    mod = _module()
    scores = mod.task_scores(RESULTS, ["grp", "gen"])
    record = {"command": "python bench/eval_tasks.py --limit 10", "date": "2026-12-01 19:00 UTC", "limit": 10,
              "tasks": ["grp", "gen"], "seconds": 12.0, "machine": "cpu",
              "models": {"quickstart": {"step": 800, "scores": scores}, "dpo": {"step": None, "scores": scores}}}
    body = mod.render(record)
    assert "| task | metric | examples | quickstart (step 800) | dpo | random guess |" in body
    assert "| `grp` | acc | 30 | 0.400 | 0.400 | 0.300 |" in body
    assert "| `gen` | exact_match | 5 | 0.200 | 0.200 | - |" in body
    assert "`python bench/eval_tasks.py --limit 10` — 2026-12-01 19:00 UTC" in body and "--limit 10" in body
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- eval-tasks:start -->\nold\n<!-- eval-tasks:end -->\nrest\n")
    assert mod.fill_readme(body, readme)
    assert readme.read_text() == f"intro\n<!-- eval-tasks:start -->\n{body}\n<!-- eval-tasks:end -->\nrest\n"
    readme.write_text("no markers\n")
    assert not mod.fill_readme(body, readme) and readme.read_text() == "no markers\n"


def test_checkpoint_specs_take_an_optional_label():
    mod = _module()
    assert mod.parse_checkpoint("dpo=runs/posttrain-demo-dpo") == ("dpo", "runs/posttrain-demo-dpo")
    assert mod.parse_checkpoint("runs/quickstart") == ("quickstart", "runs/quickstart")
