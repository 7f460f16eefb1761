"""Dedup: exact (normalized hash, val wins), MinHash near-dup recall/precision on planted copies, decontamination."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datatrove")

from datatrove.data import Document  # noqa: E402

from slm.data.dedup import (  # noqa: E402
    DedupConfig,
    drop_indices,
    exact_hash,
    find_exact_duplicates,
    normalize_exact,
    write_exact_hashes,
)
from slm.errors import SlmError  # noqa: E402

BENCH = Path(__file__).parents[2] / "bench" / "data_pipeline.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_data_pipeline", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(texts: list[str]) -> list[Document]:
    return [Document(text=t, id=str(i), metadata={}) for i, t in enumerate(texts)]


def test_exact_normalization() -> None:
    assert normalize_exact("  Hello\t\tWORLD\n") == "hello world"
    assert exact_hash("Hello   World") == exact_hash("hello world\n") != exact_hash("hello worlds")
    assert exact_hash("ﬁne") == exact_hash("fine")  # NFKC folds ligatures


def test_find_exact_duplicates_keeps_first_and_prefers_val(tmp_path: Path) -> None:
    hashes, remove = tmp_path / "h", tmp_path / "r"
    write_exact_hashes(iter(_docs(["shared text", "train only", "TRAIN  only"])), hashes / "train" / "00000.npy")
    write_exact_hashes(iter(_docs(["other", "train only"])), hashes / "train" / "00001.npy")
    write_exact_hashes(iter(_docs(["Shared Text", "val unique"])), hashes / "val" / "00000.npy")
    stats = find_exact_duplicates(hashes, remove, tasks=2)
    assert list(np.load(remove / "train" / "00000.npy")) == [0, 2]  # copy of val text + second "train only"
    assert list(np.load(remove / "train" / "00001.npy")) == [1]
    assert list(np.load(remove / "val" / "00000.npy")) == [] and list(np.load(remove / "val" / "00001.npy")) == []
    assert stats == {"removed": 3, "removed_train_copies_of_val": 1, "removed_val": 0, "removed_train": 3}


def test_drop_indices(tmp_path: Path) -> None:
    np.save(tmp_path / "r.npy", np.asarray([0, 3, 4], dtype=np.uint32))
    kept = [d.text for d in drop_indices(iter(_docs(list("abcdef"))), tmp_path / "r.npy")]
    assert kept == ["b", "c", "f"]
    assert [d.text for d in drop_indices(iter(_docs(list("ab"))), tmp_path / "missing.npy")] == ["a", "b"]


def test_dedup_config_validation() -> None:
    with pytest.raises(SlmError, match="dedup.rows"):
        DedupConfig(rows=0)
    with pytest.raises(SlmError, match="word_tokenizer"):
        DedupConfig(word_tokenizer="nltk")


def test_near_dedup_recall_and_precision_on_planted_copies(tmp_path: Path) -> None:
    bench = _bench()
    result = bench.dedup_quality(tmp_path, n_originals=60, n_variants=60, dedup=bench.TUNED, seed=1)
    assert result["planted_duplicates"] == 60
    assert result["recall"] >= 0.95 and result["precision"] >= 0.99, result


def test_perturbations_are_near_not_exact() -> None:
    bench = _bench()
    rng = random.Random(0)
    vocab = bench._vocabulary(rng, 500)
    text = bench._document(rng, vocab, 200)
    for kind in ("case", "whitespace", "insertions", "edits"):
        variant = bench.perturb(text, kind, rng, vocab)
        assert variant != text
        if kind in ("case", "whitespace"):
            assert normalize_exact(variant) == normalize_exact(text)
    words, edited = text.split(), bench.perturb(text, "edits", rng, vocab).split()
    assert len(words) == len(edited) and 0.05 < sum(a != b for a, b in zip(words, edited)) / len(words) <= 0.1


def test_train_copies_of_val_documents_are_removed(tmp_path: Path) -> None:
    from slm.data.pipeline import load_data_recipe, run_data_pipeline

    bench = _bench()
    rng = random.Random(2)
    vocab = bench._vocabulary(rng, 3000)
    held_out = [bench._document(rng, vocab, 150) for _ in range(5)]
    train = [bench._document(rng, vocab, 150) for _ in range(40)]
    train += [bench.perturb(held_out[0], "edits", rng, vocab), held_out[1].upper(), bench.perturb(held_out[2],
              "insertions", rng, vocab)]
    for name, texts in (("eval", held_out), ("web", train)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    recipe = load_data_recipe(None, [], {
        "name": "decont", "out": str(tmp_path / "out"), "val_fraction": 0.0, "progress": False,
        "sources": [{"name": "eval", "path": str(tmp_path / "eval.jsonl"), "split": "val"},
                    {"name": "web", "path": str(tmp_path / "web.jsonl")}],
        "dedup": bench.TUNED, "pack": {"tokenizer": "byte"}, "executor": {"tasks": 2, "workers": 1}})
    report = run_data_pipeline(recipe)
    assert report["exact_dedup"]["removed_train_copies_of_val"] == 1  # the upper-cased copy
    assert report["near_dedup"]["contamination"]["train_docs_matching_val"] == 2
    assert report["near_dedup"]["removed_documents"] == 2
    assert report["pack"]["val"]["documents"] == 5  # val is never thinned in favour of train
    assert report["pack"]["train"]["documents"] == 40
