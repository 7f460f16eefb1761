"""evaluate() against brute-force formulas on a tiny model: loss, bpb with special tokens, accuracy, batching."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slm.errors import SlmError
from slm.eval import evaluate, format_table
from slm.models import CausalLM, IGNORE_INDEX, build_model, preset_config

V = 256


@pytest.fixture(scope="module")
def model() -> CausalLM:
    m = build_model(preset_config("test", tie_embeddings=False, init_std=0.3))
    m.reset_parameters(seed=0)
    return m


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (4, 24), generator=gen)
    y = torch.randint(0, V, (4, 24), generator=gen)
    y[y < 8] = 3  # make the zero-byte tokens 0..3 frequent as targets
    y[0, :5] = IGNORE_INDEX
    y[2, -7:] = IGNORE_INDEX
    return x, y


@pytest.fixture(scope="module")
def token_bytes() -> np.ndarray:
    table = np.random.default_rng(0).integers(1, 5, size=V)
    table[:4] = 0  # special tokens: no bytes
    return table


def reference(model, x, y, token_bytes):
    """Per-position CE, logits and masks by the plain (B, T, V) path, unshifted."""
    with torch.no_grad():
        logits = model(x).float().reshape(-1, V)
    targets = y.reshape(-1)
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="none").double()
    real = targets != IGNORE_INDEX
    return logits, targets, ce, real


def test_loss_and_perplexity_match_plain_cross_entropy(model, data, token_bytes):
    x, y = data
    m = evaluate(model, [(x, y)], token_bytes)
    with torch.no_grad():
        expected = F.cross_entropy(model(x).float().reshape(-1, V), y.reshape(-1), ignore_index=IGNORE_INDEX).item()
    assert m["loss"] == pytest.approx(expected, rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert m["tokens"] == int((y != IGNORE_INDEX).sum())


def test_bpb_skips_zero_byte_tokens(model, data, token_bytes):
    x, y = data
    logits, targets, ce, real = reference(model, x, y, token_bytes)
    nbytes = np.zeros(len(targets), dtype=np.int64)
    nbytes[real.numpy()] = token_bytes[targets[real].numpy()]
    counted = torch.from_numpy(nbytes > 0)
    assert 0 < int((real & ~counted).sum())  # the case really has special-token targets
    expected = ce[counted].sum().item() / (math.log(2) * nbytes.sum())
    m = evaluate(model, [(x, y)], token_bytes)
    assert m["bpb"] == pytest.approx(expected, rel=1e-5)
    assert m["bytes"] == int(nbytes.sum())
    # A torch table works the same; no table -> no bpb.
    assert evaluate(model, [(x, y)], torch.from_numpy(token_bytes))["bpb"] == pytest.approx(expected, rel=1e-5)
    none = evaluate(model, [(x, y)], None)
    assert none["bpb"] is None and none["bytes"] is None


def test_accuracy_and_top5_against_brute_force(model, data):
    x, y = data
    logits, targets, _, real = reference(model, x, y, None)
    top1 = top5 = n = 0
    for row in range(len(targets)):
        t = int(targets[row])
        if t == IGNORE_INDEX:
            continue
        ranked = sorted(range(V), key=lambda v: -logits[row, v].item())
        top1 += ranked[0] == t
        top5 += t in ranked[:5]
        n += 1
    m = evaluate(model, [(x, y)], None)
    assert m["accuracy"] == pytest.approx(top1 / n)
    assert m["top5_accuracy"] == pytest.approx(top5 / n)


def test_accuracy_uses_rank_one_and_ranks_one_to_five():
    """A model that ranks (x+0, x+1, ..., x+5) mod V first to sixth: target x+k is a top-1 hit iff k=0, top-5 iff k<5."""
    class Ranker(torch.nn.Module):
        cfg = preset_config("test")

        def __init__(self) -> None:
            super().__init__()
            self.output_weight = torch.nn.Parameter(torch.eye(V))  # hidden is already the logits

        def forward(self, x, *, return_hidden=False):
            return sum(F.one_hot((x + k) % V, V).float() * (10.0 - k) for k in range(6))

    x = torch.randint(0, V, (2, 10), generator=torch.Generator().manual_seed(1))
    expected = {0: (1.0, 1.0), 1: (0.0, 1.0), 4: (0.0, 1.0), 5: (0.0, 0.0)}
    for k, (acc, top5) in expected.items():
        m = evaluate(Ranker(), [(x, (x + k) % V)], None)
        assert (m["accuracy"], m["top5_accuracy"]) == (acc, top5), k


def test_batching_invariance_and_max_batches(model, data, token_bytes):
    x, y = data
    whole = evaluate(model, [(x, y)], token_bytes)
    split = evaluate(model, [(x[i:i + 1], y[i:i + 1]) for i in range(4)], token_bytes)
    for key in ("loss", "bpb", "accuracy", "top5_accuracy"):
        assert split[key] == pytest.approx(whole[key], rel=1e-5)
    assert split["tokens"] == whole["tokens"] and split["bytes"] == whole["bytes"]
    first_two = evaluate(model, [(x[:2], y[:2])], token_bytes)
    limited = evaluate(model, [(x[i:i + 1], y[i:i + 1]) for i in range(4)], token_bytes, max_batches=2)
    assert limited["loss"] == pytest.approx(first_two["loss"], rel=1e-5)
    assert limited["tokens"] == first_two["tokens"]


def test_ignore_index_positions_count_for_nothing(model, data):
    x, y = data
    garbage = y.clone()
    garbage[0, :5] = 7  # what the ignored slots would contribute if they were counted
    base = evaluate(model, [(x, y)], None)
    # Un-ignoring 5 slots adds exactly 5 tokens; an ignored slot's prediction never matters.
    assert evaluate(model, [(x, garbage)], None)["tokens"] == base["tokens"] + 5
    x2 = x.clone()
    x2[2, -1] = (x2[2, -1] + 1) % V  # last position has no target; changing its input changes nothing
    assert evaluate(model, [(x2, y)], None)["loss"] == pytest.approx(base["loss"], rel=1e-6)


def test_training_mode_restored_and_autocast_runs(model, data):
    x, y = data
    model.train()
    m = evaluate(model, [(x, y)], None, autocast_dtype=torch.bfloat16)
    assert model.training
    model.eval()
    assert m["loss"] == pytest.approx(evaluate(model, [(x, y)], None)["loss"], rel=5e-2)


def test_no_targets_is_a_user_error(model, data):
    x, _ = data
    with pytest.raises(SlmError, match="no target tokens"):
        evaluate(model, [(x, torch.full_like(x, IGNORE_INDEX))], None)


def test_format_table_aligns_columns():
    rows = [("ckpt/step-100", {"loss": 3.21, "perplexity": 24.78, "bpb": 1.1, "accuracy": 0.31,
                               "top5_accuracy": 0.52, "tokens": 123456}),
            ("b", {"loss": 10.5, "perplexity": 36315.5, "bpb": None, "accuracy": 0.0, "top5_accuracy": 0.01,
                   "tokens": 7})]
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split() == ["name", "loss", "ppl", "bpb", "acc", "top5", "tokens"]
    assert len({len(line) for line in lines}) == 1
    assert "123,456" in lines[2] and "36315.50" in lines[3]
    assert lines[3].split()[3] == "-"
    # Right-aligned numbers: every column ends at the same offset as its header.
    for word in ("loss", "tokens"):
        end = lines[0].index(word) + len(word)
        assert lines[2][end - 1] != " " and lines[3][end - 1] != " "
