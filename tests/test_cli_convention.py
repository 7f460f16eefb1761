"""One CLI convention (inputs positional, checkpoints --checkpoint, outputs --out): the new forms work, and every old
form still works for one release while printing exactly one deprecation line naming its replacement."""

from __future__ import annotations

from pathlib import Path

import pytest

from slm.checkpoint import save_checkpoint
from slm.cli import build_parser, main
from slm.config import RunConfig
from slm.models import build_model, preset_config
from slm.tokenizer import byte_tokenizer


@pytest.fixture
def ckpt(tmp_path) -> Path:
    model = build_model(preset_config("test", vocab_size=320))
    return save_checkpoint(tmp_path / "run" / "checkpoints" / "step_1", model=model, config=RunConfig(model=model.cfg),
                           tokenizer=byte_tokenizer())


def _deprecations(err: str) -> list[str]:
    return [line for line in err.splitlines() if "is deprecated; use" in line]


def test_top_level_help_documents_the_convention(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "convention" in out and "--out PATH" in out and "--checkpoint" in out and "--verbose" in out


def test_export_and_import_hf_new_and_old_forms(ckpt, tmp_path, capsys):
    assert main(["export", "hf", "--checkpoint", str(ckpt), "--out", str(tmp_path / "new")]) == 0
    assert not _deprecations(capsys.readouterr().err) and (tmp_path / "new" / "config.json").is_file()
    assert main(["export", "hf", str(tmp_path / "old"), "--checkpoint", str(ckpt)]) == 0
    err = capsys.readouterr().err
    assert _deprecations(err) == ["slm: `slm export hf OUT --checkpoint CKPT` is deprecated; use "
                                  "`slm export hf --checkpoint CKPT --out OUT`"]
    assert (tmp_path / "old" / "config.json").is_file()

    assert main(["import", "hf", str(tmp_path / "new"), "--out", str(tmp_path / "ck-new")]) == 0
    assert not _deprecations(capsys.readouterr().err) and (tmp_path / "ck-new" / "meta.json").is_file()
    assert main(["import", "hf", str(tmp_path / "new"), str(tmp_path / "ck-old")]) == 0
    assert _deprecations(capsys.readouterr().err) == ["slm: `slm import hf SRC OUT` is deprecated; use "
                                                      "`slm import hf SRC --out OUT`"]
    assert (tmp_path / "ck-old" / "meta.json").is_file()


def test_output_missing_or_given_twice_is_one_line(ckpt, tmp_path, capsys):
    for args, needle in ((["export", "hf", "--checkpoint", str(ckpt)], "--out PATH is required"),
                         (["import", "hf", str(tmp_path)], "--out PATH is required"),
                         (["export", "hf", "a", "--checkpoint", str(ckpt), "--out", "b"], "given twice")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("fmt,out,shown", [("gguf", "m.gguf", "OUT.gguf"), ("onnx", "m-onnx", "OUT"),
                                           ("coreml", "m.mlpackage", "OUT.mlpackage")])
def test_export_formats_old_form_is_an_alias(fmt, out, shown, ckpt, tmp_path, monkeypatch, capsys):
    import importlib

    calls = []
    target = tmp_path / out
    target.write_bytes(b"x")  # the exporter is replaced; the CLI prints the output's size

    def fake_export(checkpoint, path, **kw):
        calls.append((Path(checkpoint), str(path)))
        return Path(path)

    monkeypatch.setattr(importlib.import_module(f"slm.export.{fmt}"), f"export_{fmt}", fake_export)
    assert main(["export", fmt, "--checkpoint", str(ckpt), "--out", str(target)]) == 0
    assert not _deprecations(capsys.readouterr().err)
    assert main(["export", fmt, str(target), "--checkpoint", str(ckpt)]) == 0
    assert _deprecations(capsys.readouterr().err) == [f"slm: `slm export {fmt} {shown} --checkpoint CKPT` is "
                                                      f"deprecated; use `slm export {fmt} --checkpoint CKPT --out "
                                                      f"{shown}`"]
    assert calls == [(ckpt, str(target))] * 2


def test_push_and_upload_old_forms_are_aliases(ckpt, tmp_path, monkeypatch, capsys):
    import slm.data.upload
    import slm.export.hub

    pushed, uploaded = [], []
    monkeypatch.setattr(slm.export.hub, "push", lambda repo, **kw: pushed.append((repo, kw["checkpoint"],
                                                                                  kw["export"])) or "url")
    monkeypatch.setattr(slm.data.upload, "upload_dataset", lambda folder, target, **kw: uploaded.append(
        (folder, target)) or target)
    new = (["push", "--checkpoint", str(ckpt), "--out", "me/a"], ["push", "m.gguf", "--out", "me/b"],
           ["data", "upload", "ds", "--out", "me/c"])
    old = (["push", "me/a", "--checkpoint", str(ckpt)], ["push", "me/b", "--export", "m.gguf"],
           ["data", "upload", "ds", "me/c"])
    for args in new:
        assert main(args) == 0
        assert not _deprecations(capsys.readouterr().err)
    for args, use in zip(old, (f"slm push --checkpoint {ckpt} --out me/a", "slm push m.gguf --out me/b",
                               "slm data upload FOLDER --out TARGET")):
        assert main(args) == 0
        lines = _deprecations(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].endswith(f"use `{use}`"), lines
    assert pushed == [("me/a", str(ckpt), None), ("me/b", None, "m.gguf")] * 2
    assert uploaded == [("ds", "me/c")] * 2


def test_generate_output_file_is_an_alias_of_out(ckpt, tmp_path, capsys):
    base = ["generate", "--checkpoint", str(ckpt), "--prompt", "a", "--prompt", "b", "--max-new-tokens=2"]
    assert main([*base, "--out", str(tmp_path / "new.jsonl")]) == 0
    assert not _deprecations(capsys.readouterr().err)
    assert main([*base, "--output-file", str(tmp_path / "old.jsonl")]) == 0
    assert _deprecations(capsys.readouterr().err) == ["slm: `slm generate --output-file FILE` is deprecated; use "
                                                      "`slm generate --out FILE`"]
    for name in ("new.jsonl", "old.jsonl"):
        assert len((tmp_path / name).read_text().splitlines()) == 2


def test_recipe_commands_take_out_as_the_run_dir(tmp_path):
    import argparse

    from slm.cli.recipe import recipe_and_overrides
    from slm.errors import SlmError

    args = argparse.Namespace(recipe="r.yaml", overrides=["--train.steps=2"], out="123", out_key="run.out_dir")
    assert recipe_and_overrides(args) == ("r.yaml", ["--train.steps=2", '--run.out_dir="123"'])
    from slm.config import load_run_config

    assert load_run_config(None, recipe_and_overrides(args)[1]).run.out_dir == "123"  # a string, not a number
    args.overrides = ["--run.out_dir=x"]
    with pytest.raises(SlmError, match="same setting twice"):
        recipe_and_overrides(args)
    for cmd in (["run"], ["train"], ["sft"], ["dpo"], ["grpo"], ["distill", "kd"], ["distill", "generate"],
                ["tokenizer", "train"], ["data", "prepare"]):
        parsed, _ = build_parser().parse_known_args([*cmd, "r.yaml", "--out", "o"])
        assert parsed.out == "o", cmd


def test_verbose_before_or_after_the_command_turns_third_party_logs_on(monkeypatch, capsys):
    import os

    for argv in (["--verbose", "report", "/no/such/run"], ["report", "/no/such/run", "--verbose"]):
        monkeypatch.delenv("SLM_VERBOSE", raising=False)
        main(argv)  # the report fails (no run dir); the flag is read before that
        assert os.environ.get("SLM_VERBOSE") == "1", argv
    monkeypatch.delenv("SLM_VERBOSE", raising=False)
    main(["report", "/no/such/run"])
    assert "SLM_VERBOSE" not in os.environ


def _leaf_parsers(parser, prefix=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for sub in subs:
        for name, child in sub.choices.items():
            yield from _leaf_parsers(child, (*prefix, name))


def test_no_command_documents_an_output_other_than_out():
    """Walks every command: no visible positional output and no --output-* flag; an output flag is --out."""
    import argparse

    leaves = dict(_leaf_parsers(build_parser()))
    assert ("export", "hf") in leaves and ("push",) in leaves
    for name, p in leaves.items():
        for action in p._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert not any(o.startswith("--output") for o in action.option_strings), (name, action.option_strings)
            assert action.option_strings or action.dest not in ("out", "target", "repo_id"), (name, action.dest)
    writers = [("export", f) for f in ("hf", "gguf", "onnx", "coreml")] + [("import", "hf"), ("push",),
                                                                          ("data", "upload"), ("data", "prepare"),
                                                                          ("tokenizer", "train"), ("run",), ("sft",)]
    for name in writers:
        assert any("--out" in a.option_strings for a in leaves[name]._actions), name
