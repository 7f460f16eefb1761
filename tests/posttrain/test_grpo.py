"""GRPO: rewards, per-group advantage normalisation, rollout layout, the clipped loss by hand, a trainer run."""

import pytest
import torch

from slm.config import RunConfig
from slm.errors import SlmError
from slm.models import IGNORE_INDEX
from slm.posttrain.config import GRPOConfig, load_posttrain_config
from slm.posttrain.data import BadExamples, load_prompts
from slm.posttrain.grpo import (GRPOTask, answers_match, extract_answer, group_advantages, reward_format,
                                reward_length, reward_math, reward_math_partial)
from slm.posttrain.run import run_posttrain
from slm.posttrain.sequence import sequence_logprobs
from slm.tokenizer.chat_template import ChatFormatter

from _posttrain_helpers import tiny_model, write_jsonl

PROMPTS = [{"prompt": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(4)]


def test_reward_functions():
    assert reward_math("<think>2+2</think><answer>4</answer>", "4", 5, 10) == 1.0
    assert reward_math("so the answer is 1,000", "1000", 5, 10) == 1.0
    assert reward_math("<answer>5</answer> 4", "4", 5, 10) == 0.0  # the tag wins over the trailing number
    assert reward_format("<think>a</think>\n<answer>b</answer>", "", 1, 10) == 1.0
    assert reward_format("<answer>b</answer>", "", 1, 10) == 0.0
    assert reward_format("x <think>a</think><answer>b</answer>", "", 1, 10) == 0.0
    assert reward_length("", "", 3, 10) == pytest.approx(0.7)
    assert extract_answer("no numbers") == "no numbers"


def test_math_partial_reward_grades_closeness():
    """Exact is 1; a near miss earns up to 0.5 (so a group of wrong answers still has a spread); no number is 0."""
    assert reward_math_partial("46 + 49 = 95", "95", 5, 16) == 1.0
    assert reward_math_partial("46 + 49 = 93", "95", 5, 16) == pytest.approx(0.5 * (1 - 2 / 95))
    assert reward_math_partial("46 + 49 = 93", "95", 5, 16) > reward_math_partial("46 + 49 = 184", "95", 5, 16) > 0
    assert reward_math_partial("= 500", "95", 5, 16) == 0.0  # off by more than the answer itself
    assert reward_math_partial("I cannot say", "95", 5, 16) == 0.0
    assert reward_math_partial("it is 1", "0", 5, 16) == 0.0  # |g| < 1: the error is relative to 1
    assert answers_match("4.0", "4") and answers_match("Paris", "paris") and not answers_match("3", "4")


def test_advantages_are_normalised_per_group():
    torch.manual_seed(0)
    rewards = torch.cat([torch.rand(4) * 10, torch.rand(4), torch.full((4,), 3.0)])
    adv = group_advantages(rewards, 4).view(3, 4)
    assert torch.allclose(adv.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(adv[:2].std(1), torch.ones(2), atol=1e-3)
    assert torch.equal(adv[2], torch.zeros(4))  # identical rewards: no signal, no NaN
    unscaled = group_advantages(rewards, 4, scale=False).view(3, 4)
    assert torch.allclose(unscaled, rewards.view(3, 4) - rewards.view(3, 4).mean(1, keepdim=True))


def _task(tok, tmp_path, **kw):
    prompts = load_prompts([str(write_jsonl(tmp_path / "p.jsonl", PROMPTS))], BadExamples(), need_answer=True)
    cfg = RunConfig()
    cfg.train.seq_len = 96
    grpo = GRPOConfig(num_generations=4, max_completion_tokens=8, **kw)
    policy = tiny_model(seed=2, init_std=0.2)
    return GRPOTask(prompts, prompts[:3], cfg, grpo, policy=policy, reference=tiny_model(seed=2, init_std=0.2),
                    formatter=ChatFormatter(tok), pad_id=tok.pad_id), prompts


def test_rollout_layout_trains_completions_only(tok, tmp_path):
    task, prompts = _task(tok, tmp_path)
    batch = task.rollout(prompts[:2], seed=0)
    assert batch.input_ids.shape[0] == 8 and batch.advantages.shape == (8,)
    prompt_len = len(task.formatter.encode_prompt(prompts[0].messages))
    y = batch.targets[0]
    assert (y[:prompt_len - 1] == IGNORE_INDEX).all() and y[prompt_len - 1] != IGNORE_INDEX
    n_trained = int((y != IGNORE_INDEX).sum())
    assert 1 <= n_trained <= 9
    stats = task.stats.pop()
    assert {"train_reward", "train_reward_std", "train_completion_length", "train_reward_math"} <= set(stats)
    step = task.step_metrics()  # the per-step bucket is independent of the eval one
    assert step["reward"] == pytest.approx(stats["train_reward"]) and task.step_metrics() == {}


def test_loss_equals_hand_written_policy_gradient(tok, tmp_path):
    task, prompts = _task(tok, tmp_path, kl_beta=0.05)
    batch = task.rollout(prompts[:2], seed=1)
    batch.advantages = torch.linspace(-1, 1, 8)  # make sure every row carries signal
    model = task.policy
    model.zero_grad()
    task.loss(model, batch, 16).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    x, y = batch.input_ids, batch.targets
    logp = sequence_logprobs(model, x, y)
    with torch.no_grad():
        ref = sequence_logprobs(task.reference, x, y)
    mask = (y != IGNORE_INDEX).float()
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    # ratio = exp(logp - logp.detach()) = 1 with gradient d logp: the loss is -A * logp per token
    per_tok = -batch.advantages[:, None] * torch.exp(logp - logp.detach()) + 0.05 * kl
    expected = ((per_tok * mask).sum(-1) / mask.sum(-1)).sum()
    expected.backward()
    for g, p in zip(grads, model.parameters()):
        assert (g - p.grad).abs().max() <= 1e-4 * p.grad.abs().max() + 1e-7


def test_clip_bounds_the_ratio(tok, tmp_path):
    task, prompts = _task(tok, tmp_path, num_iterations=2, epsilon=0.2)
    batch = task.rollout(prompts[:1], seed=3)
    assert batch.old_logp is not None
    batch.advantages = torch.ones(4)
    batch.old_logp = batch.old_logp - 1.0  # pretend the policy moved: ratio = e > 1 + eps
    loss = task.loss(task.policy, batch, 64)
    loss.backward()
    # clipped with A > 0: the min picks the constant clipped term, so no gradient flows
    assert float(loss.detach()) == pytest.approx(-1.2 * 4, rel=1e-5)
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in task.policy.parameters())


def test_overlong_prompt_is_refused(tok, tmp_path):
    prompts = load_prompts([str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x" * 200, "answer": "1"}]))],
                           BadExamples(), need_answer=True)
    with pytest.raises(SlmError, match="max_completion_tokens"):
        GRPOTask(prompts, [], RunConfig(), GRPOConfig(), policy=tiny_model(), reference=None,
                 formatter=ChatFormatter(tok), pad_id=tok.pad_id)


def test_prompts_need_answers(tok, tmp_path):
    with pytest.raises(SlmError, match="no 'answer'"):
        load_prompts([str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q"}]))], BadExamples(), need_answer=True)


def test_grpo_run_through_trainer(tok, tmp_path, start_ckpt):
    data = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    cfg, post = load_posttrain_config(None, [
        f"--run.out_dir={tmp_path / 'run'}", "--train.steps=3", "--train.batch_size=2", "--train.seq_len=96",
        "--train.eval_every=0", "--train.tensorboard=false", "--train.precision=fp32", "--train.num_threads=1",
        f"--posttrain.init_from={start_ckpt}", f"--posttrain.train_data=[{data}]", "--posttrain.val_fraction=0.2",
        "--posttrain.grpo.max_completion_tokens=6", "--posttrain.grpo.kl_beta=0.04",
        "--posttrain.grpo.eval_prompts=2", "--posttrain.grpo.num_iterations=2"])
    s = run_posttrain("grpo", cfg, post, progress=False)
    assert s["steps"] == 3
    after = s["eval_after"]
    assert "reward" in after and "train_reward" in after and "train_completion_length" in after
    assert after["loss"] == -after["reward"]
