"""`slm run recipes/chat-demo.yaml` ends in a served chat model: raw text -> tokenizer -> pretrain -> SFT on chats
derived from the corpus -> export, then `slm serve` answers the real `openai` client through the SFT checkpoint's chat
template. Tiny size (a 2-layer model, a few steps), CPU, no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slm.errors import SlmError
from slm.posttrain.stage import load_run_recipe

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "chat-demo.yaml"
TINY = ["--model.preset=test", "--model.vocab_size=0", "--tokenizer.vocab_size=512",
        "--tokenizer.max_train_bytes=300000", "--data.dedup=false", "--data.num_workers=1", "--train.steps=2",
        "--train.batch_size=2", "--train.seq_len=64",
        "--train.eval_every=0", "--train.eval_batches=1", "--train.checkpoint_every=0", "--train.compile=false",
        "--train.precision=fp32", "--train.tensorboard=false", "--eval.max_batches=1", "--sample.max_new_tokens=4",
        # the SFT stage: its own steps; seq_len, batch size, precision and compile come from the train keys above
        "--sft.train.steps=6", "--sft.train.warmup_steps=0", "--sft.train.eval_every=0", "--sft.train.eval_batches=2",
        "--sft.train.log_every=1", "--sft.chats.max_lines=1", "--sft.chats.max_conversations=64", "--quiet"]


def test_recipe_has_an_sft_stage_and_overrides_reach_it():
    cfg, stage = load_run_recipe(RECIPE)
    assert stage is not None and stage.train.steps == 100 and stage.train.optimizer == "adamw"
    assert stage.train.seq_len == cfg.train.seq_len and not stage.posttrain.train_data  # chats from the corpus
    cfg, stage = load_run_recipe(RECIPE, ["--sft.train.steps=3", "--train.batch_size=4"])
    assert stage.train.steps == 3 and stage.train.batch_size == 4 and cfg.train.steps == 600
    assert load_run_recipe(RECIPE, ["--sft=null"])[1] is None
    with pytest.raises(SlmError, match="unknown config key 'sft.train.lrr'"):
        load_run_recipe(RECIPE, ["--sft.train.lrr=1"])
    with pytest.raises(SlmError, match=r"--sft\.train\.lr="):
        load_run_recipe(RECIPE, ["--sft.train.lr=-1"])
    with pytest.raises(SlmError, match="--sft.posttrain.init_from"):
        load_run_recipe(RECIPE, ["--sft.posttrain.init_from=runs/x"])


def test_missing_chat_file_is_one_line_exit_2_before_any_work(tmp_path, capsys):
    from slm.cli import main

    run_dir = tmp_path / "run"
    rc = main(["run", str(RECIPE), f"--run.out_dir={run_dir}", *TINY,
               f"--sft.posttrain.train_data=[{tmp_path / 'missing.jsonl'}]"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "--sft.posttrain.train_data" in err and "missing.jsonl" in err, err
    assert not run_dir.exists()  # refused before the tokenizer stage: nothing written


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    from slm.cli import main

    run_dir = tmp_path_factory.mktemp("chat-demo") / "run"
    assert main(["run", str(RECIPE), f"--run.out_dir={run_dir}", *TINY]) == 0
    return run_dir


def test_run_ends_in_an_sft_checkpoint_with_chat_template_and_falling_loss(chat_run):
    from slm.checkpoint import load_tokenizer_of, resolve_checkpoint

    summary = json.loads((chat_run / "summary.json").read_text())
    sft = summary["sft"]
    assert sft["steps"] == 6 and Path(sft["checkpoint"]).parent.parent == chat_run / "sft"
    assert sft["eval_after"]["loss"] < sft["eval_before"]["loss"]  # held-out chats (other plays) got likelier
    assert sft["train_loss_last"] < sft["train_loss_first"]
    chats = sft["chats"]
    assert chats["source"] == "corpus" and chats["train_conversations"] > 0 and chats["val_conversations"] > 0
    train = [json.loads(x) for x in (chat_run / "chats" / "train.jsonl").read_text().splitlines()]
    assert all([m["role"] for m in t["messages"]][:2] == ["user", "assistant"] for t in train)
    assert sft["replies"] and all(isinstance(r["assistant"], str) for r in sft["replies"])
    tok = load_tokenizer_of(resolve_checkpoint(chat_run / "sft"))
    assert "<|im_start|>" in tok.chat_template and "<|im_end|>" in tok.special_tokens
    report = (chat_run / "report.md").read_text()
    assert "## SFT: chat fine-tuning" in report and (chat_run / "plots" / "sft_loss.png").is_file()
    assert (chat_run / "hf" / "config.json").is_file()  # the export is of the SFT model (the stage before it)


def test_served_sft_model_answers_openai_chat_through_its_template(chat_run):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    sys.path.insert(0, str(Path(__file__).parent / "serve"))
    from serve_helpers import LiveServer

    from slm.checkpoint import load_model, load_tokenizer_of, resolve_checkpoint
    from slm.generate import SamplingConfig, generate
    from slm.tokenizer.chat_template import ChatFormatter

    path = resolve_checkpoint(chat_run / "sft")
    server = LiveServer(chat_run / "sft", max_batch=2, max_queue=8, max_tokens=12)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
        messages = [{"role": "user", "content": "Who's there?"}]
        r = client.chat.completions.create(model=server.name, messages=messages, max_tokens=12, temperature=0)
    finally:
        server.close()
    model, _ = load_model(path)
    formatter = ChatFormatter(load_tokenizer_of(path))
    prompt = formatter.encode_prompt(messages)  # <|im_start|>user\n...<|im_end|>\n<|im_start|>assistant\n
    ref = generate(model, [prompt], SamplingConfig(temperature=0.0, max_new_tokens=12),
                   eos_id=formatter.end_of_turn_id)[0]
    assert r.usage.prompt_tokens == len(prompt)
    assert r.choices[0].message.content == formatter.tokenizer.decode(ref, skip_special=True)
    assert r.choices[0].message.role == "assistant"
