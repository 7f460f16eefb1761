"""`slm sft|dpo|distill|grpo|chat`: --help works, bad input exits 2 with one line, a scripted chat streams replies."""

import argparse

import pytest

import slm.cli
from slm.generate import SamplingConfig, generate
from slm.cli.chat import fit_history, run_chat
from slm.cli.posttrain import register
from slm.tokenizer.chat_template import ChatFormatter

from _posttrain_helpers import CHATS, tiny_model, write_jsonl

COMMANDS = [["sft"], ["dpo"], ["grpo"], ["distill", "generate"], ["distill", "kd"], ["chat"]]


@pytest.fixture
def slm_main(monkeypatch):
    """slm.cli.main with the post-training subcommands registered (the lead adds the same one line to cli.py)."""
    build = slm.cli.build_parser

    def build_with_posttrain() -> argparse.ArgumentParser:
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if "sft" not in sub.choices:
            register(sub)
        return parser

    monkeypatch.setattr(slm.cli, "build_parser", build_with_posttrain)
    return slm.cli.main


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_works(slm_main, cmd, capsys):
    with pytest.raises(SystemExit) as exit_:
        slm_main([*cmd, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--posttrain.init_from" in out and "--train.lr" in out


@pytest.mark.parametrize("argv, phrase", [
    (["sft", "missing.yaml"], "recipe/config file not found"),
    (["sft", "{recipe}", "--posttrain.bogus=1"], "unknown config key 'posttrain.bogus'"),
    (["sft", "{recipe}"], "--posttrain.init_from"),
    (["dpo", "{recipe}", "--posttrain.init_from=/nope"], "neither a checkpoint"),
    (["distill", "generate", "{recipe}"], "--posttrain.generate.teacher"),
    (["chat"], "--checkpoint"),
])
def test_bad_input_exits_2_with_one_line(slm_main, tmp_path, capsys, argv, phrase):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("run:\n  name: x\n")
    code = slm_main([a.replace("{recipe}", str(recipe)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and err.count("\n") == 1


def test_sft_command_runs_a_recipe(slm_main, tmp_path, start_ckpt, capsys):
    data = write_jsonl(tmp_path / "c.jsonl", CHATS[:12])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"run:\n  out_dir: {tmp_path / 'run'}\ntrain:\n  steps: 2\n  batch_size: 2\n  seq_len: 64\n"
                      f"  tensorboard: false\n  precision: fp32\n  num_threads: 1\n"
                      f"posttrain:\n  init_from: {start_ckpt}\n  train_data: [{data}]\n")
    assert slm_main(["sft", str(recipe), "--quiet", "--posttrain.packing=true"]) == 0
    out = capsys.readouterr().out
    assert "=== sft ===" in out and "after:" in out


class Script:
    def __init__(self, lines):
        self.lines = list(lines)

    def __call__(self, prompt=""):
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


class Capture:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, end="\n", flush=False):
        self.calls.append((" ".join(str(a) for a in args), end))

    @property
    def text(self):
        return "".join(t + e for t, e in self.calls)


def test_scripted_chat_streams_multi_turn_replies(tok):
    model = tiny_model(seed=4, init_std=0.3, tie_embeddings=False)
    f = ChatFormatter(tok)
    out = Capture()
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=6)
    convo = run_chat(model, f, cfg, system_prompt="Be nice.", print_fn=out,
                     input_fn=Script(["hello", "/temp 0", "and again", "/max 3", "/quit", "never"]))
    assert [m["role"] for m in convo] == ["system", "user", "assistant", "user", "assistant"]
    # the first reply is exactly the greedy continuation of the rendered prompt, streamed
    first_prompt = f.encode_prompt(convo[:2])
    ids = generate(model, [first_prompt], cfg, eos_id=f.end_of_turn_id)[0]
    assert convo[2]["content"] == tok.decode(ids, skip_special=True) or convo[2]["content"] == "(no reply)"
    assert any(end == "" for _, end in out.calls)  # streamed pieces
    assert "temperature = 0.0" in out.text and "max_new_tokens = 3" in out.text


def test_chat_reset_and_system_commands(tok):
    model = tiny_model(seed=4)
    convo = run_chat(model, ChatFormatter(tok), SamplingConfig(temperature=0.0, max_new_tokens=2),
                     print_fn=Capture(), input_fn=Script(["hi", "/system You are terse.", "yo"]))
    assert convo[0] == {"role": "system", "content": "You are terse."} and len(convo) == 3


def test_fit_history_drops_oldest_exchanges_and_keeps_system(tok):
    f = ChatFormatter(tok)
    msgs = [{"role": "system", "content": "s"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"question {i} " * 3}, {"role": "assistant", "content": "answer " * 3}]
    msgs.append({"role": "user", "content": "last"})
    kept, dropped = fit_history(f, msgs, 120)
    assert kept[0]["role"] == "system" and kept[-1]["content"] == "last" and dropped > 0
    assert len(f.encode_prompt(kept)) <= 120 and kept[1]["role"] == "user"


def test_chat_command_with_a_checkpoint(slm_main, start_ckpt, monkeypatch, capsys):
    monkeypatch.setattr("builtins.input", Script(["hello", "/quit"]))
    assert slm_main(["chat", "--checkpoint", str(start_ckpt), "--temperature", "0", "--max-new-tokens", "3",
                     "--system", "Be brief."]) == 0
    assert "assistant> " in capsys.readouterr().out
