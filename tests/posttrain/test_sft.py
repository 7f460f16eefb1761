"""SFT: packed == unpacked, loader resume, bad data handling, and a short real run that lowers the loss."""

import json

import pytest
import torch

from slm.errors import SlmError
from slm.models import IGNORE_INDEX
from slm.posttrain.config import PostTrainConfig, load_posttrain_config
from slm.posttrain.data import BadExamples, load_conversations
from slm.posttrain.run import run_posttrain
from slm.posttrain.sequence import RowLoader, batch_hidden, pack_rows, packed_batch, pad_batch, shift_example
from slm.posttrain.sft import SFTTask
from slm.config import RunConfig
from slm.tokenizer.chat_template import ChatFormatter

from _posttrain_helpers import CHATS, chat, tiny_model, write_jsonl


def _examples(tok, tmp_path, records=CHATS):
    f = write_jsonl(tmp_path / "c.jsonl", records)
    return load_conversations([str(f)], ChatFormatter(tok), 200, BadExamples())


def test_packed_loss_and_grads_equal_unpacked(tok, tmp_path):
    examples = _examples(tok, tmp_path)[:5]
    model = tiny_model(seed=3, tie_embeddings=False, init_std=0.1)
    task = SFTTask(examples, [], RunConfig(), pad_id=tok.pad_id, packing=True)
    shifted = [shift_example(e.ids, e.mask) for e in examples]
    # unpacked: each conversation alone
    model.zero_grad()
    ref = sum(model(torch.tensor([x]), targets=torch.tensor([y])) for x, y in shifted)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    # packed: all five in one row with padding after them
    width = sum(len(x) for x, _ in shifted) + 7
    batch = packed_batch([shifted], width, tok.pad_id)
    model.zero_grad()
    packed = task.loss(model, batch, loss_chunk=64)
    packed.backward()
    assert torch.allclose(packed, ref, rtol=1e-5, atol=1e-4)
    for g, r in zip((p.grad for p in model.parameters()), ref_grads):
        assert (g - r).abs().max() <= 1e-4 * r.abs().max() + 1e-6, ((g - r).abs().max(), r.abs().max())
    assert task.count(batch) == sum(sum(t != IGNORE_INDEX for t in y) for _, y in shifted)


def test_padded_batch_loss_equals_rows_alone(tok, tmp_path):
    examples = _examples(tok, tmp_path)[:3]
    model = tiny_model(seed=4)
    shifted = [shift_example(e.ids, e.mask) for e in examples]
    padded = pad_batch(shifted, tok.pad_id)
    x, y = padded.input_ids, padded.targets
    with torch.no_grad():
        alone = sum(float(model(torch.tensor([a]), targets=torch.tensor([b]))) for a, b in shifted)
        assert float(model(x, targets=y)) == pytest.approx(alone, rel=1e-5)


def test_document_mask_blocks_cross_attention(tok):
    model = tiny_model(seed=5).eval()
    a, b = [5, 6, 7, 8], [9, 10, 11]
    batch = packed_batch([[(a, a), (b, b)]], 8, tok.pad_id)
    h = batch_hidden(model, batch)
    alone = model(torch.tensor([b]), return_hidden=True)
    assert torch.allclose(h[0, 4:7], alone[0], atol=1e-5)


def test_pack_rows_never_splits_and_respects_capacity():
    lengths = [5, 3, 8, 2, 7, 1]
    rows = pack_rows(lengths, list(range(6)), 10)
    assert sorted(i for r in rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)


def test_row_loader_resume_is_exact():
    make = lambda: RowLoader(10, 3, seed=7, collate=lambda rows: [i for r in rows for i in r])  # noqa: E731
    a = make()
    seq = [next(a) for _ in range(7)]
    b = make()
    for _ in range(4):
        next(b)
    c = make()
    c.load_state_dict(b.state_dict())
    assert [next(c) for _ in range(3)] == seq[4:]


def test_rank_slices_partition_the_global_batch():
    col = lambda rows: [i for r in rows for i in r]  # noqa: E731
    r0 = RowLoader(12, 2, seed=1, rank=0, world_size=2, collate=col)
    r1 = RowLoader(12, 2, seed=1, rank=1, world_size=2, collate=col)
    one = RowLoader(12, 4, seed=1, collate=col)
    assert sorted(next(r0) + next(r1)) == sorted(next(one))


