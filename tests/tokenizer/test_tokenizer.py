"""Tokenizer behaviour: lossless round trips, id layout, transformers compatibility, loading, hashing, errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from slm.errors import SlmError
from slm.tokenizer import CHATML_TEMPLATE, Tokenizer, byte_tokenizer, load_tokenizer, train_bpe

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

SAMPLES = [
    "",
    "hello world",
    "  leading spaces and trailing  ",
    "line one\r\nline two\r\n\r\n",
    "tabs\tand\vvertical\fforms\x00nul\x1bescape\x7f",
    "emoji 😀👩‍👩‍👧 flags 🇫🇷",
    "中文字符 日本語のテキスト 한국어",
    "combining: e\u0301 a\u0308 n\u0303 \u0345",
    "zero width\u200b joiner\u200d bom\ufeff rtl \u202e",
    "ünïcödé ñandú Ωμέγα кириллица",
    " \n \n  \t",
    "<|eos|> literal specials <|im_start|>user",
    "1234567890 3.14159 x=y+z; f(a, b)",
]


def _corpus() -> list[str]:
    base = [
        "The quick brown fox jumps over the lazy dog. " * 3,
        "To be, or not to be, that is the question.\n",
        "Ünïcödé text with ñ and ü, 中文 and emoji 😀 appear here.\r\n",
        "def f(x):\n    return x * 2  # code\n",
    ]
    return base * 20


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(iter(_corpus()), vocab_size=400, min_frequency=2, show_progress=False)


@pytest.fixture(scope="module")
def byte() -> Tokenizer:
    return byte_tokenizer()


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_fixed_samples(text: str, bpe: Tokenizer, byte: Tokenizer) -> None:
    for tok in (bpe, byte):
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_round_trip_any_unicode(bpe: Tokenizer, byte: Tokenizer, text: str) -> None:
    for tok in (bpe, byte):
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_ids_are_raw_bytes(text: str, byte: Tokenizer) -> None:
    if "<|" in text:  # special strings are matched as specials, by design
        return
    assert byte.encode(text) == list(text.encode("utf-8"))


def test_byte_tokenizer_layout() -> None:
    tok = byte_tokenizer(extra_special_tokens=["<|tool|>"])
    assert tok.vocab_size == 256 + 6
    assert [tok.special_tokens[s] for s in SPECIALS] == [256, 257, 258, 259, 260]
    assert tok.token_to_id("<|tool|>") == 261
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (256, 257, 258)


def test_bpe_specials_first_and_stable(bpe: Tokenizer) -> None:
    assert {s: bpe.special_tokens[s] for s in SPECIALS} == {s: i for i, s in enumerate(SPECIALS)}
    again = train_bpe(iter(_corpus()), vocab_size=400, show_progress=False)
    assert again.hash() == bpe.hash()
    assert 256 + len(SPECIALS) < bpe.vocab_size <= 400


def test_encode_is_plain_and_adds_specials_only_when_asked(bpe: Tokenizer) -> None:
    ids = bpe.encode("hello")
    assert bpe.bos_id not in ids and bpe.eos_id not in ids
    assert bpe.encode("hello", add_bos=True, add_eos=True) == [bpe.bos_id, *ids, bpe.eos_id]
    assert bpe.encode_batch(["hello", "world"]) == [ids, bpe.encode("world")]
    assert bpe.decode([bpe.bos_id, *ids], skip_special=True) == "hello"
    assert bpe.decode([bpe.bos_id, *ids]) == "<|bos|>hello"


@pytest.mark.parametrize("text", SAMPLES)
def test_token_byte_lengths_sum_to_utf8_length(text: str, bpe: Tokenizer, byte: Tokenizer) -> None:
    for tok in (bpe, byte):
        lengths = tok.token_byte_lengths()
        assert lengths.shape == (tok.vocab_size,)
        ids = tok.encode(text)
        expected = len(text.encode("utf-8"))
        expected -= sum(len(s.encode()) * text.count(s) for s in SPECIALS)  # specials contribute 0 bytes
        assert int(lengths[ids].sum()) == expected
        assert all(lengths[i] == 0 for i in tok.special_tokens.values())


def test_save_loads_in_transformers(tmp_path, bpe: Tokenizer) -> None:
    transformers = pytest.importorskip("transformers")
    bpe.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in SAMPLES:
        ids = bpe.encode(text)
        assert fast.encode(text, add_special_tokens=False) == ids
        assert auto.encode(text) == ids  # no post-processor adds BOS/EOS behind our back
        assert auto.decode(ids) == text
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id) == (bpe.bos_id, bpe.eos_id, bpe.pad_id)
    prompt = auto.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_save_load_keeps_hash_ids_and_specials(tmp_path, bpe: Tokenizer) -> None:
    bpe.save(tmp_path)
    for source in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = load_tokenizer(source)
        assert loaded.hash() == bpe.hash()
        assert loaded.special_tokens == bpe.special_tokens
        assert loaded.vocab_size == bpe.vocab_size
        assert loaded.encode(SAMPLES[5]) == bpe.encode(SAMPLES[5])
    assert byte_tokenizer().hash() != bpe.hash()


def test_pickles_through_json(bpe: Tokenizer) -> None:
    clone = pickle.loads(pickle.dumps(bpe))
    assert clone.hash() == bpe.hash() and clone.eos_id == bpe.eos_id


def _gpt2_like_hf_tokenizer() -> HFTokenizer:
    inner = HFTokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    inner.train_from_iterator(_corpus(), trainer=trainer)
    return inner


def test_load_gpt2_style_vocab_and_merges(tmp_path) -> None:
    inner = _gpt2_like_hf_tokenizer()
    inner.model.save(str(tmp_path))
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    tok = load_tokenizer(tmp_path)
    eot = inner.token_to_id("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == tok.pad_id == eot  # GPT-2's one special serves every role
    base = inner.get_vocab_size(with_added_tokens=True)
    assert tok.vocab_size == base + 2  # ChatML markers appended for the default chat template
    assert (tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")) == (base, base + 1)
    for text in SAMPLES[1:8]:
        assert tok.encode(text) == inner.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text)) == text
    assert tok.chat_template == CHATML_TEMPLATE


def test_folder_config_names_specials_and_template(tmp_path) -> None:
    inner = _gpt2_like_hf_tokenizer()
    inner.add_special_tokens(["<s>", "</s>", "<pad>"])
    inner.save(str(tmp_path / "tokenizer.json"))
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": "<pad>", "chat_template": template}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert tok.vocab_size == inner.get_vocab_size(with_added_tokens=True)  # nothing added: it has its own template
    assert tok.chat_template == template


def test_load_drops_bos_adding_post_processor(tmp_path) -> None:
    from tokenizers import processors

    inner = _gpt2_like_hf_tokenizer()
    eot = inner.token_to_id("<|endoftext|>")
    inner.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", eot)]
    )
    inner.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.encode("hello") == inner.encode("hello", add_special_tokens=False).ids


def test_load_errors_name_the_path(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SlmError, match="nope"):
        load_tokenizer(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlmError, match="empty"):
        load_tokenizer(empty)
    bad = tmp_path / "bad" / "tokenizer.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(SlmError, match="tokenizer.json"):
        load_tokenizer(bad.parent)


def test_train_bpe_errors(tmp_path) -> None:
    with pytest.raises(SlmError, match="vocab_size"):
        train_bpe(iter(_corpus()), vocab_size=260, show_progress=False)
    with pytest.raises(SlmError, match="no text"):
        train_bpe(iter(["", "  \n"]), vocab_size=300, show_progress=False)
    with pytest.raises(SlmError, match="missing.txt"):
        train_bpe([tmp_path / "missing.txt"], vocab_size=300, show_progress=False)


def test_train_bpe_from_files_tolerates_bad_utf8(tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes("".join(_corpus()).encode() + b"\xff\xfe broken bytes\n")
    tok = train_bpe([path], vocab_size=350, show_progress=False)
    assert tok.decode(tok.encode("The quick brown fox")) == "The quick brown fox"
    assert np.all(tok.token_byte_lengths()[:5] == 0)
