"""The cached, batched engine against the naive full-recompute reference, plus EOS, callbacks, truncation and REPL."""

import pytest
import torch

from slm.cli.repl import TextStreamer, run_repl, stream_text
from slm.generate import SamplingConfig, generate, generate_naive
from slm.models import CausalLM, build_model, preset_config

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def model() -> CausalLM:
    # Untied head and a wide init: a random tied model just repeats its input greedily, which would hide bugs.
    m = build_model(preset_config("test", tie_embeddings=False, init_std=0.3))
    m.reset_parameters(seed=0)
    return m


def random_prompt(length: int, seed: int) -> list[int]:
    return torch.randint(1, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


PROMPTS = [random_prompt(n, seed) for seed, n in enumerate([1, 4, 9, 17])]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_cached_greedy_equals_naive(model, prompt):
    cached = generate(model, [prompt], GREEDY, eos_id=None)[0]
    assert cached == generate_naive(model, prompt, GREEDY, None)
    assert len(cached) == GREEDY.max_new_tokens
    assert len(set(cached)) > 2  # the test model does not just repeat one token


def test_cached_equals_naive_with_repetition_penalty(model):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=20, repetition_penalty=1.5)
    prompt = PROMPTS[2]
    assert generate(model, [prompt], cfg, eos_id=None)[0] == generate_naive(model, prompt, cfg, None)
    assert generate(model, [prompt], cfg, eos_id=None)[0] != generate(model, [prompt], GREEDY, eos_id=None)[0][:20]


def test_left_padded_batch_equals_each_prompt_alone(model):
    prompts = [random_prompt(n, 10 + n) for n in (3, 11, 6)]
    batched = generate(model, prompts, GREEDY, eos_id=None)
    alone = [generate(model, [p], GREEDY, eos_id=None)[0] for p in prompts]
    assert batched == alone


def test_model_mode_restored(model):
    model.train()
    generate(model, [[1, 2]], GREEDY, eos_id=None)
    assert model.training
    model.eval()


def test_seed_reproduces_and_changes_samples(model):
    cfg = SamplingConfig(temperature=2.0, max_new_tokens=16, seed=3)
    a = generate(model, PROMPTS[:2], cfg, eos_id=None)
    b = generate(model, PROMPTS[:2], cfg, eos_id=None)
    c = generate(model, PROMPTS[:2], SamplingConfig(temperature=2.0, max_new_tokens=16, seed=4), eos_id=None)
    assert a == b
    assert a != c


def test_num_samples_repeats_each_prompt_in_prompt_major_order(model):
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=5, num_samples=3)
    out = generate(model, PROMPTS[:2], cfg, eos_id=None)
    assert len(out) == 6
    greedy = [generate(model, [p], cfg, eos_id=None)[0] for p in PROMPTS[:2]]
    assert out == [greedy[0]] * 3 + [greedy[1]] * 3
    sampled = generate(model, [PROMPTS[1]], SamplingConfig(temperature=2.0, max_new_tokens=8, num_samples=3),
                       eos_id=None)
    assert len({tuple(s) for s in sampled}) == 3


def test_eos_stops_its_row_and_is_not_returned(model):
    prompts = [PROMPTS[1], PROMPTS[3]]
    full = generate(model, prompts, GREEDY, eos_id=None)
    eos = full[0][3]
    assert eos not in full[0][:3]
    out = generate(model, prompts, GREEDY, eos_id=eos)
    assert out[0] == full[0][:3]
    # The other row is unaffected, up to its own first EOS.
    expected = full[1][:full[1].index(eos)] if eos in full[1] else full[1]
    assert out[1] == expected
    # stop_at_eos=False ignores EOS.
    no_stop = SamplingConfig(temperature=0.0, max_new_tokens=12, stop_at_eos=False)
    assert generate(model, prompts, no_stop, eos_id=eos) == full


def test_stops_early_when_every_row_finished(model):
    first = generate(model, [PROMPTS[1]], GREEDY, eos_id=None)[0][0]
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = generate(model, [PROMPTS[1]], GREEDY, eos_id=first)
    finally:
        handle.remove()
    assert out == [[]]
    assert len(calls) == 1  # only the prefill ran


def test_on_token_called_once_per_token_in_order(model):
    prompts = [PROMPTS[0], PROMPTS[2], PROMPTS[3]]
    full = generate(model, prompts, GREEDY, eos_id=None)
    eos = full[1][5]
    calls: list[tuple[int, int]] = []
    out = generate(model, prompts, GREEDY, eos_id=eos, on_token=lambda row, tok: calls.append((row, tok)))
    assert len(calls) == sum(len(o) for o in out)
    for row in range(3):
        assert [tok for r, tok in calls if r == row] == out[row]
    # Tokens arrive step by step: the k-th token of every row comes before any row's (k+1)-th.
    steps = []
    seen_per_row = [0, 0, 0]
    for row, _ in calls:
        steps.append(seen_per_row[row])
        seen_per_row[row] += 1
    assert steps == sorted(steps)