BAD_LINES = [
    ('{"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}', "no 'role'"),
    ('{"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "x"}]}', "unknown role"),
    ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]}', "empty content"),
    (json.dumps(chat("q" * 300, "a")), "over-long"),
    ("{not json", "invalid JSON"),
    ('{"text": "no messages"}', "no 'messages'"),
]


@pytest.mark.parametrize("line, phrase", BAD_LINES)
def test_malformed_conversation_is_one_line_error_with_file_line(tok, tmp_path, line, phrase):
    f = write_jsonl(tmp_path / "bad.jsonl", [CHATS[0], line])
    with pytest.raises(SlmError) as err:
        load_conversations([str(f)], ChatFormatter(tok), 200, BadExamples("error"))
    msg = str(err.value)
    assert f"{f}:2:" in msg and phrase in msg and "\n" not in msg


def test_malformed_conversations_skipped_and_counted(tok, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [CHATS[0], *[line for line, _ in BAD_LINES], CHATS[1]])
    bad = BadExamples("skip")
    out = load_conversations([str(f)], ChatFormatter(tok), 200, bad)
    assert len(out) == 2 and bad.total == len(BAD_LINES)


def test_prompt_response_columns(tok, tmp_path):
    f = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "a", "response": "b"},
                                            {"instruction": "c", "input": "d", "output": "e"}])
    out = load_conversations([str(f)], ChatFormatter(tok), 200, BadExamples())
    assert tok.decode([i for i, m in zip(out[1].ids, out[1].mask) if m]) == "e<|im_end|>"
    assert "c\n\nd" in tok.decode(out[1].ids)


def _cfg(tmp_path, start, data, *extra):
    return load_posttrain_config(None, [f"--run.out_dir={tmp_path / 'run'}", "--train.steps=12",
                                        "--train.batch_size=4", "--train.seq_len=64", "--train.lr=3e-3",
                                        "--train.warmup_steps=2", "--train.eval_every=0", "--train.log_every=100",
                                        "--train.tensorboard=false", "--train.precision=fp32",
                                        "--train.num_threads=1", "--posttrain.val_fraction=0.2",
                                        f"--posttrain.init_from={start}", f"--posttrain.train_data=[{data}]", *extra])


@pytest.mark.parametrize("packing", [False, True])
def test_sft_run_lowers_val_loss_and_saves_a_chat_checkpoint(tok, tmp_path, start_ckpt, packing):
    data = write_jsonl(tmp_path / "c.jsonl", CHATS)
    cfg, post = _cfg(tmp_path, start_ckpt, data, f"--posttrain.packing={packing}")
    summary = run_posttrain("sft", cfg, post, progress=False)
    assert summary["eval_after"]["loss"] < summary["eval_before"]["loss"]
    assert (tmp_path / "run" / "posttrain.yaml").is_file()
    from slm.checkpoint import load_model, load_tokenizer_of
    model, saved = load_model(summary["checkpoint"])
    assert saved.model.vocab_size == 320 and load_tokenizer_of(summary["checkpoint"]) is not None
    assert cfg.model != saved.model and saved.tokenizer.kind == "byte"  # resolved into a new config, not in place


def test_config_rejects_unknown_posttrain_key(tmp_path):
    with pytest.raises(SlmError, match="posttrain.bogus"):
        load_posttrain_config(None, ["--posttrain.bogus=1"])
    assert PostTrainConfig().dpo.beta == 0.1


def test_resume_equals_uninterrupted(tok, tmp_path, start_ckpt):
    """N + resume + M steps == N + M steps: the posttrain runner reloads resumed weights itself."""
    import shutil

    from slm.checkpoint import load_state_dict

    data = write_jsonl(tmp_path / "c.jsonl", CHATS)
    common = ["--train.steps=4", "--train.checkpoint_every=2", "--train.keep_last=5", "--posttrain.packing=true"]
    cfg, post = _cfg(tmp_path / "a", start_ckpt, data, *common)
    full = run_posttrain("sft", cfg, post, progress=False)
    cfg, post = _cfg(tmp_path / "b", start_ckpt, data, *common)
    run_posttrain("sft", cfg, post, progress=False)
    ckpts = tmp_path / "b" / "run" / "checkpoints"
    shutil.rmtree(ckpts / "step_000004")
    cfg, post = _cfg(tmp_path / "b", start_ckpt, data, *common, "--train.resume=auto")
    resumed = run_posttrain("sft", cfg, post, progress=False)
    a, b = load_state_dict(full["checkpoint"]), load_state_dict(resumed["checkpoint"])
    assert all(torch.equal(a[k], b[k]) for k in a)
