"""DPO: loss and gradients equal a hand-written reference; zero rewards at the start; a short run raises accuracy."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from slm.config import RunConfig
from slm.errors import SlmError
from slm.models import IGNORE_INDEX
from slm.posttrain.config import DPOConfig, load_posttrain_config
from slm.posttrain.data import BadExamples, load_preferences
from slm.posttrain.dpo import DPOTask
from slm.posttrain.run import run_posttrain
from slm.tokenizer.chat_template import ChatFormatter

from _posttrain_helpers import tiny_model, write_jsonl

PAIRS = [{"prompt": f"Say {w}.", "chosen": f"{w}!", "rejected": f"{w[::-1]}!"}
         for w in ["cat", "dog", "sun", "sky", "red", "map", "pen", "cup", "hat", "owl", "ant", "elk", "fig",
                   "gem", "ink", "jam"]]


def _pairs(tok, tmp_path, records=PAIRS):
    return load_preferences([str(write_jsonl(tmp_path / "p.jsonl", records))], ChatFormatter(tok), 200,
                            BadExamples())


def _by_hand(model, ids, mask):
    """Summed log-prob of the masked tokens, from full logits."""
    x = torch.tensor([ids[:-1]])
    logp = F.log_softmax(model(x).float(), -1)[0]
    return sum(logp[t - 1, ids[t]] for t in range(1, len(ids)) if mask[t])


def test_dpo_loss_and_grads_equal_hand_written_reference(tok, tmp_path):
    pairs = _pairs(tok, tmp_path)[:3]
    policy = tiny_model(seed=2, tie_embeddings=False, init_std=0.1)
    ref = tiny_model(seed=9, tie_embeddings=False, init_std=0.1).requires_grad_(False)
    beta = 0.3
    task = DPOTask(pairs, [], RunConfig(), DPOConfig(beta=beta, label_smoothing=0.1), reference=ref,
                   pad_id=tok.pad_id)
    batch = task.collate(pairs)
    policy.zero_grad()
    loss = task.loss(policy, batch, loss_chunk=16)  # small chunks exercise the chunked path
    loss.backward()
    grads = [p.grad.clone() for p in policy.parameters()]

    policy.zero_grad()
    expected = 0.0
    for p in pairs:
        pc, pr = _by_hand(policy, p.chosen.ids, p.chosen.mask), _by_hand(policy, p.rejected.ids, p.rejected.mask)
        with torch.no_grad():
            rc, rr = _by_hand(ref, p.chosen.ids, p.chosen.mask), _by_hand(ref, p.rejected.ids, p.rejected.mask)
        h = beta * ((pc - rc) - (pr - rr))
        expected = expected + (-0.9 * F.logsigmoid(h) - 0.1 * F.logsigmoid(-h))
    expected.backward()
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-5)
    for g, p in zip(grads, policy.parameters()):
        assert (g - p.grad).abs().max() <= 1e-4 * p.grad.abs().max() + 1e-7
    assert task.count(batch) == 3


def test_identical_policy_and_reference_give_log2_and_zero_rewards(tok, tmp_path):
    pairs = _pairs(tok, tmp_path)[:4]
    policy = tiny_model(seed=2)
    task = DPOTask(pairs, pairs, RunConfig(), DPOConfig(), reference=copy.deepcopy(policy), pad_id=tok.pad_id)
    loss = task.loss(policy, task.collate(pairs), 64)
    assert float(loss.detach()) == pytest.approx(4 * math.log(2), rel=1e-6)
    metrics = task.evaluate(policy, 0, 0)
    assert metrics["rewards_margin"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["train_rewards_chosen"] == pytest.approx(0.0, abs=1e-6)


def test_only_completion_tokens_are_scored(tok, tmp_path):
    p = _pairs(tok, tmp_path)[0]
    assert tok.decode([i for i, m in zip(p.chosen.ids, p.chosen.mask) if m]) == "cat!<|im_end|>"
    assert p.chosen.ids[:p.prompt_len] == p.rejected.ids[:p.prompt_len]
    batch = DPOTask([p], [], RunConfig(), DPOConfig(), reference=tiny_model(), pad_id=tok.pad_id).collate([p])
    assert int((batch.targets[0] != IGNORE_INDEX).sum()) == len("cat!") + 1


@pytest.mark.parametrize("record, phrase", [
    ({"prompt": "a", "chosen": "b"}, "'chosen' and 'rejected'"),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "identical"),
    ({"prompt": "", "chosen": "b", "rejected": "c"}, "empty content"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "c"}]}, "share"),
])
def test_bad_pairs_named(tok, tmp_path, record, phrase):
    with pytest.raises(SlmError, match=phrase):
        _pairs(tok, tmp_path, [PAIRS[0], record])


def test_implicit_prompt_message_lists(tok, tmp_path):
    rec = {"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "good"}],
           "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "bad"}]}
    p = _pairs(tok, tmp_path, [rec])[0]
    assert tok.decode([i for i, m in zip(p.rejected.ids, p.rejected.mask) if m]) == "bad<|im_end|>"


def test_dpo_run_raises_preference_accuracy(tok, tmp_path, start_ckpt):
    data = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    cfg, post = load_posttrain_config(None, [
        f"--run.out_dir={tmp_path / 'run'}", "--train.steps=15", "--train.batch_size=4", "--train.seq_len=64",
        "--train.lr=3e-3", "--train.warmup_steps=0", "--train.eval_every=0", "--train.tensorboard=false",
        "--train.precision=fp32", "--train.num_threads=1", f"--posttrain.init_from={start_ckpt}",
        f"--posttrain.train_data=[{data}]", f"--posttrain.val_data=[{data}]", "--posttrain.dpo.beta=0.5"])
    s = run_posttrain("dpo", cfg, post, progress=False)
    assert s["eval_before"]["rewards_margin"] == pytest.approx(0.0, abs=1e-5)
    assert s["eval_after"]["rewards_margin"] > 0
    assert s["eval_after"]["pref_accuracy"] > s["eval_before"]["pref_accuracy"]
    assert s["eval_after"]["loss"] < math.log(2)


def test_dpo_runs_without_val_data(tok, tmp_path, start_ckpt):
    """Without --posttrain.val_data the pairs are held out by their chosen conversation (was an AttributeError)."""
    data = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    cfg, post = load_posttrain_config(None, [
        f"--run.out_dir={tmp_path / 'run'}", "--train.steps=2", "--train.batch_size=4", "--train.seq_len=64",
        "--train.warmup_steps=0", "--train.eval_every=0", "--train.tensorboard=false", "--train.precision=fp32",
        "--train.num_threads=1", f"--posttrain.init_from={start_ckpt}", f"--posttrain.train_data=[{data}]",
        "--posttrain.val_fraction=0.25"])
    s = run_posttrain("dpo", cfg, post, progress=False)
    assert s["steps"] == 2 and s["eval_before"]["pairs"] > 0
