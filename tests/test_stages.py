"""Pipeline stages: a re-run reuses the tokenizer and data made from the same settings, and redoes them otherwise."""

from __future__ import annotations

from slm.config import load_run_config
from slm.stages import run_pipeline


def _cfg(run_dir, corpus, *extra):
    return load_run_config(None, [f"--data.inputs=[{corpus}]", f"--run.out_dir={run_dir}", "--model.preset=test",
                                  "--model.vocab_size=0", "--tokenizer.kind=bpe", "--tokenizer.vocab_size=300",
                                  "--train.steps=2", "--train.batch_size=2", "--train.seq_len=16",
                                  "--train.precision=fp32", "--train.tensorboard=false", "--data.num_workers=1",
                                  "--eval.max_batches=1", "--sample.max_new_tokens=4", "--export.hf=false",
                                  "--train.eval_batches=1", "--run.overwrite=true", *extra])


def test_rerun_reuses_stages_with_same_settings(tmp_path, corpus_dir):
    run_dir = tmp_path / "run"
    summary = run_pipeline(_cfg(run_dir, corpus_dir), progress=False)
    assert summary["steps"] == 2 and (run_dir / "report.md").is_file()
    tok_mtime = (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns
    data_mtime = (run_dir / "data" / "manifest.json").stat().st_mtime_ns
    run_pipeline(_cfg(run_dir, corpus_dir), progress=False)
    assert (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns == tok_mtime
    assert (run_dir / "data" / "manifest.json").stat().st_mtime_ns == data_mtime
    # a different tokenizer setting rebuilds the tokenizer and therefore the data
    run_pipeline(_cfg(run_dir, corpus_dir, "--tokenizer.vocab_size=320"), progress=False)
    assert (run_dir / "tokenizer" / "tokenizer.json").stat().st_mtime_ns != tok_mtime
    assert (run_dir / "data" / "manifest.json").stat().st_mtime_ns != data_mtime


def test_refused_run_leaves_the_run_dir_untouched(tmp_path, corpus_dir, capsys):
    """A run refused because the dir holds an earlier run's checkpoints exits 2 with one line, and config.yaml (and
    every other file) is byte-identical afterwards."""
    from slm.cli import main

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "step_000004").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000004" / "meta.json").write_text("{}")
    (run_dir / "config.yaml").write_text("run:\n  name: the-earlier-run\n")
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    rc = main(["run", f"--data.inputs=[{corpus_dir}]", f"--run.out_dir={run_dir}", "--model.preset=test",
               "--tokenizer.kind=byte", "--model.vocab_size=0", "--train.steps=2", "--train.seq_len=32", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--run.overwrite=true" in err and str(run_dir) in err, err
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
