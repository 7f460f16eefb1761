"""Shared hermetic fixtures: a small synthetic corpus, a byte tokenizer and a prepared dataset of it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = ("the king queen castle sword river light night day love war peace bread wine song ship sea wind fire "
         "stone gold silver crown road horse tower bell garden letter friend enemy").split()


def make_corpus(folder: Path, n_docs: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
                     for _ in range(rng.randint(5, 15))]
        (folder / f"doc_{i:03d}.txt").write_text(" ".join(sentences) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def byte_tok():
    from slm.tokenizer import byte_tokenizer

    return byte_tokenizer()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory, corpus_dir, byte_tok) -> Path:
    from slm.data.pack import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_dataset([str(corpus_dir)], byte_tok, str(out), val_fraction=0.1, seed=0, num_workers=1, progress=False)
    return out
