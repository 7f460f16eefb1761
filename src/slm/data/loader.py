"""Read prepared token shards as fixed-length training rows: resumable, rank-aware, shuffled by row.

Design decisions
- Rows are windows of `seq_len + 1` tokens at stride `seq_len` over a split's concatenated stream, so every token but
  the first is a target exactly once per epoch and documents are packed back to back (EOS separates them; no padding,
  no attention reset). Windows may span shard files; `TokenDataset.read` stitches them. The incomplete tail is dropped.
- Inputs and labels are shifted here and nowhere else: `x = row[:-1]`, `y = row[1:]`.
- The order is a pure function of (seed, epoch, seq_len): epoch `e` is `torch.randperm(num_rows)` drawn from a
  generator seeded with `seed * 1000003 + e`. Global batch `k` is a run of `batch_size * world_size` consecutive
  permutation entries; rank `r` takes its `batch_size` slice, so ranks partition the global batch and never overlap.
  The whole loader state is therefore `(epoch, cursor, seq_len)`: resuming needs no RNG state and no replay. A
  partial global batch at the end of an epoch is dropped so every step has the same shape.
- Reading is `np.memmap` slicing: the OS page cache does the caching, nothing is loaded up front. One background
  thread builds the next batch while the model computes; it is keyed by the position it was built for, so resuming
  or changing `seq_len` discards it and stays exact.
- A torch `Dataset`/`DataLoader` is not used: its sampler state is not resumable mid-epoch, and worker processes would
  only copy what a memmap already shares.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from slm.data.pack import FORMAT, MANIFEST_FILE
from slm.errors import SlmError

_RERUN = "re-run slm data prepare"


class TokenDataset:
    """A prepared dataset folder (manifest.json + shards), memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_file = self.path / MANIFEST_FILE
        if not manifest_file.is_file():
            raise SlmError(f"{self.path}: not a prepared dataset (no {MANIFEST_FILE}); run slm data prepare first")
        try:
            self.manifest: dict = json.loads(manifest_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SlmError(f"{manifest_file}: unreadable manifest ({e}); {_RERUN}") from None
        if self.manifest.get("format") != FORMAT:
            raise SlmError(f"{manifest_file}: format {self.manifest.get('format')!r} is not {FORMAT!r}; {_RERUN}")
        self._shards: dict[str, list[np.memmap]] = {}
        self._starts: dict[str, np.ndarray] = {}  # first stream offset of each shard, plus the total at the end
        try:
            self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
            self.vocab_size: int = int(self.manifest["vocab_size"])
            self.eos_id: int = int(self.manifest["eos_id"])
            for split, info in self.manifest["splits"].items():
                maps, starts = [], [0]
                for shard in info["shards"]:
                    maps.append(self._open_shard(shard))
                    starts.append(starts[-1] + int(shard["tokens"]))
                if starts[-1] != int(info["tokens"]):
                    raise SlmError(f"{manifest_file}: split {split!r} shard sizes do not add up; {_RERUN}")
                self._shards[split], self._starts[split] = maps, np.asarray(starts, dtype=np.int64)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SlmError(f"{manifest_file}: malformed manifest ({type(e).__name__}: {e}); {_RERUN}") from None

    def _open_shard(self, shard: dict) -> np.memmap:
        file = self.path / shard["file"]
        expected = int(shard["tokens"]) * self.dtype.itemsize
        if not file.is_file():
            raise SlmError(f"{file}: shard is missing; {_RERUN}")
        size = file.stat().st_size
        if size != expected:
            raise SlmError(f"{file}: shard has {size} bytes, expected {expected} (truncated or corrupted); {_RERUN}")
        return np.memmap(file, dtype=self.dtype, mode="r")

    @property
    def splits(self) -> list[str]:
        return list(self._shards)

    @property
    def tokenizer_path(self) -> Path:
        """The tokenizer.json the data was encoded with."""
        return self.path / self.manifest.get("tokenizer_file", "tokenizer.json")

    def _starts_of(self, split: str) -> np.ndarray:
        if split not in self._starts:
            raise SlmError(f"{self.path}: no split {split!r} (has: {', '.join(self._starts)}); use one of them")
        return self._starts[split]

    def tokens(self, split: str) -> int:
        """Total tokens in a split (EOS separators included)."""
        return int(self._starts_of(split)[-1])

    def num_rows(self, split: str, seq_len: int) -> int:
        """Number of full `seq_len + 1` windows at stride `seq_len`."""
        if seq_len < 1:
            raise SlmError(f"seq_len={seq_len} must be at least 1")
        return max(0, (self.tokens(split) - 1) // seq_len)

    def read(self, split: str, start: int, length: int) -> np.ndarray:
        """`length` tokens of the split's stream from `start`, stitched across shards when needed."""
        starts = self._starts_of(split)
        if start < 0 or start + length > starts[-1]:
            raise IndexError(f"tokens [{start}, {start + length}) outside split {split!r} of {starts[-1]} tokens")
        shard = int(np.searchsorted(starts, start, side="right")) - 1
        offset = start - int(starts[shard])
        data = self._shards[split][shard]
        if offset + length <= len(data):
            return data[offset : offset + length]
        pieces = []
        while length > 0:
            data = self._shards[split][shard]
            piece = data[offset : offset + length]
            pieces.append(piece)
            length -= len(piece)
            shard, offset = shard + 1, 0
        return np.concatenate(pieces)

    def rows(self, split: str, indices: np.ndarray, seq_len: int) -> np.ndarray:
        """(len(indices), seq_len + 1) int64 array of rows."""
        out = np.empty((len(indices), seq_len + 1), dtype=np.int64)
        for i, index in enumerate(indices):
            out[i] = self.read(split, int(index) * seq_len, seq_len + 1)
        return out

    def check_vocab(self, model_vocab_size: int) -> None:
        """Fail when the data holds ids the model's embedding has no row for."""
        if self.vocab_size > model_vocab_size:
            raise SlmError(
                f"{self.path}: data was tokenized with vocab_size={self.vocab_size} but the model has "
                f"{model_vocab_size}; use the matching tokenizer or set --model.vocab_size={self.vocab_size}"
            )

    def verify_checksums(self) -> None:
        """Re-hash every shard against the manifest (slow: reads everything)."""
        import hashlib

        for info in self.manifest["splits"].values():
            for shard in info["shards"]:
                digest = hashlib.sha256((self.path / shard["file"]).read_bytes()).hexdigest()
                if digest != shard["sha256"]:
                    raise SlmError(f"{self.path / shard['file']}: checksum mismatch (corrupted); {_RERUN}")


def _to_xy(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The single label shift: (B, T+1) rows -> x (B, T), y (B, T)."""
    return torch.from_numpy(np.ascontiguousarray(rows[:, :-1])), torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))


class BatchLoader:
    """Endless, shuffled, resumable `(x, y)` batches of shape (batch_size, seq_len) for one rank."""

    def __init__(
        self,
        dataset: TokenDataset,
        split: str,
        seq_len: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        prefetch: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise SlmError(
                f"batch loader: need batch_size >= 1 and 0 <= rank < world_size "
                f"(got batch_size={batch_size}, rank={rank}, world_size={world_size})"
            )
        self.dataset, self.split = dataset, split
        self.batch_size, self.seed, self.rank, self.world_size, self.shuffle = (
            batch_size,
            seed,
            rank,
            world_size,
            shuffle,
        )
        self.epoch, self.cursor = 0, 0
        self._orders: dict[tuple[int, int], torch.Tensor] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-prefetch") if prefetch else None
        self._pending: tuple[tuple[int, int, int], Future] | None = None
        self._use_seq_len(seq_len)

    @property
    def global_batch(self) -> int:
        """Rows consumed per step across all ranks."""
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.global_batch

    def _use_seq_len(self, seq_len: int) -> None:
        rows = self.dataset.num_rows(self.split, seq_len)
        if rows < self.global_batch:
            raise SlmError(
                f"{self.dataset.path}: split {self.split!r} has {rows} rows of seq_len={seq_len}, "
                f"fewer than one global batch of {self.global_batch}; lower batch_size/seq_len or add data"
            )
        self.seq_len, self.num_rows = seq_len, rows
        self._orders.clear()
        self._pending = None

    def _order(self, epoch: int) -> torch.Tensor:
        key = (epoch, self.seq_len)
        if key not in self._orders:
            if self.shuffle:
                generator = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
                order = torch.randperm(self.num_rows, generator=generator)
            else:
                order = torch.arange(self.num_rows)
            if len(self._orders) >= 2:
                self._orders.pop(next(iter(self._orders)))
            self._orders[key] = order
        return self._orders[key]

    def _normalized(self, epoch: int, cursor: int) -> tuple[int, int]:
        """Roll over to the next epoch when fewer than a global batch of rows remain."""
        if cursor + self.global_batch > self.num_rows:
            return epoch + 1, 0
        return epoch, cursor

    def _indices(self, epoch: int, cursor: int) -> np.ndarray:
        start = cursor + self.rank * self.batch_size
        return self._order(epoch)[start : start + self.batch_size].numpy()

    def _load(self, indices: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_xy(self.dataset.rows(self.split, indices, seq_len))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, cursor = self._normalized(self.epoch, self.cursor)
        key = (epoch, cursor, self.seq_len)
        if self._pending is not None and self._pending[0] == key:
            batch = self._pending[1].result()
        else:
            batch = self._load(self._indices(epoch, cursor), self.seq_len)
        self._pending = None
        self.epoch, self.cursor = epoch, cursor + self.global_batch
        if self._executor is not None:
            next_epoch, next_cursor = self._normalized(self.epoch, self.cursor)
            indices = self._indices(next_epoch, next_cursor)  # permutation drawn here, not in the thread
            future = self._executor.submit(self._load, indices, self.seq_len)
            self._pending = ((next_epoch, next_cursor, self.seq_len), future)
        return batch

    def set_seq_len(self, seq_len: int) -> None:
        """Switch row length (a curriculum phase): restarts from epoch 0 of the new row set; no-op if unchanged."""
        if seq_len != self.seq_len:
            self._use_seq_len(seq_len)
            self.epoch, self.cursor = 0, 0

    def state_dict(self) -> dict:
        """Position of the next batch; with `load_state_dict` it resumes exactly."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at a saved position with the same seed. `cursor` is a global row index into the epoch's order, so
        another layout (world size x batch size) continues the same rows when its global batch divides the cursor
        (the trainer checks that the rows per optimizer step match: 2 ranks x 4 rows == 1 rank x 4 rows x 2
        micro-batches). Caveat: near an epoch's end a smaller global batch may take one more batch before rolling
        over to the next epoch."""
        saved_global = int(state["batch_size"]) * int(state["world_size"])
        aligned = int(state["cursor"]) % self.global_batch == 0
        if (saved_global != self.global_batch and not aligned) or int(state["seed"]) != self.seed:
            raise SlmError(
                f"data loader state is for seed={state['seed']}, global batch {saved_global} "
                f"(batch_size {state['batch_size']} x world_size {state['world_size']}); resume with the same values "
                f"(now seed={self.seed}, global batch {self.global_batch})"
            )
        self._use_seq_len(int(state["seq_len"]))
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._pending = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def iter_eval_batches(
    dataset: TokenDataset, split: str, seq_len: int, batch_size: int, max_batches: int | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All rows of a split in order, `batch_size` at a time (the last batch may be smaller); no shuffling."""
    rows = dataset.num_rows(split, seq_len)
    for batch, start in enumerate(range(0, rows, batch_size)):
        if max_batches is not None and batch >= max_batches:
            return
        yield _to_xy(dataset.rows(split, np.arange(start, min(start + batch_size, rows)), seq_len))
