"""Deduplication and decontamination: exact (hash of normalized text) and near-duplicate MinHash across all sources.

Design decisions
- Near-duplicates are datatrove's MinHash stages: signatures per task (`MinhashDedupSignature`), LSH buckets
  (`MinhashDedupBuckets`, one task per band) and union-find clusters (`MinhashDedupCluster`, one task); its `.remove`
  lists are applied by `MinhashRemoveStep` (same semantics as `MinhashDedupFilter`, without its per-document cost).
  `n_grams`, `bands` (datatrove's num_buckets) and `rows` (hashes_per_bucket) are recipe keys; a pair with Jaccard s
  is caught with probability 1 - (1 - s^rows)^bands. The defaults are FineWeb's (5-grams, 14 x 8: s >~ 0.75). 10 %
  of words replaced leaves s ~ 0.4 on 5-grams, so catching such edits needs 3-grams, 20 x 3 (bench/data_pipeline.py:
  recall 0.9975, precision 1.0 on planted copies, against 0.75 / 1.0 with the defaults).
- One change of ingredient: shingles are words of datatrove's `simplify_text` (lower case, no punctuation, normalized
  whitespace and digits) split on whitespace instead of its spaCy tokenizer. After `simplify_text` both give the same
  words for space-separated languages and the whitespace split is ~20x faster (4.8 vs 0.24 MB/s per core measured),
  which decides whether dedup or tokenization dominates a run. `word_tokenizer: spacy` restores datatrove's default.
- Decontamination uses datatrove's index mechanism: the val split is deduplicated first and its signatures are saved
  as a MinHash index; the train buckets are then matched against that index too, so a train document that
  near-duplicates a val document lands in a cluster rooted at the index and is removed from train. Val is never
  thinned in favour of train: validation stays comparable between runs.
- Exact dedup is written here (datatrove's `ExactDedup*` stages hash raw text and would need a second index dance):
  one 64-bit blake2b of NFKC + casefold + collapsed whitespace per document, saved per task; a single finder sorts all
  (hash, split, task, index) rows -- 24 bytes per document, not per byte -- and keeps the first of each hash with val
  before train, so exact copies of val documents also leave train. It runs before MinHash, whose clusters would
  otherwise pick a different survivor than exact dedup and drop every copy.
- Run recipes (`slm run`, `data.dedup`) use the same steps without an executor: `dedup_in_process`, one task per
  split, so every path to a dataset removes duplicates the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import struct
import unicodedata
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from slm.data.lazyclass import lazy_class, module_getattr
from slm.errors import SlmError, atomic_path

SPLIT_ORDER = ("val", "train")  # val first: it wins ties, so duplicates leave train, never val
_HASH_DTYPE = np.dtype([("hash", "<u8"), ("idx", "<u4")])
_WS = re.compile(r"\s+")
SENTINEL = (1 << 32) - 1  # datatrove's file/doc id of an index signature in .dups files


@dataclass(kw_only=True)
class DedupConfig:
    exact: bool = True  # drop exact duplicates (hash of NFKC + casefold + collapsed whitespace)
    near: bool = True  # drop near-duplicates with datatrove's MinHash stages
    n_grams: int = 5  # words per shingle
    bands: int = 14  # LSH bands (datatrove num_buckets); also the number of bucket tasks
    rows: int = 8  # hashes per band (datatrove hashes_per_bucket); threshold ~ (1/bands)^(1/rows)
    seed: int = 1  # MinHash permutation seed
    word_tokenizer: Literal["whitespace", "spacy"] = "whitespace"  # whitespace (fast, after simplify_text) or spacy
    decontaminate: bool = True  # remove train documents that (near-)duplicate a val document

    def __post_init__(self) -> None:
        from slm.choices import check_choices  # the one check of Literal fields

        for key in ("n_grams", "bands", "rows"):
            if getattr(self, key) < 1:
                raise SlmError(f"--dedup.{key}={getattr(self, key)}: must be >= 1")
        check_choices(self, "dedup")


# ----------------------------------------------------------------------------------------------------------- exact


def normalize_exact(text: str) -> str:
    """The text exact dedup compares: NFKC, case-folded, whitespace runs collapsed, stripped."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def exact_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(normalize_exact(text).encode("utf-8"), digest_size=8).digest(), "little")


def write_exact_hashes(docs: Iterator[Any], path: Path) -> int:
    """Save (hash, index) of every document of one task's stream, sorted by hash; returns the document count."""
    hashes = [exact_hash(doc.text) for doc in docs]
    rows = np.empty(len(hashes), dtype=_HASH_DTYPE)
    rows["hash"] = np.asarray(hashes, dtype=np.uint64)
    rows["idx"] = np.arange(len(hashes), dtype=np.uint32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.sort(rows, order=["hash", "idx"]))
    return len(hashes)


