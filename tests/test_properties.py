"""Property-based tests (hypothesis): parsers and loaders either return a value or raise SlmError, never anything
else; tokenizers round-trip any text; the chat template's assistant mask covers exactly the assistant contents.

Bounded for the default tier: each property runs SLM_FUZZ_EXAMPLES examples (default 40; `SLM_FUZZ_EXAMPLES=2000
pytest tests/test_properties.py` for a long fuzzing session), with no deadline (shared CPUs).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slm.config import RunConfig, build_run_config, load_run_config, load_saved_config, parse_overrides, save_config
from slm.errors import SlmError, loads_json

EXAMPLES = int(os.environ.get("SLM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# values of every kind a YAML recipe or an override can produce, including the hostile ones
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["nan", "-inf", "1e400", "0", "-1", "auto", "true", "[1, 2]", "{a: 1}", "1_000",
                                     "\x00", "ü", "cpu", "cuda:0", "adamw", "cosine", "byte"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def _section_keys() -> dict[str, list[str]]:
    import dataclasses

    cfg = RunConfig()
    return {f.name: [g.name for g in dataclasses.fields(getattr(cfg, f.name))] for f in dataclasses.fields(cfg)}


SECTIONS = _section_keys()
KEYS = st.sampled_from([(s, k) for s, keys in SECTIONS.items() for k in keys] + [("train", "nope"), ("nope", "x")])


@FUZZ
@given(st.lists(st.tuples(KEYS, VALUES), max_size=4))
def test_config_from_any_values_is_a_config_or_one_slm_error(pairs):
    data: dict = {}
    for (section, key), value in pairs:
        data.setdefault(section, {})[key] = value
    try:
        cfg = build_run_config(data)
    except SlmError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(cfg, RunConfig)


@FUZZ
@given(st.lists(st.tuples(KEYS, st.text(max_size=16)), max_size=4))
def test_overrides_from_any_text_are_a_config_or_one_slm_error(pairs):
    args = [f"--{section}.{key}={text}" for (section, key), text in pairs]
    try:
        cfg = load_run_config(None, args)
    except SlmError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(cfg, RunConfig)


@FUZZ
@given(st.lists(st.text(max_size=10), max_size=5))
def test_override_parser_takes_any_argument_list(args):
    try:
        tree = parse_overrides(args)
    except SlmError:
        return
    assert isinstance(tree, dict)


@FUZZ
@given(lr=st.floats(min_value=1e-8, max_value=1.0), steps=st.integers(1, 10**6), seed=st.integers(0, 2**62))
def test_a_valid_config_survives_the_save_load_round_trip(lr, steps, seed, tmp_path_factory):
    cfg = build_run_config({"train": {"lr": lr, "steps": steps}, "run": {"seed": seed}, "model": {"preset": "test"}})
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    save_config(cfg, path)
    assert load_saved_config(path) == cfg


JSON_FRAGMENTS = st.sampled_from([
    '{"text": "a"}', '{"text": 1}', "[1, 2]", "1" * 4400, '{"text": "x", "n": ' + "9" * 5000 + "}",
    "[" * 5000 + "]" * 5000, '{"text": "\\ud800"}', '{"text": "\\ud83d\\ude00"}', '{"text": "\\udc00x"}', "{", "",
    "null", '"just a string"', '{"content": "c", "text": null}', "\ufeff{\"text\": \"bom\"}", '{"text": "\\u0000"}'])
LINES = st.lists(st.one_of(JSON_FRAGMENTS, st.text(max_size=20)), min_size=1, max_size=5)


@FUZZ
@given(LINES)
def test_loads_json_raises_only_json_decode_errors(lines):
    for line in lines:
        try:
            value = loads_json(line)
        except json.JSONDecodeError:
            continue
        json.dumps(value).encode("utf-8")  # whatever it returns can be encoded again


def _write(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


@FUZZ
@given(lines=LINES, raw=st.binary(max_size=64), as_bytes=st.booleans())
def test_corpus_reader_returns_documents_or_one_slm_error(lines, raw, as_bytes):
    from slm.data.sources import iter_documents

    data = raw if as_bytes else "\n".join(lines).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as d:
        for name in ("c.jsonl", "c.txt"):
            path = _write(d, name, data)
            try:
                docs = list(iter_documents(str(path)))
            except SlmError as exc:
                assert "\n" not in str(exc)
                continue
            for _key, text in docs:
                text.encode("utf-8")  # every document is encodable text


@FUZZ
@given(records=st.lists(st.one_of(VALUES, st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot"]),
                                                 "content": st.one_of(st.text(max_size=20), st.integers())}),
                          max_size=4)})), max_size=4), policy=st.sampled_from(["error", "skip"]))
def test_posttrain_loaders_return_examples_or_one_slm_error(records, policy, byte_formatter):
    from slm.posttrain.data import BadExamples, load_conversations, load_preferences

    lines = []
    for r in records:
        try:
            lines.append(json.dumps(r, allow_nan=True))
        except (TypeError, ValueError):
            continue
    with tempfile.TemporaryDirectory() as d:
        path = _write(d, "chats.jsonl", "\n".join(lines).encode("utf-8", "surrogatepass"))
        for load in (load_conversations, load_preferences):
            try:
                out = load([str(path)], byte_formatter, 256, BadExamples(policy))
            except SlmError as exc:
                assert "\n" not in str(exc)
                continue
            assert isinstance(out, list)


@pytest.fixture(scope="module")
def byte_formatter():
    from slm.tokenizer import byte_tokenizer
    from slm.tokenizer.chat_template import ChatFormatter

    return ChatFormatter(byte_tokenizer())


@pytest.fixture(scope="module")
def bpe(corpus_dir):
    from slm.tokenizer import train_bpe

    texts = (p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt")))
    return train_bpe(texts, vocab_size=400, min_frequency=2, show_progress=False)


TEXT = st.text(max_size=60)  # any Unicode scalar values (hypothesis leaves out lone surrogates)


@FUZZ
@given(TEXT)
def test_byte_tokenizer_round_trips_any_text(text):
    from slm.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@FUZZ
@given(text=TEXT)
def test_bpe_tokenizer_round_trips_any_text(text, bpe):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


CONTENT = st.text(max_size=20).filter(lambda s: "<|" not in s)


@FUZZ
@given(turns=st.lists(st.tuples(CONTENT, CONTENT), min_size=1, max_size=3), system=st.one_of(st.none(), CONTENT))
def test_chat_template_masks_exactly_the_assistant_turns(turns, system, byte_formatter):
    tok = byte_formatter.tokenizer
    messages = ([{"role": "system", "content": system}] if system is not None else [])
    for user, assistant in turns:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    rendered = byte_formatter.encode(messages)
    assert len(rendered.ids) == len(rendered.mask)
    trained = tok.decode([i for i, m in zip(rendered.ids, rendered.mask) if m])
    assert trained == "".join(a + "<|im_end|>" for _, a in turns)