def test_prompt_longer_than_context_is_truncated_from_the_left(model):
    max_seq_len = model.cfg.max_seq_len
    long_prompt = random_prompt(max_seq_len + 72, 99)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=5)
    out = generate(model, [long_prompt], cfg, eos_id=None)[0]
    assert out == generate(model, [long_prompt[-(max_seq_len - 5):]], cfg, eos_id=None)[0]
    assert out == generate_naive(model, long_prompt, cfg, None)
    assert len(out) == 5


def test_generation_stops_when_context_window_is_full(model):
    max_seq_len = model.cfg.max_seq_len
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=10 * max_seq_len)
    out = generate(model, [PROMPTS[2]], cfg, eos_id=None)[0]
    assert len(out) == max_seq_len - len(PROMPTS[2])
    # A prompt that fills the window keeps its last half and generates the other half.
    out = generate(model, [random_prompt(max_seq_len, 5)], cfg, eos_id=None)[0]
    assert len(out) == max_seq_len // 2


def test_empty_or_out_of_vocab_prompt_is_a_user_error(model):
    from slm.errors import SlmError
    with pytest.raises(SlmError, match="prompt 1 is empty"):
        generate(model, [[1], []], GREEDY, eos_id=None)
    with pytest.raises(SlmError, match="outside the model's vocabulary"):
        generate(model, [[1, 256]], GREEDY, eos_id=None)


# --- streaming text and the REPL -----------------------------------------------------------------------------------

def byte_decode(ids: list[int]) -> str:
    return bytes(ids).decode("utf-8", errors="replace")


class ByteTokenizer:
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return byte_decode(ids)


def test_streamer_holds_back_incomplete_utf8():
    streamer = TextStreamer(byte_decode)
    pieces = [streamer.push(b) for b in "a€b".encode()]
    assert pieces == ["a", "", "", "€", "b"]
    assert streamer.finish() == ""


def test_stream_text_flushes_invalid_trailing_bytes():
    ids = list("hé".encode()) + [0xE2, 0x82]
    pieces = list(stream_text(byte_decode, ids))
    assert "".join(pieces) == byte_decode(ids)
    assert pieces[-1] == "\ufffd"


class Script:
    """input_fn that replays lines, then raises EOFError like Ctrl-D."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = list(lines)

    def __call__(self, prompt: str = "") -> str:
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


class Capture:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []  # (text, end)

    def __call__(self, *args, end: str = "\n", flush: bool = False) -> None:
        self.calls.append((" ".join(str(a) for a in args), end))

    @property
    def text(self) -> str:
        return "".join(text + end for text, end in self.calls)


def test_repl_streams_greedy_continuation_and_applies_commands(model):
    tok = ByteTokenizer()
    out = Capture()
    cfg = SamplingConfig(temperature=0.7, max_new_tokens=8)
    run_repl(model, tok, cfg, input_fn=Script(["/temp 0", "/max 6", "hello", "/quit", "never read"]), print_fn=out)
    expected_ids = generate(model, [tok.encode("hello")], SamplingConfig(temperature=0.0, max_new_tokens=6),
                            eos_id=0)[0]
    streamed = [text for text, end in out.calls if end == ""]
    assert len(streamed) >= 1
    assert "".join(streamed) + [t for t, e in out.calls if e == "\n"][-1] == byte_decode(expected_ids)
    assert "temperature = 0.0" in out.text and "max_new_tokens = 6" in out.text


def test_repl_bad_values_print_one_line_and_continue(model):
    out = Capture()
    script = Script(["/topk x", "/topp 0", "/max -3", "/bogus", "/help", "/topk 1", "hi"])
    run_repl(model, ByteTokenizer(), SamplingConfig(max_new_tokens=3), input_fn=script, print_fn=out)
    messages = [text for text, _ in out.calls]
    assert any(m == "/topk needs an integer, e.g. /topk 50" for m in messages)
    assert any("--sample.top_p must be in (0, 1]" in m and "\n" not in m for m in messages)
    assert any("--sample.max_new_tokens must be >= 1" in m for m in messages)
    assert any(m.startswith("unknown command /bogus") for m in messages)
    assert any("/quit" in m for m in messages)  # help text
    assert "top_k = 1" in messages
    assert not script.lines  # reached the end (EOF) without raising


def test_repl_exits_cleanly_on_immediate_eof(model):
    out = Capture()
    run_repl(model, ByteTokenizer(), SamplingConfig(), input_fn=Script([]), print_fn=out)
    assert len(out.calls) == 2  # banner, then the newline after Ctrl-D


@pytest.mark.slow  # compiles the decode step twice
def test_each_compiled_mode_compiles_its_own_graph():
    """Dynamo keeps compiled graphs on forward_step's code object: the "autotune" engine of a model that already has
    a compiled True engine must compile its own graph, not replay the other mode's (the calibration times both)."""
    from torch._dynamo.utils import counters

    from slm.generate.engine import DecodeEngine

    torch._dynamo.reset()
    m = build_model(preset_config("test", vocab_size=320))
    m.reset_parameters(seed=0)
    cfg = SamplingConfig(temperature=0.0, max_new_tokens=3)
    graphs = []
    for mode in (True, "autotune", True):
        DecodeEngine(m, compile=mode).generate([[1, 2, 3]], cfg, eos_id=None)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[0] + 1  # autotune compiled a graph of its own
    assert graphs[2] == graphs[1]  # a second True engine replays the first one's graph