def find_exact_duplicates(hash_dir: Path, remove_dir: Path, tasks: int) -> dict:
    """Mark every document whose normalized text was seen earlier (val before train, then task, then index).

    Writes `remove_dir/{split}/{task:05d}.npy` (sorted indices to drop) and returns counts.
    """
    parts = []
    for s, split in enumerate(SPLIT_ORDER):
        for rank in range(tasks):
            file = hash_dir / split / f"{rank:05d}.npy"
            rows = np.load(file) if file.is_file() else np.zeros(0, dtype=_HASH_DTYPE)
            part = np.empty(len(rows), dtype=[("hash", "<u8"), ("split", "<u1"), ("rank", "<u4"), ("idx", "<u4")])
            part["hash"], part["idx"], part["split"], part["rank"] = rows["hash"], rows["idx"], s, rank
            parts.append(part)
    allrows = np.concatenate(parts) if parts else np.zeros(0)
    order = np.lexsort((allrows["idx"], allrows["rank"], allrows["split"], allrows["hash"]))
    allrows = allrows[order]
    dup = np.zeros(len(allrows), dtype=bool)
    dup[1:] = allrows["hash"][1:] == allrows["hash"][:-1]
    # first occurrence of each hash (the survivor) is in val -> a train copy is contamination
    first_split = allrows["split"][np.maximum.accumulate(np.where(~dup, np.arange(len(dup)), 0))]
    train = SPLIT_ORDER.index("train")
    stats = {"removed": int(dup.sum()),
             "removed_train_copies_of_val": int((dup & (allrows["split"] == train) & (first_split != train)).sum())}
    for s, split in enumerate(SPLIT_ORDER):
        stats[f"removed_{split}"] = int((dup & (allrows["split"] == s)).sum())
        for rank in range(tasks):
            mask = dup & (allrows["split"] == s) & (allrows["rank"] == rank)
            with atomic_path(remove_dir / split / f"{rank:05d}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.sort(allrows["idx"][mask]).astype(np.uint32))
    return stats


def drop_indices(docs: Iterator[Any], remove_file: Path) -> Iterator[Any]:
    """The documents of a task stream whose position is not listed in `remove_file` (sorted uint32 indices, .npy)."""
    return _drop_sorted(docs, np.load(remove_file) if remove_file.is_file() else np.zeros(0, dtype=np.uint32))


def _drop_sorted(docs: Iterator[Any], remove: np.ndarray) -> Iterator[Any]:
    remove = remove.tolist()
    j = 0
    for i, doc in enumerate(docs):
        while j < len(remove) and remove[j] < i:
            j += 1
        if j < len(remove) and remove[j] == i:
            continue
        yield doc


class ExactHashStep:
    """Pipeline step: save the exact-dedup hashes of one split's task stream to `folder/{task:05d}.npy`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __call__(self, data: Iterator[Any], rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        write_exact_hashes(data, self.folder / f"{rank:05d}.npy")
        return iter(())


class ExactFindStep:
    """Pipeline step (one task): `find_exact_duplicates`, its counts saved as JSON for the report."""

    def __init__(self, hash_dir: Path, remove_dir: Path, tasks: int, stats_file: Path) -> None:
        self.hash_dir, self.remove_dir = Path(hash_dir), Path(remove_dir)
        self.tasks, self.stats_file = tasks, stats_file

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        import json

        from slm.errors import atomic_write_text

        stats = find_exact_duplicates(self.hash_dir, self.remove_dir, self.tasks)
        atomic_write_text(self.stats_file, json.dumps(stats) + "\n")
        return iter(())


class ExactRemoveStep:
    """Pipeline step: drop the documents `find_exact_duplicates` listed for this split and task."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def __call__(self, data: Iterator[Any], rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        return drop_indices(data, self.folder / f"{rank:05d}.npy")


# ---------------------------------------------------------------------------------------------------------- minhash


def _build_whitespace_tokenizer() -> type:
    from datatrove.utils.word_tokenizers import WordTokenizer

    class WhitespaceWordTokenizer(WordTokenizer):
        """Split on whitespace: enough after datatrove's simplify_text, which already removed punctuation."""

        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

        def sent_tokenize(self, text: str) -> list[str]:
            return [line for line in text.splitlines() if line.strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"\S+", text)]

    return WhitespaceWordTokenizer


