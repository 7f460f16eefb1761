"""Loader: windows cover the stream exactly once, resume is exact (epochs, seq_len changes), ranks partition batches."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slm.data.loader import BatchLoader, TokenDataset, iter_eval_batches
from slm.data.pack import prepare_dataset
from slm.errors import SlmError
from slm.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    src = root / "input.txt"
    rng = np.random.default_rng(1)
    paragraphs = ["".join(chr(c) for c in rng.integers(97, 123, size=int(rng.integers(10, 80)))) for _ in range(60)]
    src.write_text("\n\n".join(paragraphs), encoding="utf-8")
    # shard_tokens=97 (prime) so that rows straddle shard files.
    prepare_dataset(
        [str(src)],
        byte_tokenizer(),
        str(root / "out"),
        val_fraction=0.1,
        shard_tokens=97,
        num_workers=1,
        progress=False,
    )
    return root / "out"


def _stream(path: Path, split: str) -> np.ndarray:
    manifest = json.loads((path / "manifest.json").read_text())
    return np.concatenate([np.fromfile(path / s["file"], dtype="<u2") for s in manifest["splits"][split]["shards"]])


def test_rows_cover_the_stream_exactly_once(prepared: Path) -> None:
    ds = TokenDataset(prepared)
    stream = _stream(prepared, "train")
    assert ds.tokens("train") == len(stream) and len(ds._shards["train"]) > 3
    for seq_len in (7, 64, len(stream) - 1):
        rows = ds.num_rows("train", seq_len)
        assert rows == (len(stream) - 1) // seq_len
        xs, ys = zip(*iter_eval_batches(ds, "train", seq_len, batch_size=5), strict=True)
        x, y = torch.cat(xs), torch.cat(ys)
        assert x.shape == y.shape == (rows, seq_len) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # the single shift
        rebuilt = torch.cat([x.reshape(-1), y[-1, -1:]])  # every row's inputs, then the final target
        assert np.array_equal(rebuilt.numpy(), stream[: rows * seq_len + 1])
    assert len(list(iter_eval_batches(ds, "train", 7, batch_size=5, max_batches=2))) == 2


def test_one_epoch_visits_every_row_once(prepared: Path) -> None:
    ds = TokenDataset(prepared)
    seq_len, batch = 16, 4
    loader = BatchLoader(ds, "train", seq_len, batch, seed=5)
    all_rows = {tuple(r) for r in ds.rows("train", np.arange(loader.num_rows), seq_len)[:, :-1].tolist()}
    seen = [tuple(r) for _ in range(loader.steps_per_epoch) for r in next(loader)[0].tolist()]
    assert len(seen) == len(set(seen)) == loader.steps_per_epoch * batch
    assert set(seen) <= all_rows
    assert loader.state_dict()["epoch"] == 0
    next(loader)
    assert loader.state_dict()["epoch"] == 1


def _take(loader: BatchLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(itertools.islice(loader, n))


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("prefetch", [True, False])
def test_resume_is_exact_across_epochs(prepared: Path, prefetch: bool) -> None:
    ds = TokenDataset(prepared)
    reference = BatchLoader(ds, "train", 32, 3, seed=7, prefetch=prefetch)
    n = reference.steps_per_epoch * 2 + 3  # crosses two epoch boundaries
    expected = _take(reference, n)
    assert not _same(
        expected[: reference.steps_per_epoch], expected[reference.steps_per_epoch : 2 * reference.steps_per_epoch]
    )
    for cut in (1, reference.steps_per_epoch, reference.steps_per_epoch + 2):
        first = BatchLoader(ds, "train", 32, 3, seed=7, prefetch=prefetch)
        got = _take(first, cut)
        state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
        resumed = BatchLoader(ds, "train", 32, 3, seed=7, prefetch=prefetch)
        resumed.load_state_dict(state)
        assert _same(got + _take(resumed, n - cut), expected)


def test_resume_is_exact_after_set_seq_len(prepared: Path) -> None:
    ds = TokenDataset(prepared)

    def run(loader: BatchLoader, stop: int | None = None) -> tuple[list, dict | None]:
        out = _take(loader, 4)
        loader.set_seq_len(48)
        loader.set_seq_len(48)  # repeating the same phase length changes nothing
        if stop is not None:
            out += _take(loader, stop)
            return out, loader.state_dict()
        return out + _take(loader, 6), None

    expected, _ = run(BatchLoader(ds, "train", 16, 2, seed=1))
    assert expected[-1][0].shape == (2, 48)
    got, state = run(BatchLoader(ds, "train", 16, 2, seed=1), stop=3)
    resumed = BatchLoader(ds, "train", 16, 2, seed=1)  # built with the old length; the state restores 48
    resumed.load_state_dict(state)
    assert resumed.seq_len == 48
    assert _same(got + _take(resumed, 3), expected)


def test_ranks_partition_the_global_batch(prepared: Path) -> None:
    ds = TokenDataset(prepared)
    whole = BatchLoader(ds, "train", 20, 6, seed=2)
    ranks = [BatchLoader(ds, "train", 20, 3, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(whole.steps_per_epoch + 2):
        xg, yg = next(whole)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), xg) and torch.equal(torch.cat([p[1] for p in parts]), yg)
        assert not torch.equal(parts[0][0], parts[1][0])


def test_unshuffled_loader_reads_rows_in_order(prepared: Path) -> None:
    ds = TokenDataset(prepared)
    x, _ = next(BatchLoader(ds, "train", 10, 4, shuffle=False))
    assert np.array_equal(x.numpy(), ds.rows("train", np.arange(4), 10)[:, :-1])


def test_loader_errors(prepared: Path, tmp_path: Path) -> None:
    ds = TokenDataset(prepared)
    with pytest.raises(SlmError, match="fewer than one global batch"):
        BatchLoader(ds, "val", 10_000, 2)
    loader = BatchLoader(ds, "train", 8, 2, seed=0)
    with pytest.raises(SlmError, match="resume with the same values"):
        loader.load_state_dict({**loader.state_dict(), "seed": 1})
    with pytest.raises(SlmError, match="no split 'test'"):
        ds.tokens("test")
    ds.check_vocab(ds.vocab_size)
    with pytest.raises(SlmError, match="vocab_size"):
        ds.check_vocab(256)
    with pytest.raises(SlmError, match="not a prepared dataset"):
        TokenDataset(tmp_path)


def test_truncated_shard_is_reported(prepared: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = copy / "train_00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(SlmError, match=r"train_00001\.bin.*re-run slm data prepare"):
        TokenDataset(copy)
    shard.unlink()
    with pytest.raises(SlmError, match=r"train_00001\.bin: shard is missing"):
        TokenDataset(copy)
