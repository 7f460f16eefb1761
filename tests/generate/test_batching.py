"""Continuous batching (`slm.generate.batching.RunningBatch`) over every registered architecture: requests that join a
running batch mid-flight, leave it early and share it with others get exactly the tokens they get alone."""

import random
import sys
from pathlib import Path

import pytest
import torch

from slm.generate import SamplingConfig, generate
from slm.generate.batching import RunningBatch, sample_rows
from slm.generate.engine import DecodeEngine
from slm.generate.sampling import sample_next
from slm.models import ARCHS, build_model, get_arch, preset_config

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
import toy_arch  # noqa: E402  (the test-only second architecture)

toy_arch.ensure_registered()
ARCH_NAMES = [pytest.param(name, id=name) for name in ARCHS]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=8)


def _model(arch: str, max_seq_len: int = 48):
    spec = get_arch(arch)
    variant = next(iter(spec.test_variants.values()))
    torch.manual_seed(0)
    cfg = preset_config(spec.test_preset, **{"init_std": 0.3, **variant, "max_seq_len": max_seq_len})
    return build_model(cfg).eval()


def _requests(n: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [([rng.randrange(1, vocab) for _ in range(rng.randrange(1, 20))], rng.randrange(3, 16)) for _ in range(n)]


def _serve(batch: RunningBatch, requests, cfgs) -> dict[int, list[int]]:
    """Admit requests whenever a row is free (a scheduler's loop, minus HTTP); returns each request's tokens."""
    out: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    queue, owner = list(range(len(requests))), {}
    while queue or batch.active:
        while queue and batch.free_rows():
            i = queue.pop(0)
            owner[batch.join(requests[i][0], cfgs[i], requests[i][1])] = i
        for row, token in batch.step().items():
            i = owner[row]
            out[i].append(token)
            if len(out[i]) == requests[i][1]:
                batch.leave(row)
    return out


@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize("insert", [True, False], ids=["insert", "one-batch-at-a-time"])
def test_joining_mid_flight_gives_the_tokens_of_each_request_alone(arch, insert):
    model = _model(arch)
    requests = _requests(6, model.cfg.vocab_size)
    alone = [generate(model, [p], SamplingConfig(temperature=0.0, max_new_tokens=n), eos_id=None)[0]
             for p, n in requests]
    batch = RunningBatch(DecodeEngine.of(model), max_batch=2)
    if not insert:
        batch.can_insert = False  # the path of a state without insert/release
    elif not batch.can_insert:
        pytest.skip(f"{arch}'s decode state has no insert/release yet: served one batch at a time")
    assert _serve(batch, requests, [GREEDY] * len(requests)) == dict(enumerate(alone))


@pytest.mark.parametrize("arch", ["llama", "flow"])  # flow: the window rings follow the KV cache's slot moves
def test_a_full_kv_cache_recycles_the_slots_no_row_uses(arch):
    model = _model(arch, max_seq_len=40)
    requests = _requests(12, model.cfg.vocab_size, seed=3)  # ~ 12 * 20 tokens through a 40-slot cache
    alone = [generate(model, [p], SamplingConfig(temperature=0.0, max_new_tokens=n), eos_id=None)[0]
             for p, n in requests]
    batch = RunningBatch(DecodeEngine.of(model), max_batch=2)
    compactions = []
    kv = getattr(batch.state, "kv", batch.state)  # flow's state holds its KV cache beside the rings
    compact = kv.compact
    kv.compact = lambda: compactions.append(compact()) or compactions[-1]
    assert _serve(batch, requests, [GREEDY] * len(requests)) == dict(enumerate(alone))
    assert sum(1 for c in compactions if c) >= 2


def test_a_newcomer_longer_than_what_is_written_moves_every_row_right():
    model = _model("llama")
    short, long_ = [5, 6], list(range(1, 30))
    ref = [generate(model, [p], SamplingConfig(temperature=0.0, max_new_tokens=6), eos_id=None)[0]
           for p in (short, long_)]
    batch = RunningBatch(DecodeEngine.of(model), max_batch=2)
    r0 = batch.join(short, GREEDY, 6)
    got = {0: [batch.step()[r0]]}
    r1 = batch.join(long_, GREEDY, 6)  # 28 prefilled slots > the 2 written so far
    got[1] = []
    while len(got[1]) < 6:
        step = batch.step()
        if len(got[0]) < 6:
            got[0].append(step[r0])
            if len(got[0]) == 6:
                batch.leave(r0)
        got[1].append(step[r1])
    assert [got[0], got[1]] == ref


def test_sampled_tokens_depend_on_the_seed_only_not_on_the_neighbours():
    model = _model("llama")
    requests = _requests(5, model.cfg.vocab_size, seed=1)
    cfgs = [SamplingConfig(temperature=1.5, top_k=[0, 20][i % 2], top_p=[1.0, 0.9][i % 2], seed=100 + i,
                           repetition_penalty=[1.0, 1.3][i % 2]) for i in range(5)]
    together = _serve(RunningBatch(DecodeEngine.of(model), max_batch=5), requests, cfgs)
    for i in range(5):
        alone = _serve(RunningBatch(DecodeEngine.of(model), max_batch=2), [requests[i]], [cfgs[i]])
        assert alone[0] == together[i]
    assert len({tuple(t) for t in together.values()}) == 5


def test_per_row_sampling_matches_the_batch_sampler_rules():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    seen = torch.zeros(4, 50, dtype=torch.bool)
    seen[:, :10] = True
    temps = torch.tensor([0.0, 1.0, 0.7, 2.0])
    top_k = torch.tensor([0, 1, 5, 0])
    top_p = torch.tensor([1.0, 1.0, 1.0, 0.05])
    pen = torch.tensor([1.5, 1.0, 1.0, 1.0])
    for u in (0.0, 0.3, 0.999):
        got = sample_rows(logits, temps, top_k, top_p, pen, seen, torch.full((4,), u))
        # greedy row == the batch sampler's greedy with the same penalty; top-k 1 and a tiny top-p are the argmax
        assert got[0] == sample_next(logits[:1], SamplingConfig(temperature=0.0, repetition_penalty=1.5),
                                     seen=seen[:1])[0]
        assert got[1] == logits[1].argmax() and got[3] == logits[3].argmax()
        assert got[2] in logits[2].topk(5).indices


@pytest.mark.slow  # compiles the decode step (tens of seconds on 2 cores)
def test_compiled_step_serves_the_same_tokens_across_joins_and_compaction():
    model = _model("llama", max_seq_len=40)
    requests = _requests(8, model.cfg.vocab_size, seed=5)
    eager = _serve(RunningBatch(DecodeEngine.of(model), max_batch=2), requests, [GREEDY] * len(requests))
    compiled = _serve(RunningBatch(DecodeEngine.of(model, compile=True), max_batch=2), requests,
                      [GREEDY] * len(requests))
    assert compiled == eager
