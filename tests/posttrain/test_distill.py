"""Distillation: KD with an identical teacher gives zero KL; KD maths by hand; generation is batched and resumable."""

import json

import pytest
import torch
import torch.nn.functional as F

from slm.config import RunConfig
from slm.errors import SlmError
from slm.posttrain.config import GenerateConfig, KDConfig, load_posttrain_config
from slm.posttrain.data import BadExamples, load_conversations
from slm.posttrain.distill import KDBatch, KDTask, generate_responses, kd_token_losses, load_teacher, topk_cache
from slm.posttrain.run import run_posttrain
from slm.posttrain.sequence import pad_batch, shift_example
from slm.tokenizer.chat_template import ChatFormatter

from _posttrain_helpers import CHATS, tiny_model, write_jsonl


def _examples(tok, tmp_path):
    f = write_jsonl(tmp_path / "c.jsonl", CHATS[:6])
    return load_conversations([str(f)], ChatFormatter(tok), 200, BadExamples())


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_identical_teacher_and_student_give_zero_kl(tok, tmp_path, direction):
    ex = _examples(tok, tmp_path)
    student = tiny_model(seed=3, init_std=0.2)
    teacher = tiny_model(seed=3, init_std=0.2).requires_grad_(False)
    task = KDTask(ex, [], RunConfig(), KDConfig(loss=direction, alpha=1.0, temperature=2.0), teacher=teacher,
                  teacher_tokenizer=tok, tokenizer=tok, pad_id=tok.pad_id)
    batch = KDBatch.of(pad_batch([shift_example(e.ids, e.mask) for e in ex], tok.pad_id), list(range(len(ex))))
    loss = task.loss(student, batch, loss_chunk=16)
    assert abs(float(loss.detach())) < 1e-4
    loss.backward()
    assert max(p.grad.abs().max() for p in student.parameters()) < 1e-4


def test_kd_token_losses_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(5, 11), torch.randn(5, 13)  # teacher has more ids: only the shared 11 count
    y = torch.randint(0, 11, (5,))
    T, a = 1.5, 0.7
    ps, pt = F.softmax(s / T, -1), F.softmax(t[:, :11] / T, -1)
    fwd = (pt * (pt.log() - ps.log())).sum(-1)
    rev = (ps * (ps.log() - pt.log())).sum(-1)
    ce = F.cross_entropy(s, y, reduction="none")
    got_f = kd_token_losses(s, t, y, KDConfig(loss="forward", alpha=a, temperature=T))
    got_r = kd_token_losses(s, t, y, KDConfig(loss="reverse", alpha=a, temperature=T))
    assert torch.allclose(got_f, a * T * T * fwd + (1 - a) * ce, atol=1e-5)
    assert torch.allclose(got_r, a * T * T * rev + (1 - a) * ce, atol=1e-5)


