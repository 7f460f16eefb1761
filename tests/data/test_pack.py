"""Packing: the token stream is exactly the documents plus EOS, the split is by content, outputs are deterministic."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from slm.data import pack
from slm.data.pack import prepare_dataset
from slm.data.sources import iter_documents
from slm.data.stats import _eos_lengths, dataset_stats, format_stats
from slm.errors import SlmError
from slm.tokenizer import Tokenizer, byte_tokenizer, train_bpe

WORDS = "the of and to in is was that for on with as by at from his her they we you this not but".split()


def _make_corpus(root: Path, n_docs: int = 40) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(n_docs):
        words = rng.choice(WORDS, size=int(rng.integers(5, 60)))
        text = f"Document {i}: " + " ".join(words) + (" ünï 😀" if i % 7 == 0 else "")
        (root / f"doc{i:03d}.txt").write_text(text, encoding="utf-8")
    for name in ("dup_a.txt", "dup_b.txt", "dup_c.txt"):  # identical texts must share a split
        (root / name).write_text("the very same text in three files", encoding="utf-8")
    return root


def _stream(out: Path, split: str) -> np.ndarray:
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["splits"][split]["shards"]
    parts = [np.fromfile(out / s["file"], dtype=np.dtype(manifest["dtype"]).newbyteorder("<")) for s in shards]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _split_docs(stream: np.ndarray, tok: Tokenizer) -> list[str]:
    ends = np.flatnonzero(stream == tok.eos_id)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(stream[s:e]) for s, e in zip(starts, ends, strict=True)]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(iter([" ".join(WORDS) * 5, "Document 12: ünï 😀"] * 10), vocab_size=320, show_progress=False)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return _make_corpus(tmp_path / "corpus")


def test_stream_is_documents_plus_eos_and_split_is_by_content(tmp_path: Path, corpus: Path) -> None:
    tok = byte_tokenizer()
    out = tmp_path / "out"
    manifest = prepare_dataset([str(corpus)], tok, str(out), val_fraction=0.25, seed=3, num_workers=1, progress=False)
    docs = [t for _, t in iter_documents(str(corpus))]
    val_texts = set(_split_docs(_stream(out, "val"), tok))
    train_texts = set(_split_docs(_stream(out, "train"), tok))
    assert val_texts and train_texts and not (val_texts & train_texts)
    assert sorted(_split_docs(_stream(out, "train"), tok) + _split_docs(_stream(out, "val"), tok)) == sorted(docs)
    for split, members in (("train", train_texts), ("val", val_texts)):
        expected = [i for d in docs if d in members for i in tok.encode(d) + [tok.eos_id]]
        assert _stream(out, split).tolist() == expected  # no token lost, duplicated or reordered
    # The documented rule: val iff blake2b(seed, text) / 2**64 < val_fraction.
    for d in docs:
        digest = hashlib.blake2b(b"3\0" + d.encode(), digest_size=8).digest()
        assert (int.from_bytes(digest, "big") / 2**64 < 0.25) == (d in val_texts)
    # Manifest counts.
    for split, members in (("train", train_texts), ("val", val_texts)):
        info = manifest["splits"][split]
        chosen = [d for d in docs if d in members]
        assert info["documents"] == len(chosen)
        assert info["bytes"] == sum(len(d.encode()) for d in chosen)
        assert info["tokens"] == len(_stream(out, split)) == sum(s["tokens"] for s in info["shards"])
        for shard in info["shards"]:
            assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "slm-tokens-v1" and manifest["dtype"] == "uint16"
    assert (manifest["vocab_size"], manifest["eos_id"], manifest["tokenizer_hash"]) == (
        tok.vocab_size,
        tok.eos_id,
        tok.hash(),
    )
    assert len(manifest["sources"]) == 43
    first = manifest["sources"][0]
    assert first["sha256"] == hashlib.sha256(Path(first["path"]).read_bytes()).hexdigest()
    assert first["bytes"] == Path(first["path"]).stat().st_size
    assert manifest["doc_stats"] == {"replaced_docs": 0, "skipped_docs": 0, "empty_docs": 0}
    assert (out / "tokenizer.json").is_file() and manifest["tokenizer_file"] == "tokenizer.json"


def test_small_inputs_are_tokenized_without_a_process_pool(tmp_path: Path, corpus: Path, bpe: Tokenizer,
                                                           monkeypatch) -> None:
    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started for a small input")

    monkeypatch.setattr(pack.multiprocessing, "get_context", no_pool)
    manifest = prepare_dataset([str(corpus)], bpe, str(tmp_path / "o"), num_workers=2, progress=False)
    assert manifest["splits"]["train"]["tokens"] > 0
    monkeypatch.setattr(pack, "POOL_MIN_BYTES", 0)
    with pytest.raises(AssertionError, match="process pool"):
        prepare_dataset([str(corpus)], bpe, str(tmp_path / "p"), num_workers=2, progress=False)


def test_one_and_two_workers_write_identical_files(tmp_path: Path, corpus: Path, bpe: Tokenizer, monkeypatch) -> None:
    monkeypatch.setattr(pack, "_CHUNK_DOCS", 3)  # many small tasks, so ordering across workers is exercised
    monkeypatch.setattr(pack, "POOL_MIN_BYTES", 0)  # the pool even for this small corpus
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        prepare_dataset(
            [str(corpus)], bpe, str(out), val_fraction=0.2, num_workers=workers, shard_tokens=200, progress=False
        )
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    assert sum(n.startswith("train_") for n in names) > 1
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_shards_respect_shard_tokens(tmp_path: Path, corpus: Path) -> None:
    manifest = prepare_dataset(
        [str(corpus)], byte_tokenizer(), str(tmp_path / "o"), shard_tokens=100, num_workers=1, progress=False
    )
    sizes = [s["tokens"] for s in manifest["splits"]["train"]["shards"]]
    assert all(n == 100 for n in sizes[:-1]) and 0 < sizes[-1] <= 100
    assert [s["file"] for s in manifest["splits"]["train"]["shards"]][:2] == ["train_00000.bin", "train_00001.bin"]


def test_dtype_uint16_or_uint32(tmp_path: Path, corpus: Path) -> None:
    small = byte_tokenizer()
    assert pack.token_dtype(65536) == np.uint16 and pack.token_dtype(65537) == np.uint32
    big = byte_tokenizer(extra_special_tokens=[f"<|x{i}|>" for i in range(65300)])
    assert big.vocab_size > 65536
    m16 = prepare_dataset([str(corpus)], small, str(tmp_path / "a"), num_workers=1, progress=False)
    m32 = prepare_dataset([str(corpus)], big, str(tmp_path / "b"), num_workers=1, progress=False)
    assert (m16["dtype"], m32["dtype"]) == ("uint16", "uint32")
    shard16 = tmp_path / "a" / m16["splits"]["train"]["shards"][0]["file"]
    shard32 = tmp_path / "b" / m32["splits"]["train"]["shards"][0]["file"]
    assert shard32.stat().st_size == 2 * shard16.stat().st_size
    assert np.array_equal(_stream(tmp_path / "a", "train"), _stream(tmp_path / "b", "train"))


def test_tiny_corpus_still_gets_a_val_document(tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("first paragraph\n\nsecond paragraph\n\nthird one\n", encoding="utf-8")
    tok = byte_tokenizer()
    manifest = prepare_dataset([str(src)], tok, str(tmp_path / "o"), val_fraction=1e-12, num_workers=1, progress=False)
    assert (manifest["splits"]["train"]["documents"], manifest["splits"]["val"]["documents"]) == (2, 1)
    hashes = {t: pack.split_hash(t, 0) for t in ("first paragraph", "second paragraph", "third one")}
    assert _split_docs(_stream(tmp_path / "o", "val"), tok) == [min(hashes, key=hashes.get)]
    none = prepare_dataset([str(src)], tok, str(tmp_path / "z"), val_fraction=0.0, num_workers=1, progress=False)
    assert none["splits"]["val"] == {"documents": 0, "bytes": 0, "tokens": 0, "shards": []}


def test_errors(tmp_path: Path, corpus: Path) -> None:
    tok = byte_tokenizer()
    one = tmp_path / "one.txt"
    one.write_text("a single document", encoding="utf-8")
    with pytest.raises(SlmError, match="validation split"):
        prepare_dataset([str(one)], tok, str(tmp_path / "o"), val_fraction=0.999999, num_workers=1, progress=False)
    with pytest.raises(SlmError, match="val_fraction"):
        prepare_dataset([str(one)], tok, str(tmp_path / "o"), val_fraction=1.5, progress=False)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("do not delete", encoding="utf-8")
    with pytest.raises(SlmError, match="not a prepared dataset"):
        prepare_dataset([str(corpus)], tok, str(precious), num_workers=1, progress=False)
    assert (precious / "keep.txt").is_file()
    with pytest.raises(SlmError, match="missing"):
        prepare_dataset([str(tmp_path / "missing")], tok, str(tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_rerun_replaces_a_prepared_dataset(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "o"
    prepare_dataset([str(corpus)], byte_tokenizer(), str(out), num_workers=1, progress=False)
    (out / "stale.bin").write_bytes(b"x")
    prepare_dataset([str(corpus)], byte_tokenizer(), str(out), num_workers=1, progress=False)
    assert not (out / "stale.bin").exists()


def test_stats_on_prepared_and_raw(tmp_path: Path, corpus: Path) -> None:
    tok = byte_tokenizer()
    out = tmp_path / "o"
    manifest = prepare_dataset([str(corpus)], tok, str(out), val_fraction=0.2, num_workers=1, progress=False)
    stats = dataset_stats(str(out))
    docs = [t for _, t in iter_documents(str(corpus))]
    lengths = sorted(len(d.encode()) for d in docs)
    got = stats["splits"]["train"]["documents"] + stats["splits"]["val"]["documents"]
    assert got == len(docs)
    assert stats["splits"]["train"]["tokens"] == manifest["splits"]["train"]["tokens"]
    raw = dataset_stats(str(corpus), tok)
    assert (
        raw["splits"]["all"]["doc_tokens"]["min"] == lengths[0]
        and raw["splits"]["all"]["doc_tokens"]["max"] == lengths[-1]
    )
    assert raw["splits"]["all"]["bytes_per_token"] == pytest.approx(1.0)
    assert raw["splits"]["all"]["tokens"] == sum(lengths) + len(docs)
    table = format_stats(stats)
    assert "train" in table and "val" in table and "doc tokens p95" in table
    assert dataset_stats(str(corpus))["splits"]["all"]["tokens"] is None


def test_eos_lengths_across_blocks() -> None:
    stream = np.array([5, 6, 0, 7, 0, 8, 9, 9, 0, 0])
    blocks = [stream[:1], stream[1:4], stream[4:7], stream[7:]]
    assert _eos_lengths(blocks, 0).tolist() == [2, 1, 3, 0]
    assert _eos_lengths([stream], 0).tolist() == [2, 1, 3, 0]
