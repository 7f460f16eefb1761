"""Mixing: weights -> target token counts within 1 %, seeded and order-independent; packed rows; pipeline-level mix."""

from __future__ import annotations

import json
import random
import string
from pathlib import Path

import numpy as np
import pytest

from slm.data.mix import BINS, RowExporter, mix_bin, plan_mix
from slm.errors import SlmError


def _hist(rng: np.random.Generator, docs: int, mean_tokens: int) -> np.ndarray:
    h = np.zeros(BINS, dtype=np.int64)
    np.add.at(h, rng.integers(0, BINS, docs), rng.integers(1, 2 * mean_tokens, docs))
    return h


def test_plan_hits_targets_within_one_percent() -> None:
    rng = np.random.default_rng(0)
    hist = np.stack([_hist(rng, 5000, 300), _hist(rng, 800, 500), _hist(rng, 3000, 50)])
    plan = plan_mix(hist, ["web", "code", "math"], [7, 2, 1], total_tokens=2_000_000)
    assert [p["target_tokens"] for p in plan] == [1_400_000, 400_000, 200_000]
    for p in plan:
        assert abs(p["planned_tokens"] - p["target_tokens"]) / p["target_tokens"] < 0.01
    # 'code' has 800 docs * ~500 tokens: 400k needs whole copies plus a remainder (up-sampling)
    assert plan[1]["copies"] >= 1 and plan[0]["copies"] == 0


def test_default_total_keeps_dataset_size_and_zero_tokens_is_an_error() -> None:
    rng = np.random.default_rng(1)
    hist = np.stack([_hist(rng, 2000, 100), _hist(rng, 2000, 100)])
    plan = plan_mix(hist, ["a", "b"], [1, 1])
    assert sum(p["target_tokens"] for p in plan) == pytest.approx(hist.sum(), abs=1)
    with pytest.raises(SlmError, match=r"sources\[b\]: no train tokens left"):
        plan_mix(np.stack([hist[0], np.zeros(BINS, dtype=np.int64)]), ["a", "b"], [1, 1])


def test_mix_bin_is_seeded_and_stable() -> None:
    assert mix_bin(0, "web", "a.jsonl:1") == mix_bin(0, "web", "a.jsonl:1")
    bins = [mix_bin(0, "web", f"k{i}") for i in range(2000)]
    assert bins != [mix_bin(1, "web", f"k{i}") for i in range(2000)]
    assert 0 <= min(bins) and max(bins) < BINS and np.std(bins) > BINS / 4  # roughly uniform


def test_row_exporter_writes_exact_length_rows(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    exporter = RowExporter(tmp_path / "packed" / "8", 8)
    stream = np.arange(100, dtype=np.uint16)
    for a in range(0, 100, 13):  # chunk boundaries do not line up with rows
        exporter.write(stream[a : a + 13])
    exporter.close()
    table = pq.read_table(tmp_path / "packed" / "8" / "train-00000.parquet")
    rows = np.asarray(table.column("input_ids").to_pylist())
    assert exporter.rows == 12 and rows.shape == (12, 8)
    assert np.array_equal(rows.ravel(), np.arange(96))


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(n))


def test_pipeline_mix_within_one_percent(tmp_path: Path) -> None:
    pytest.importorskip("datatrove")
    from slm.data.loader import TokenDataset
    from slm.data.pipeline import load_data_recipe, run_data_pipeline

    rng = random.Random(0)
    sources = []
    for name, docs, words in (("big", 900, 30), ("mid", 300, 40), ("small", 150, 20)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": _words(rng, words)}) + "\n" for _ in range(docs)))
        sources.append({"name": name, "path": str(path)})
    sources[0]["weight"], sources[1]["weight"], sources[2]["weight"] = 7, 2, 1
    recipe = load_data_recipe(None, ["--executor.tasks=2", "--executor.workers=1"], {
        "name": "mix", "out": str(tmp_path / "out"), "val_fraction": 0.05, "progress": False, "sources": sources,
        "dedup": {"near": False}, "mix": {"total_tokens": 400_000, "seed": 3}, "pack": {"tokenizer": "byte"}})
    report = run_data_pipeline(recipe)
    written = {p["source"]: p["written"]["tokens"] for p in report["mix"]}
    for p, share in zip(report["mix"], (0.7, 0.2, 0.1), strict=True):
        assert p["target_tokens"] == round(400_000 * share)
        assert abs(written[p["source"]] - p["target_tokens"]) / p["target_tokens"] < 0.01, p
    assert report["mix"][2]["copies"] >= 1  # 'small' had to be up-sampled
    ds = TokenDataset(tmp_path / "out")
    assert ds.tokens("train") == sum(written.values()) == report["pack"]["train"]["tokens"]