def test_kd_with_alpha_zero_is_sft(tok, tmp_path):
    ex = _examples(tok, tmp_path)
    student, teacher = tiny_model(seed=1), tiny_model(seed=2).requires_grad_(False)
    task = KDTask(ex, [], RunConfig(), KDConfig(alpha=0.0), teacher=teacher, teacher_tokenizer=None, tokenizer=tok,
                  pad_id=tok.pad_id)
    batch = KDBatch.of(pad_batch([shift_example(e.ids, e.mask) for e in ex], tok.pad_id), list(range(len(ex))))
    expected = float(student(batch.input_ids, targets=batch.targets).detach())
    assert float(task.loss(student, batch, 7).detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_cached_full_vocab_topk_equals_live_teacher(tok, tmp_path, direction):
    ex = _examples(tok, tmp_path)
    student, teacher = tiny_model(seed=1, init_std=0.2), tiny_model(seed=2, init_std=0.2).requires_grad_(False)
    kd = KDConfig(loss=direction, alpha=0.6, temperature=2.0)
    cache = topk_cache(tmp_path / "c.safetensors", teacher, ex[:4], ex[4:], k=teacher.cfg.vocab_size,
                       pad_id=tok.pad_id, device=torch.device("cpu"), teacher_name="t")
    live = KDTask(ex[:4], ex[4:], RunConfig(), kd, teacher=teacher, teacher_tokenizer=None, tokenizer=tok,
                  pad_id=tok.pad_id, packing=True)
    cached = KDTask(ex[:4], ex[4:], RunConfig(), kd, teacher=None, teacher_tokenizer=None, tokenizer=tok,
                    pad_id=tok.pad_id, packing=True, cache=cache)
    batch = live.collate_packed([[2, 0], [3, 1]], 120)  # packed rows, shuffled order: cache rows must follow
    a = live.loss(student, batch, 16)
    b = cached.loss(student, batch, 16)
    assert torch.allclose(a, b, rtol=1e-4) and float(a.detach()) > 0
    assert live.evaluate(student, 0, 0)["kl_to_teacher"] == pytest.approx(
        cached.evaluate(student, 0, 0)["kl_to_teacher"], rel=1e-4)
    # a small k approximates; the cache file is reused when teacher, k and examples match
    small = topk_cache(tmp_path / "s.safetensors", teacher, ex[:4], [], k=8, pad_id=tok.pad_id,
                       device=torch.device("cpu"), teacher_name="t")
    assert small.t["train_ids"].shape[1] == 8
    again = topk_cache(tmp_path / "s.safetensors", None, ex[:4], [], k=8, pad_id=tok.pad_id,
                       device=torch.device("cpu"), teacher_name="t")  # no teacher needed: loaded from disk
    assert torch.equal(again.t["train_logp"], small.t["train_logp"])


def test_kd_refuses_a_teacher_with_another_tokenizer(tok, tmp_path):
    from slm.tokenizer import byte_tokenizer

    other = byte_tokenizer(extra_special_tokens=["<|x|>"])
    with pytest.raises(SlmError, match="tokenizer differs"):
        KDTask(_examples(tok, tmp_path), [], RunConfig(), KDConfig(), teacher=tiny_model(), teacher_tokenizer=other,
               tokenizer=tok, pad_id=tok.pad_id)


@pytest.mark.parametrize("extra", [[], ["--posttrain.kd.topk=16"]], ids=["live", "topk-cache"])
def test_kd_run_through_trainer(tok, tmp_path, start_ckpt, extra):
    data = write_jsonl(tmp_path / "c.jsonl", CHATS)
    cfg, post = load_posttrain_config(None, [
        f"--run.out_dir={tmp_path / 'run'}", "--train.steps=4", "--train.batch_size=4", "--train.seq_len=64",
        "--train.eval_every=0", "--train.tensorboard=false", "--train.precision=fp32", "--train.num_threads=1",
        f"--posttrain.init_from={start_ckpt}", f"--posttrain.train_data=[{data}]", "--posttrain.val_fraction=0.2",
        f"--posttrain.kd.teacher={start_ckpt}", "--posttrain.packing=true", *extra])
    s = run_posttrain("kd", cfg, post, progress=False)
    assert s["eval_before"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-5)  # student starts as the teacher
    assert s["eval_after"]["kl_to_teacher"] > 0


def _gen_cfg(tmp_path, start, prompts, **kw):
    return GenerateConfig(teacher=str(start), prompts=str(prompts), output=str(tmp_path / "out.jsonl"),
                          batch_size=2, max_new_tokens=5, **kw)


def test_generation_resumes_without_redoing_finished_prompts(tok, tmp_path, start_ckpt):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(5)])
    full = generate_responses(_gen_cfg(tmp_path, start_ckpt, prompts), bad=BadExamples(), progress=False)
    assert full["written"] == 5
    complete = (tmp_path / "out.jsonl").read_text()
    lines = complete.splitlines()
    # simulate a crash: 2 finished lines and a torn third one
    (tmp_path / "out.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:10])
    again = generate_responses(_gen_cfg(tmp_path, start_ckpt, prompts), bad=BadExamples(), progress=False)
    assert again["already_done"] == 2 and again["written"] == 3
    assert (tmp_path / "out.jsonl").read_text() == complete  # same records, same order: deterministic
    third = generate_responses(_gen_cfg(tmp_path, start_ckpt, prompts), bad=BadExamples(), progress=False)
    assert third["written"] == 0
    rec = json.loads(lines[0])
    assert rec["schema"] == "slm-distill-v1" and rec["messages"][-1]["role"] == "assistant"
    assert rec["finish_reason"] in ("stop", "length") and rec["completion_tokens"] <= 5


def test_generated_file_feeds_sft_and_truncated_responses_are_refused(tok, tmp_path, start_ckpt):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(3)])
    generate_responses(_gen_cfg(tmp_path, start_ckpt, prompts, temperature=1.0), bad=BadExamples(), progress=False)
    records = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    finished = dict(records[0], id="done", response="ok", finish_reason="stop",
                    messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "ok"}])
    records.append(finished)
    write_jsonl(tmp_path / "all.jsonl", records)
    bad = BadExamples("skip")
    ok = load_conversations([str(tmp_path / "all.jsonl")], ChatFormatter(tok), 200, bad)
    n_len = sum(r["finish_reason"] == "length" for r in records)
    n_empty = sum(r["finish_reason"] == "stop" and not r["response"].strip() for r in records)
    assert len(ok) + bad.total == 4 and bad.total == n_len + n_empty and n_len >= 1
    assert "truncated teacher response" in bad.summary()


def test_load_teacher_from_hf_folder(tmp_path, start_ckpt):
    from slm.export.hf import export_hf

    hf = export_hf(start_ckpt, tmp_path / "hf")
    teacher, tok2 = load_teacher(str(hf))
    ref, _ = load_teacher(str(start_ckpt))
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(teacher(x), ref(x), atol=1e-5)
    assert tok2 is not None and not any(p.requires_grad for p in teacher.parameters())
