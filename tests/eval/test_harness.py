"""The lm-eval adapter (slm.eval.harness) against lm-eval's own transformers backend (HFLM) on the same exported
model: log-likelihoods within 1e-4, identical accuracies; offline BIG-bench-format tasks; determinism; bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slm.checkpoint import save_checkpoint
from slm.config import RunConfig
from slm.errors import SlmError
from slm.models import build_model, preset_config
from slm.tokenizer import train_bpe

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

WORDS = "the king queen castle river stone light dark sword crown speaks walks sings under over".split()


def _task_json(n: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(n):
        q = " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (6,), generator=gen))
        choices = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(k),), generator=gen))
                   for k in torch.randint(1, 4, (3,), generator=gen)]
        examples.append({"input": q, "target_scores": {c + f" {j}": float(j == 1) for j, c in enumerate(choices)}})
    return {"name": "fake", "canary": "test data", "examples": examples}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny trained-tokenizer llama checkpoint, its HF export, and offline tasks built from fake BIG-bench files."""
    from slm.eval.offline_tasks import build_tasks
    from slm.export import export_hf

    root = tmp_path_factory.mktemp("harness")
    gen = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=gen)) for _ in range(200)]
    tok = train_bpe(iter(lines), vocab_size=300, min_frequency=1, show_progress=False)
    model = build_model(preset_config("test", vocab_size=320, init_std=0.3, max_seq_len=64))
    model.reset_parameters(seed=0)
    ckpt = save_checkpoint(root / "ckpt", model=model, config=RunConfig(model=model.cfg), tokenizer=tok)
    hf_dir = export_hf(ckpt, root / "hf")
    source = root / "bigbench"
    for sub, seed in (("harmless", 1), ("helpful", 2)):
        (source / "hhh_alignment" / sub).mkdir(parents=True)
        (source / "hhh_alignment" / sub / "task.json").write_text(json.dumps(_task_json(12, seed)))
    tasks = root / "tasks"
    names = build_tasks(tasks, source=source)
    return {"ckpt": ckpt, "hf": hf_dir, "tasks": tasks, "names": names, "model": model.eval(), "tok": tok}


def _lms(setup):
    from lm_eval.models.huggingface import HFLM

    from slm.eval.harness import make_lm

    ours = make_lm(setup["model"], setup["tok"], batch_size=3)
    theirs = HFLM(pretrained=str(setup["hf"]), device="cpu", batch_size=3, dtype="float32")
    return ours, theirs


def _instances(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_offline_task_files_are_lm_eval_tasks(setup):
    assert set(setup["names"]) == {"slm_bb_hhh_alignment_harmless", "slm_bb_hhh_alignment_helpful"}
    assert (setup["tasks"] / "slm_bb_hhh_alignment.yaml").is_file()  # the group of the subtasks


def test_loglikelihoods_equal_lm_evals_own_transformers_backend(setup):
    ours, theirs = _lms(setup)
    pairs = [("the king", " speaks under the stone"), ("queen castle ", "river"), ("", "light dark sword"),
             ("sword " * 40, "crown walks")]  # the last one is longer than the context: cut from the left
    a = ours.loglikelihood(_instances("loglikelihood", pairs))
    b = theirs.loglikelihood(_instances("loglikelihood", pairs))
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert la == pytest.approx(lb, abs=1e-4) and ga == gb
    texts = [("the king speaks under the stone " * 8,), ("light",)]
    ra = ours.loglikelihood_rolling(_instances("loglikelihood_rolling", texts))
    rb = theirs.loglikelihood_rolling(_instances("loglikelihood_rolling", texts))
    assert ra == pytest.approx(rb, abs=1e-4)


def test_task_accuracies_equal_hflm_and_runs_are_deterministic(setup):
    from lm_eval.tasks import TaskManager

    ours, theirs = _lms(setup)
    manager = TaskManager(include_path=str(setup["tasks"]))

    def run(lm):
        return lm_eval.simple_evaluate(model=lm, tasks=["slm_bb_hhh_alignment"], task_manager=manager,
                                       log_samples=False, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                       torch_random_seed=0, fewshot_random_seed=0, num_fewshot=1)["results"]

    a, b, again = run(ours), run(theirs), run(ours)
    for task in setup["names"]:
        for metric in ("acc,none", "acc_norm,none"):
            assert a[task][metric] == b[task][metric] == again[task][metric]


def test_generate_until_stops_at_the_stop_string(setup):
    ours, _ = _lms(setup)
    out = ours.generate_until(_instances("generate_until", [("the king", {"until": ["e"], "max_gen_toks": 20}),
                                                            ("queen", {"until": [], "max_gen_toks": 5})]))
    assert "e" not in out[0] and isinstance(out[1], str)


def test_run_tasks_saves_results_beside_the_run_and_reports_the_random_baseline(setup):
    from slm.eval.harness import format_results, results_path, run_tasks

    res = run_tasks(setup["ckpt"], ["slm_bb_hhh_alignment_harmless"], limit=4, device="cpu",
                    include_path=setup["tasks"])
    assert res["slm_random_baseline"]["slm_bb_hhh_alignment_harmless"] == pytest.approx(1 / 3)
    assert "| slm_bb_hhh_alignment_harmless | acc |" in format_results(res)
    saved = results_path(setup["ckpt"], res)
    assert json.loads(saved.read_text())["results"]["slm_bb_hhh_alignment_harmless"]["sample_len"] == 4


def test_unknown_task_and_bad_limit_are_one_line_errors(setup, tmp_path):
    from slm.eval.harness import run_tasks

    with pytest.raises(SlmError, match="unknown task"):
        run_tasks(setup["ckpt"], ["no_such_task"], include_path=setup["tasks"], device="cpu")
    proc = subprocess.run([sys.executable, "-m", "slm.cli", "eval", "--checkpoint", str(setup["ckpt"]), "--tasks",
                           "slm_bb_hhh_alignment", "--limit", "0"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--limit=0" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow  # fetches the 358 MB BIG-bench sdist once into the cache (SLM_CACHE)
def test_the_real_offline_bigbench_tasks_build_and_run(setup):
    from slm.eval.harness import run_tasks
    from slm.eval.offline_tasks import list_tasks

    names = list_tasks()
    assert {"slm_bb_hhh_alignment", "slm_bb_logical_deduction", "slm_bb_arithmetic_gen"} <= set(names)
    res = run_tasks(setup["ckpt"], ["slm_bb_hhh_alignment", "slm_bb_arithmetic_1_digit_addition_gen"], limit=3,
                    device="cpu")
    assert res["results"]["slm_bb_hhh_alignment_harmless"]["sample_len"] == 3
    assert "exact_match,strip" in res["results"]["slm_bb_arithmetic_1_digit_addition_gen"]