def _whitespace_tokenizer_class() -> type:
    return lazy_class(globals(), "WhitespaceWordTokenizer", _build_whitespace_tokenizer)


# Worker processes unpickle the tokenizer class by name: built on demand.
__getattr__ = module_getattr(globals(), {"WhitespaceWordTokenizer": _build_whitespace_tokenizer})


def minhash_config(cfg: DedupConfig) -> Any:
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(n_grams=cfg.n_grams, num_buckets=cfg.bands, hashes_per_bucket=cfg.rows, seed=cfg.seed)


def minhash_signature_step(cfg: DedupConfig, output_folder: Path) -> Any:
    """datatrove's stage 1 writing `output_folder/bucket_NNN/{task:05d}.minhash.sig`."""
    from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

    language = _whitespace_tokenizer_class()("en") if cfg.word_tokenizer == "whitespace" else "en"
    return MinhashDedupSignature(output_folder=str(output_folder), config=minhash_config(cfg), language=language)


class MinhashRemoveStep:
    """Stage 4: drop the documents datatrove's cluster stage listed in `remove_folder/{task:06d}.remove`.

    The same file and semantics as datatrove's `MinhashDedupFilter`, applied with `drop_indices`: datatrove's step
    spends ~15 us per document on stats bookkeeping, which on short documents cost more than the tokenizer after it.
    """

    def __init__(self, remove_folder: Path) -> None:
        self.remove_folder = Path(remove_folder)

    def __call__(self, data: Iterator[Any], rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        file = self.remove_folder / f"{rank:06d}.remove"
        remove = np.frombuffer(file.read_bytes(), dtype="<u4") if file.is_file() else np.zeros(0, dtype="<u4")
        return _drop_sorted(data, remove)


class MinhashBucketsStep:
    """Stage 2 for both splits in one task per band: val (saved as an index), then train matched against it."""

    def __init__(self, cfg: DedupConfig, work: Path) -> None:
        self.cfg, self.work = cfg, Path(work)

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets

        config = minhash_config(self.cfg)
        index = self.work / "index"
        val = MinhashDedupBuckets(input_folder=str(self.work / "sigs" / "val"), output_folder=str(self.work / "dups" /
                                  "val"), index_folder=str(index), config=config, only_dedup_in_index=False,
                                  create_index_name="val")
        train = MinhashDedupBuckets(input_folder=str(self.work / "sigs" / "train"),
                                    output_folder=str(self.work / "dups" / "train"),
                                    index_folder=str(index) if self.cfg.decontaminate else None, config=config,
                                    only_dedup_in_index=False)
        for split in ("val", "train"):
            (self.work / "sigs" / split).mkdir(parents=True, exist_ok=True)
        val.run(None, rank, world_size)
        train.run(None, rank, world_size)
        return iter(())


class MinhashClusterStep:
    """Stage 3 for both splits (one task): union-find over the duplicate pairs -> `remove/{split}/*.remove`."""

    def __init__(self, cfg: DedupConfig, work: Path) -> None:
        self.cfg, self.work = cfg, Path(work)

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from datatrove.pipeline.dedup.minhash import MinhashDedupCluster

        for split in ("val", "train"):
            MinhashDedupCluster(input_folder=str(self.work / "dups" / split),
                                output_folder=str(self.work / "remove" / split),
                                config=minhash_config(self.cfg)).run(None, 0, 1)
        return iter(())


def count_val_matches(dups_dir: Path) -> dict:
    """Train documents whose MinHash bands matched the val index (each is removed from train)."""
    docs = set()
    pairs = 0
    for file in sorted(Path(dups_dir).glob("*.dups")):
        data = file.read_bytes()
        for f1, _d1, f2, d2 in struct.iter_unpack("<4I", data[: len(data) - len(data) % 16]):
            if f1 == SENTINEL:
                pairs += 1
                docs.add((f2, d2))
    return {"band_matches_with_val": pairs, "train_docs_matching_val": len(docs)}



# ------------------------------------------------------------------------------------------- in-process (slm run)


def describe_dedup(stats: dict | None) -> str:
    """One line for reports: what a prepared dataset's dedup removed, or that (and why) it was skipped."""
    if not stats:
        return "dedup: not recorded (dataset prepared before slm deduplicated run data)"
    if stats.get("data_recipe"):
        return "dedup: by the data recipe (its counts are in report.json beside the shards)"
    if not stats.get("enabled"):
        return f"dedup: skipped ({stats.get('reason', 'disabled')}); near-duplicates may straddle train/val"
    exact = stats.get("exact_removed_train", 0) + stats.get("exact_removed_val", 0)
    near = stats.get("near_removed_train", 0) + stats.get("near_removed_val", 0)
    return (f"dedup: removed {stats.get('removed_documents', 0):,} document(s): {exact:,} exact and {near:,} near "
            f"duplicate(s) (MinHash {stats.get('n_grams')}-grams, {stats.get('bands')}x{stats.get('rows')}); "
            f"{stats.get('exact_train_copies_of_val', 0) + stats.get('train_near_copies_of_val', 0):,} of them "
            "train copies of val documents")


def require_dedup_packages(flag: str = "--data.dedup=true") -> None:
    """SlmError naming `flag` when datatrove's MinHash cannot run here (a base install without its packages)."""
    import importlib.util

    missing = [m for m in ("datatrove", "xxhash") if importlib.util.find_spec(m) is None]
    if missing:
        raise SlmError(f"{flag}: dedup needs {', '.join(missing)}; run `pip install datatrove xxhash` "
                       "(or `pip install -e .[data]`), or pass --data.dedup=false to skip it")


def dedup_in_process(documents: Any, cfg: DedupConfig, work: Path) -> tuple[dict[str, list[int]], dict]:
    """Exact + near dedup of both splits in this process, one task per split: the data recipes' steps without an
    executor (the run recipes' `data.dedup`, `slm.data.pack`).

    `documents(split)` yields that split's documents (objects with `.text`) in a fixed order, and is called once per
    pass. Returns the positions (within each split's stream) of the documents that survive, and the removed counts:
    exact and near duplicates per split, and train documents that near-duplicate a val document (each removed, so no
    near-duplicate straddles the split).
    """
    from slm.data.pipeline import _quiet_main_process

    work = Path(work)
    sizes = {split: 0 for split in SPLIT_ORDER}
    stats: dict[str, Any] = {"enabled": True, "exact": cfg.exact, "near": cfg.near, "n_grams": cfg.n_grams,
                             "bands": cfg.bands, "rows": cfg.rows}

    def exact_kept(split: str) -> Iterator[Any]:
        docs = documents(split)
        return ExactRemoveStep(work / "exact" / "remove" / split)(docs) if cfg.exact else docs

    with _quiet_main_process():
        if cfg.exact:
            for split in SPLIT_ORDER:
                sizes[split] = write_exact_hashes(documents(split), work / "exact" / "hashes" / split / "00000.npy")
            exact = find_exact_duplicates(work / "exact" / "hashes", work / "exact" / "remove", tasks=1)
            stats.update(exact_removed_train=exact["removed_train"], exact_removed_val=exact["removed_val"],
                         exact_train_copies_of_val=exact["removed_train_copies_of_val"])
        if cfg.near:
            for split in SPLIT_ORDER:
                signature = minhash_signature_step(cfg, work / "minhash" / "sigs" / split)
                deque(signature(_counted(exact_kept(split), sizes, split, not cfg.exact), 0, 1) or (), maxlen=0)
            for band in range(cfg.bands):
                MinhashBucketsStep(cfg, work / "minhash")(None, band, cfg.bands)
            with contextlib.redirect_stderr(io.StringIO()):  # datatrove's "Reading dup files" bar, per split
                MinhashClusterStep(cfg, work / "minhash")(None, 0, 1)
        elif not cfg.exact:
            for split in SPLIT_ORDER:
                sizes[split] = sum(1 for _ in documents(split))
    kept: dict[str, list[int]] = {}
    for split in SPLIT_ORDER:
        positions: Iterator[Any] = iter(range(sizes[split]))
        if cfg.exact:
            positions = ExactRemoveStep(work / "exact" / "remove" / split)(positions)
        exact_survivors = list(positions)
        if cfg.near:
            survivors = list(MinhashRemoveStep(work / "minhash" / "remove" / split)(iter(exact_survivors)))
            stats[f"near_removed_{split}"] = len(exact_survivors) - len(survivors)
        else:
            survivors = exact_survivors
        kept[split] = survivors
    if cfg.near and cfg.decontaminate:
        stats["train_near_copies_of_val"] = count_val_matches(work / "minhash" / "dups" / "train")[
            "train_docs_matching_val"]
    stats["removed_documents"] = sum(sizes.values()) - sum(len(v) for v in kept.values())
    return kept, stats


def _counted(docs: Iterator[Any], sizes: dict[str, int], split: str, count: bool) -> Iterator[Any]:
    """Pass-through that counts a split's documents when no earlier pass did."""
    for doc in docs:
        if count:
            sizes[split] += 1
        yield doc
