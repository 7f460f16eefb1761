"""CLI: every subcommand's --help, bad inputs exit 2 with one line and no traceback, a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slm.cli import build_parser, main

SUBCOMMANDS = [["run"], ["train"], ["tokenizer", "train"], ["data", "prepare"], ["data", "stats"], ["eval"],
               ["generate"], ["export", "hf"], ["import", "hf"], ["report"]]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: slm" in capsys.readouterr().out


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("run", "train", "tokenizer", "data", "eval", "generate", "export", "import"):
        assert name in out


def _slm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "slm.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def _assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("slm: error")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


TINY = ["--model.preset=test", "--model.vocab_size=0", "--tokenizer.kind=byte", "--train.steps=6",
        "--train.batch_size=4", "--train.seq_len=32", "--train.eval_every=3", "--train.eval_batches=2",
        "--train.precision=fp32", "--train.tensorboard=false", "--train.num_threads=1", "--data.num_workers=1",
        "--sample.max_new_tokens=8", "--eval.max_batches=2", "--eval.batch_size=4"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, corpus_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    proc = _slm("run", "--quiet", f"--data.inputs=[{corpus_dir}]", f"--run.out_dir={run_dir}", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val bpb" in proc.stdout
    return run_dir


def test_run_writes_everything(tiny_run):
    for rel in ("config.yaml", "metrics.jsonl", "metrics_train.csv", "report.md", "plots/loss.png", "summary.json",
                "hf/config.json", "hf/model.safetensors", "hf/tokenizer.json", "tokenizer/tokenizer.json",
                "data/manifest.json"):
        assert (tiny_run / rel).is_file(), rel
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["val"]["bpb"] > 0
    assert "## Samples" in (tiny_run / "report.md").read_text()


def test_eval_generate_export_on_the_run(tiny_run, tmp_path):
    proc = _slm("eval", "--compare", str(tiny_run), str(tiny_run / "checkpoints" / "step_000006"), "--max-batches=2",
                "--seq-len=32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("step_000006") >= 1 and "bpb" in proc.stdout
    text = tmp_path / "t.txt"
    text.write_text("The king and the queen rode to the castle. " * 20)
    proc = _slm("eval", "--checkpoint", str(tiny_run), "--data", str(text), "--seq-len=32")
    assert proc.returncode == 0, proc.stderr
    prompts = tmp_path / "p.txt"
    prompts.write_text("The king\nA sword\n")
    out = tmp_path / "o.jsonl"
    proc = _slm("generate", "--checkpoint", str(tiny_run), "--prompt-file", str(prompts), "--out", str(out),
                "--max-new-tokens=5", "--num-samples=2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["prompt"] == "The king"
    proc = _slm("generate", "--checkpoint", str(tiny_run), "--prompt", "The", "--max-new-tokens=5", "--seed=3")
    assert proc.returncode == 0 and proc.stdout.startswith("The")
    proc = _slm("export", "hf", "--checkpoint", str(tiny_run), "--out", str(tmp_path / "hf"))
    assert proc.returncode == 0 and (tmp_path / "hf" / "config.json").is_file()
    proc = _slm("import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ck"))
    assert proc.returncode == 0 and (tmp_path / "ck" / "meta.json").is_file()
    proc = _slm("data", "stats", str(tiny_run / "data"))
    assert proc.returncode == 0 and "bytes/token" in proc.stdout


def test_bad_inputs_exit_2_with_one_line(tmp_path, tiny_run, corpus_dir):
    _assert_clean_error(_slm("run", "--data.inputs=[/no/such/corpus]", *TINY, f"--run.out_dir={tmp_path / 'a'}"),
                        "/no/such/corpus")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    _assert_clean_error(_slm("run", f"--data.inputs=[{empty}]", *TINY, f"--run.out_dir={tmp_path / 'b'}"))
    _assert_clean_error(_slm("run", "--train.lrr=1"), "train.lrr")
    _assert_clean_error(_slm("run", "--train.steps=many"), "train.steps")
    _assert_clean_error(_slm("run", str(tmp_path / "missing.yaml")), "missing.yaml")
    # model vocab smaller than the tokenizer's
    _assert_clean_error(_slm("run", f"--data.inputs=[{corpus_dir}]", *TINY, "--model.vocab_size=64",
                             f"--run.out_dir={tmp_path / 'c'}"), "vocab")
    # resuming with a different model config
    resume_dir = tmp_path / "resume"
    import shutil

    shutil.copytree(tiny_run, resume_dir)
    _assert_clean_error(_slm("train", f"--data.inputs=[{corpus_dir}]", *TINY, "--model.n_layers=3",
                             "--train.resume=auto", f"--run.out_dir={resume_dir}"), "model.n_layers")
    # truncated checkpoint
    ck = resume_dir / "checkpoints" / "step_000006"
    w = ck / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    _assert_clean_error(_slm("generate", "--checkpoint", str(ck), "--prompt", "x"), "truncated")
    _assert_clean_error(_slm("eval", "--checkpoint", str(tmp_path / "nope")), "nope")


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"{i}.txt").write_bytes(("hello world number %d " % i).encode() * 30 + b"\xff\xfe bad bytes")
    proc = _slm("run", f"--data.inputs=[{corpus}]", *TINY, f"--run.out_dir={tmp_path / 'r'}",
                "--export.hf=false", "--quiet", "--data.dedup=false")  # the 6 texts are near-duplicates
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((tmp_path / "r" / "data" / "manifest.json").read_text())
    assert manifest["doc_stats"]["replaced_docs"] == 6
    proc = _slm("run", f"--data.inputs=[{corpus}]", *TINY, f"--run.out_dir={tmp_path / 's'}",
                "--data.on_decode_error=skip", "--quiet")
    _assert_clean_error(proc)  # every document skipped -> empty corpus, a clear error


def test_parser_builds_without_heavy_imports():
    assert build_parser().prog == "slm"


def test_fine_tune_from_a_checkpoint_adopts_its_model_and_tokenizer(tiny_run, tmp_path, corpus_dir):
    proc = _slm("train", f"--data.inputs=[{corpus_dir}]", *TINY, "--model.preset=tiny", "--tokenizer.kind=bpe",
                f"--train.init_from={tiny_run}", "--train.steps=2", f"--run.out_dir={tmp_path / 'ft'}", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import yaml

    cfg = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    base = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["model"] == base["model"] and cfg["tokenizer"]["kind"] == "pretrained"


@pytest.mark.slow  # compiles the decode step (~30 s)
def test_generate_compile_flag_gives_the_same_greedy_text(tiny_run):
    args = ("generate", "--checkpoint", str(tiny_run), "--prompt", "The king", "--max-new-tokens=12",
            "--temperature=0", "--dtype=fp32")
    eager, compiled = _slm(*args, "--compile=false"), _slm(*args, "--compile")
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-2000:]
    assert compiled.stdout == eager.stdout and eager.stdout.startswith("The king")
