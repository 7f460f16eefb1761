"""`slm data prepare recipes/data/<name>.yaml`: sources -> clean -> dedup -> mix -> tokenize + pack, on datatrove.

Design decisions
- datatrove runs everything: each stage is a datatrove executor (`LocalPipelineExecutor` with N workers,
  `RayPipelineExecutor` on a Ray cluster — both run stage after stage from this process — or `SlurmPipelineExecutor`
  jobs chained with `depends=` and submitted), so a crashed run restarts without redoing
  finished work: datatrove writes `completions/<task>` after each task, and every file a task writes is named by its
  task and rewritten whole on a retry (ours go through a temporary file renamed at the end). The work folder carries a
  fingerprint of the recipe; a different recipe starts from scratch instead of mixing stale shards in.
- `tasks` fixes how documents are sharded (by file or by document, see `SourceReader`) and therefore the bytes of the
  output; `workers` only says how many tasks run at once. Same recipe -> same shards, for 1 or 2 workers, first run
  or resume.
- Stages (work/<stage> folders): clean (read sources, assign the split, datatrove filters, write jsonl per split and
  task) -> exact hashes -> exact finder (1 task) -> exact filter + MinHash signatures -> MinHash buckets (1 task per
  band) -> MinHash clusters (1 task) -> MinHash filter + tokenize -> mix + pack (1 task, writes the dataset folder
  atomically). Every stage streams documents; what is held in memory is per-document numbers (hashes, token counts).
- Intermediate documents are datatrove's `JsonlWriter` output, uncompressed: the work folder is temporary and gzip at
  datatrove's default level cost more CPU than any stage but cleaning. Reading them back is a 10-line reader because
  a task must read exactly its own file (datatrove's readers shard by file count, which an empty task would shift).
- The split is decided when a document is read: a source can be all `val` (a held-out set), or `auto` puts a
  document in val iff its content hash is below `val_fraction` (`slm.data.pack.split_hash`, so identical texts share
  a side). Dedup then runs across all sources and removes train documents that duplicate val ones.
- Reporting: small JSON files per stage and task (document/byte counts by split and source, removed-by-filter counts
  and examples, dedup counts) are merged by the pack stage into `report.json` beside the shards and into the manifest.
- datatrove's own log lines (loguru, INFO per task) stay in each task's log file; the console gets warnings only,
  and everything with `slm --verbose` (SLM_VERBOSE=1, inherited by worker processes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from slm.data.clean import build_filters, collect_removed
from slm.data.dedup import (
    DedupConfig,
    ExactFindStep,
    ExactHashStep,
    ExactRemoveStep,
    MinhashBucketsStep,
    MinhashClusterStep,
    MinhashRemoveStep,
    count_val_matches,
    minhash_signature_step,
)
from slm.data.hub import SourceConfig, file_documents, iter_source_documents, snapshot_hub_source, source_files
from slm.data.mix import MixConfig, PackConfig, TokenizeStep, plan_mix, split_totals, token_histograms, write_packed
from slm.data.mix import written_per_source
from slm.data.pack import FORMAT, MANIFEST_FILE, _check_out_dir, split_hash, token_dtype
from slm.errors import SlmError, atomic_dir, atomic_write_text

SPLITS = ("val", "train")
REPORT_FILE = "report.json"
_FINGERPRINT = "recipe.json"
FILES_PER_TASK = 4  # a source with at least this many files per task is sharded by file, not by document


@dataclass(kw_only=True)
class CleanConfig:
    filters: list[dict] = field(default_factory=list)  # [{name: fineweb}, {name: length, min_chars: 200}, ...]


@dataclass(kw_only=True)
class ExecutorConfig:
    kind: Literal["local", "slurm", "ray"] = "local"  # which datatrove executor runs the stages
    tasks: int = 4  # shards of the work; fixes the output bytes (any number of workers gives the same shards)
    workers: int = 2  # tasks running at once (local: processes; ray: concurrent tasks); -1 = all
    partition: str = ""  # slurm partition (required for kind=slurm)
    time: str = "04:00:00"  # slurm time limit per job
    cpus_per_task: int = 1  # slurm/ray CPUs per task
    mem_per_cpu_gb: float = 2.0  # slurm/ray memory per CPU
    venv_path: str = ""  # slurm: venv activated in every job; "" = this interpreter's venv
    sbatch_args: dict = field(default_factory=dict)  # slurm: extra sbatch options
    ray_address: str = ""  # ray: host:port of a running cluster (`ray start --head`); "" = $RAY_ADDRESS or a local one

    def __post_init__(self) -> None:
        from slm.choices import check_choices  # the one check of Literal fields

        check_choices(self, "executor")
        if self.tasks < 1:
            raise SlmError(f"--executor.tasks={self.tasks}: must be >= 1")


@dataclass(kw_only=True)
class DataRecipe:
    name: str = "data"  # dataset name (job names, default output folder)
    out: str = ""  # output folder (shards, manifest.json, report.json, tokenizer); "" = data/<name>
    work_dir: str = ""  # intermediate files and completion markers; "" = <out>.work
    keep_work: bool = False  # keep the work folder after success (default: deleted once the dataset is written)
    val_fraction: float = 0.01  # auto-split sources: share of documents held out (by content hash)
    seed: int = 0  # split seed
    progress: bool = True  # progress bars
    sources: list[SourceConfig] = field(default_factory=list)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        if not self.sources:
            raise SlmError("sources: the recipe lists no source; add at least one (path:, hub: or hf_dataset:)")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise SlmError(f"sources: names must be unique (got {', '.join(names)}); set name: on each")
        if not 0.0 <= self.val_fraction < 1.0:
            raise SlmError(f"--val_fraction={self.val_fraction}: must be in [0, 1)")
        if not any(s.split != "val" for s in self.sources):
            raise SlmError("sources: every source is split: val; at least one must feed train")

    def out_dir(self) -> Path:
        return Path(self.out or f"data/{self.name}")

    def work(self) -> Path:
        return Path(self.work_dir) if self.work_dir else self.out_dir().with_name(self.out_dir().name + ".work")


def load_data_recipe(path: str | Path | None, overrides: list[str] | None = None,
                     data: dict | None = None) -> DataRecipe:
    """A DataRecipe from a YAML file (or dict) plus `--key=value` / `--section.key=value` overrides."""
    from slm.config import _merge, from_dict, parse_overrides, read_yaml

    raw = dict(data or {}) if path is None else read_yaml(path)
    return from_dict(DataRecipe, _merge(raw, parse_overrides(list(overrides or []))))


# ----------------------------------------------------------------------------------------------- pipeline steps


def _quiet_datatrove_logs(logfile: Any = None) -> None:
    """datatrove prints its pipeline and stats per task at INFO; keep warnings only (all with `slm --verbose`), and
    never an SlmError traceback."""
    from loguru import logger

    def keep(record: dict) -> bool:
        exc = record["exception"]
        return exc is None or not isinstance(exc.value, SlmError)

    logger.remove()
    logger.add(sys.stderr, level="INFO" if os.environ.get("SLM_VERBOSE") else "WARNING", filter=keep)
    if logfile is not None:  # the task's own log file keeps everything
        logger.add(logfile, level="DEBUG")


class QuietLogs:
    """First step of every local pipeline: datatrove's per-task INFO logging off for the rest of the task."""

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Any:
        _quiet_datatrove_logs()
        return data


@contextlib.contextmanager
def _quiet_main_process() -> Iterator[None]:
    """In this process (where workers=1 runs tasks), keep datatrove's logger at WARNING between and within tasks."""
    import datatrove.executor.base as base
    import datatrove.utils.logging as dlog

    original_add, original_setup = base.add_task_logger, dlog.setup_default_logger

    def add_task_logger(logging_dir: Any, rank: int, local_rank: int = 0, node_rank: int = -1) -> Any:
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")  # datatrove's file, without the console INFO
        _quiet_datatrove_logs(logfile)
        return logfile

    base.add_task_logger, dlog.setup_default_logger = add_task_logger, _quiet_datatrove_logs
    _quiet_datatrove_logs()
    try:
        yield
    finally:
        base.add_task_logger, dlog.setup_default_logger = original_add, original_setup
        original_setup()


def _read_jsonl(path: Path) -> Iterator[Any]:
    import orjson  # datatrove's JsonlWriter needs it too; ~4x faster than json on these lines
    from datatrove.data import Document

    if not path.is_file():
        return
    with open(path, "rb") as f:
        for line in f:
            record = orjson.loads(line)
            yield Document(text=record["text"], id=record["id"], metadata=record.get("metadata", {}))


def _drain(data: Any) -> None:
    if data is not None:
        deque(data, maxlen=0)


class SourceReader:
    """First step of the clean stage: every source's documents for this task, with their split assigned.

    A source with at least FILES_PER_TASK files per task is sharded by file (file j to task j mod tasks: each task
    parses only its files); a source with fewer files (one big jsonl, a hub stream) by document (document i to task
    i mod tasks: every task parses it, but the filters -- the expensive part -- run once per document). Either way
    the assignment depends only on the recipe and `tasks`, never on timing or workers.
    """

    def __init__(self, sources: list[SourceConfig], val_fraction: float, seed: int, stats_dir: Path,
                 progress: bool) -> None:
        self.sources, self.val_fraction, self.seed = sources, val_fraction, seed
        self.stats_dir, self.progress = Path(stats_dir), progress

    def _documents(self, src: SourceConfig, rank: int, world_size: int, stats: dict) -> Iterator[tuple[str, str]]:
        if not src.hf_dataset:
            root, files = source_files(src)
            if len(files) >= FILES_PER_TASK * world_size:
                for j, file in enumerate(files):
                    if j % world_size == rank:
                        yield from file_documents(src, root, file, stats)
                return
        counted = stats if rank == 0 else {}  # every task sees every record: one of them counts the skips
        for i, doc in enumerate(iter_source_documents(src, counted)):
            if i % world_size == rank:
                yield doc

    def __call__(self, data: Any, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        from datatrove.data import Document

        threshold = self.val_fraction * 2.0**64
        stats: dict[str, dict] = {src.name: {} for src in self.sources}
        with tqdm(desc=f"clean task {rank}", unit="doc", disable=not self.progress, leave=False) as bar:
            for src in self.sources:
                for key, text in self._documents(src, rank, world_size, stats[src.name]):
                    split = src.split
                    if split == "auto":
                        split = "val" if split_hash(text, self.seed) < threshold else "train"
                    yield Document(text=text, id=f"{src.name}/{key}", metadata={"source": src.name, "split": split})
                    bar.update(1)
        atomic_write_text(self.stats_dir / f"{rank:05d}.json", json.dumps(stats) + "\n")


class DocCounter:
    """Pass-through step counting documents and UTF-8 bytes by (split, source) into `folder/{tag}{task:05d}.json`."""

    def __init__(self, folder: Path, tag: str = "") -> None:
        self.folder, self.tag = Path(folder), tag

    def __call__(self, data: Iterator[Any], rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        counts: dict[str, dict[str, list[int]]] = {}
        for doc in data:
            c = counts.setdefault(doc.metadata["split"], {}).setdefault(doc.metadata["source"], [0, 0])
            c[0] += 1
            c[1] += len(doc.text.encode("utf-8"))
            yield doc
        atomic_write_text(self.folder / f"{self.tag}{rank:05d}.json", json.dumps(counts) + "\n")


class SplitStage:
    """One task's work on both splits: read `input/{split}/{task:05d}.jsonl`, run that split's steps, drain."""

    def __init__(self, name: str, input_dir: Path, steps: dict[str, list[Any]], progress: bool) -> None:
        self.name, self.input_dir, self.steps, self.progress = name, Path(input_dir), steps, progress

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        for split in SPLITS:
            docs: Any = tqdm(_read_jsonl(self.input_dir / split / f"{rank:05d}.jsonl"), unit="doc", leave=False,
                             desc=f"{self.name} {split} task {rank}", disable=not self.progress)
            for step in self.steps[split]:
                docs = step(docs, rank, world_size)
            _drain(docs)
        return iter(())


class PackStep:
    """Last stage (one task): plan the mix from the token files, write the dataset folder atomically, report."""

    def __init__(self, recipe: DataRecipe, tokenizer: Any) -> None:
        self.recipe, self.tokenizer = recipe, tokenizer

    def __call__(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
        r, work, out = self.recipe, self.recipe.work(), self.recipe.out_dir()
        tasks = r.executor.tasks
        names = [s.name for s in r.sources]
        train_sources = [s for s in r.sources if s.split != "val"]
        hist = token_histograms(work / "tokens" / "train", tasks, len(names))
        keep = [names.index(s.name) for s in train_sources]
        plan = plan_mix(hist[keep], [s.name for s in train_sources], [s.weight for s in train_sources],
                        r.mix.total_tokens)
        full_plan = [{"copies": 0, "threshold_bin": 0, "source": n} for n in names]
        for i, p in zip(keep, plan, strict=True):
            full_plan[i] = p
        dtype = token_dtype(self.tokenizer.vocab_size)
        _check_out_dir(out)
        with atomic_dir(out, overwrite=True, kind="dataset") as tmp:  # _check_out_dir: empty or a dataset
            self.tokenizer.save(tmp)
            splits = write_packed(work / "tokens", tasks, full_plan, tmp, dtype, r.pack, r.progress)
            written = written_per_source(work / "tokens", tasks, full_plan)
            for p in plan:
                p["written"] = written[p["source"]]
                p["error"] = (p["written"]["tokens"] - p["target_tokens"]) / max(1, p["target_tokens"])
            val = split_totals(work / "tokens" / "val", tasks)
            splits["train"].update(documents=sum(w["documents"] for w in written.values()),
                                   bytes=sum(w["bytes"] for w in written.values()))
            splits["val"].update(documents=val["documents"], bytes=val["bytes"])
            report = build_report(r, plan, splits)
            manifest = {
                "format": FORMAT, "dtype": dtype.name, "vocab_size": self.tokenizer.vocab_size,
                "eos_id": self.tokenizer.eos_id, "tokenizer_hash": self.tokenizer.hash(),
                "tokenizer_file": "tokenizer.json", "seed": r.seed, "val_fraction": r.val_fraction,
                "sources": [asdict(s) for s in r.sources], "splits": splits,
                "context_lengths": {str(n): max(0, (splits["train"]["tokens"] - 1) // n)
                                    for n in r.pack.context_lengths},
                "pipeline": {"recipe": recipe_fingerprint(r), "report": REPORT_FILE},
                "created_by": "slm data pipeline",
            }
            atomic_write_text(tmp / REPORT_FILE, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
            atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        return iter(())


# ------------------------------------------------------------------------------------------------------ report


def _merge_counts(folder: Path) -> dict:
    """Sum of DocCounter files: {documents, bytes, by_split: {split: {documents, bytes}}, by_source: {...}}."""
    total = {"documents": 0, "bytes": 0, "by_split": {}, "by_source": {}}
    for file in sorted(folder.glob("*.json")):
        for split, sources in json.loads(file.read_text(encoding="utf-8")).items():
            for source, (docs, size) in sources.items():
                for bucket in (total["by_split"].setdefault(split, {"documents": 0, "bytes": 0}),
                               total["by_source"].setdefault(source, {"documents": 0, "bytes": 0}), total):
                    bucket["documents"] += docs
                    bucket["bytes"] += size
    return total


def build_report(r: DataRecipe, plan: list[dict], splits: dict) -> dict:
    """Per stage documents, bytes, tokens and removed counts, from the work folder's count files."""
    work = r.work()
    counts = {stage: _merge_counts(work / "counts" / stage) for stage in ("read", "clean", "exact", "dedup")}
    source_stats: dict[str, dict] = {}
    for file in sorted((work / "counts" / "sources").glob("*.json")):
        for source, part in json.loads(file.read_text(encoding="utf-8")).items():
            for key, n in part.items():
                source_stats.setdefault(source, {})[key] = source_stats.setdefault(source, {}).get(key, 0) + n
    report: dict[str, Any] = {
        "name": r.name,
        "sources": {s.name: source_stats.get(s.name, {}) for s in r.sources},
        "read": counts["read"],
        "clean": {**counts["clean"], "removed": collect_removed(r.clean.filters, str(work / "removed"))},
        "exact_dedup": {**counts["exact"], "enabled": r.dedup.exact},
        "near_dedup": {**counts["dedup"], "enabled": r.dedup.near},
        "tokenize": {split: split_totals(work / "tokens" / split, r.executor.tasks) for split in SPLITS},
        "mix": plan,
        "pack": {split: {k: v for k, v in info.items() if k != "shards"} | {"shards": len(info["shards"])}
                 for split, info in splits.items()},
    }
    exact_stats = work / "exact" / "stats.json"
    if exact_stats.is_file():
        report["exact_dedup"].update(json.loads(exact_stats.read_text(encoding="utf-8")))
    report["exact_dedup"]["removed_documents"] = counts["clean"]["documents"] - counts["exact"]["documents"]
    report["near_dedup"]["removed_documents"] = counts["exact"]["documents"] - counts["dedup"]["documents"]
    if r.dedup.near and r.dedup.decontaminate:
        report["near_dedup"]["contamination"] = count_val_matches(work / "minhash" / "dups" / "train")
    return report


# ------------------------------------------------------------------------------------------------------- stages


def recipe_fingerprint(r: DataRecipe) -> str:
    """Hash of everything that changes the output (not workers, executor kind, progress or keep_work)."""
    d = asdict(r)
    for key in ("progress", "keep_work", "out", "work_dir"):
        d.pop(key)
    d["executor"] = {"tasks": r.executor.tasks}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_pipeline_tokenizer(spec: str) -> Any:
    from slm.tokenizer import byte_tokenizer, load_tokenizer

    return byte_tokenizer() if spec == "byte" else load_tokenizer(spec)


def build_stages(r: DataRecipe, tokenizer: Any, quiet: bool = True,
                 sources: list[SourceConfig] | None = None) -> list[tuple[str, list[Any], int]]:
    """(stage name, datatrove pipeline, tasks) in execution order; `sources` = the recipe's, hub ones resolved."""
    from datatrove.pipeline.writers import JsonlWriter

    work, tasks, progress, d = r.work(), r.executor.tasks, r.progress, r.dedup
    counts = work / "counts"
    names = [s.name for s in r.sources]
    stages: list[tuple[str, list[Any], int]] = [(
        "clean",
        [SourceReader(sources or r.sources, r.val_fraction, r.seed, counts / "sources", progress),
         DocCounter(counts / "read"), *build_filters(r.clean.filters, str(work / "removed")),
         DocCounter(counts / "clean"),
         JsonlWriter(str(work / "clean"), output_filename="${split}/${rank}.jsonl", compression=None)],
        tasks,
    )]
    if d.exact:
        stages.append(("exact_hash", [SplitStage("exact hash", work / "clean", {
            s: [ExactHashStep(work / "exact" / "hashes" / s)] for s in SPLITS}, progress)], tasks))
        stages.append(("exact_find", [ExactFindStep(work / "exact" / "hashes", work / "exact" / "remove", tasks,
                                                    work / "exact" / "stats.json")], 1))

    def exact_steps(s: str) -> list[Any]:
        steps: list[Any] = [ExactRemoveStep(work / "exact" / "remove" / s)] if d.exact else []
        steps += [DocCounter(counts / "exact", f"{s}_"),
                  JsonlWriter(str(work / "exact" / "docs" / s), output_filename="${rank}.jsonl", compression=None)]
        return steps + ([minhash_signature_step(d, work / "minhash" / "sigs" / s)] if d.near else [])

    stages.append(("exact_filter", [SplitStage("exact filter", work / "clean", {s: exact_steps(s) for s in SPLITS},
                                               progress)], tasks))
    if d.near:
        stages.append(("minhash_buckets", [MinhashBucketsStep(d, work / "minhash")], d.bands))
        stages.append(("minhash_cluster", [MinhashClusterStep(d, work / "minhash")], 1))

    def token_steps(s: str) -> list[Any]:
        steps: list[Any] = [MinhashRemoveStep(work / "minhash" / "remove" / s)] if d.near else []
        return steps + [DocCounter(counts / "dedup", f"{s}_"),
                        TokenizeStep(tokenizer, work / "tokens" / s, names, r.mix.seed)]

    stages.append(("tokenize", [SplitStage("tokenize", work / "exact" / "docs", {s: token_steps(s) for s in SPLITS},
                                           progress)], tasks))
    stages.append(("pack", [PackStep(r, tokenizer)], 1))
    if quiet:
        stages = [(name, [QuietLogs(), *pipeline], n) for name, pipeline, n in stages]
    return stages


def make_executor(r: DataRecipe, stage: str, pipeline: list[Any], tasks: int, depends: Any = None) -> Any:
    """The datatrove executor of one stage; its logging folder holds the stage's completion markers."""
    e, logging_dir = r.executor, str(r.work() / "logs" / stage)
    workers = tasks if e.workers in (-1, 0) else min(e.workers, tasks)
    if e.kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                     skip_completed=True)
    if e.kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        if not e.partition:
            raise SlmError("--executor.partition: required for kind=slurm (the partition jobs are submitted to)")
        return SlurmPipelineExecutor(pipeline, tasks=tasks, time=e.time, partition=e.partition,
                                     cpus_per_task=e.cpus_per_task, mem_per_cpu_gb=e.mem_per_cpu_gb,
                                     logging_dir=logging_dir, depends=depends, job_name=f"{r.name}-{stage}",
                                     venv_path=e.venv_path or str(Path(sys.prefix) / "bin" / "activate"),
                                     sbatch_args=e.sbatch_args or None, skip_completed=True)
    try:
        from datatrove.executor.ray import RayPipelineExecutor

        import ray  # noqa: F401
    except ImportError:
        raise SlmError('--executor.kind=ray: needs ray; run `pip install "datatrove[ray]"`') from None
    return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, depends=depends, logging_dir=logging_dir,
                               cpus_per_task=e.cpus_per_task, mem_per_cpu_gb=e.mem_per_cpu_gb, skip_completed=True)


def ray_address(e: ExecutorConfig) -> str:
    """The Ray cluster the stages run on: --executor.ray_address, else $RAY_ADDRESS, else "" (ray starts one here)."""
    return e.ray_address or os.environ.get("RAY_ADDRESS", "")


def _check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """One line, at once, when nothing listens at a Ray address (ray.init would retry for a minute, then trace)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "auto":
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except (OSError, ValueError):
        pass
    raise SlmError(f"--executor.ray_address={address}: no Ray cluster answers there; start one with `ray start --head"
                   f" --port=<port>` and pass its host:port, or leave it empty to run a local Ray")


def connect_ray(e: ExecutorConfig) -> None:
    """Join the configured Ray cluster (or start a local one) in this process before the stages are submitted."""
    import ray

    if ray.is_initialized():
        return
    address = ray_address(e)
    local = {} if address else {"include_dashboard": False}  # options a running cluster refuses
    ray.init(address=address or None, ignore_reinit_error=True, log_to_driver=False, configure_logging=False, **local)


def check_executor(e: ExecutorConfig) -> None:
    """A Slurm executor needs a partition and `sbatch` on PATH, a Ray executor ray and a cluster that answers: one
    line each, before any work (not a traceback from datatrove's submit or ray.init)."""
    if e.kind == "ray":
        if importlib.util.find_spec("ray") is None:
            raise SlmError('--executor.kind=ray: needs ray; run `pip install "datatrove[ray]"`')
        if ray_address(e):
            _check_ray_address(ray_address(e))
        return
    if e.kind != "slurm":
        return
    if not e.partition:
        raise SlmError("--executor.partition: required for kind=slurm (the partition jobs are submitted to)")
    if shutil.which("sbatch") is None:
        raise SlmError("--executor.kind=slurm: `sbatch` is not on PATH (not a Slurm login node?); run where Slurm is "
                       "installed, or use --executor.kind=local")


def _preflight(r: DataRecipe) -> tuple[Any, list[SourceConfig]]:
    """Fail fast in this process: executor, filter names/options, language model, tokenizer, every source's first
    document.

    Hub sources are downloaded here, once, and handed to the tasks as local folders.
    """
    check_executor(r.executor)
    build_filters(r.clean.filters, str(r.work() / "removed"))
    tokenizer = load_pipeline_tokenizer(r.pack.tokenizer)
    sources = [dataclasses.replace(s, hub="", path=str(snapshot_hub_source(s))) if s.hub else s for s in r.sources]
    for src in sources:
        next(iter_source_documents(src, {}))
    _check_out_dir(r.out_dir())
    return tokenizer, sources


def _prepare_work(r: DataRecipe) -> None:
    """Create the work folder, or reuse it when it belongs to the same recipe (resume); otherwise start over."""
    work, fingerprint = r.work(), recipe_fingerprint(r)
    marker = work / _FINGERPRINT
    if work.exists():
        previous = json.loads(marker.read_text(encoding="utf-8")).get("fingerprint") if marker.is_file() else None
        if previous == fingerprint:
            return
        if previous is None and any(work.iterdir()):
            raise SlmError(f"{work}: exists and is not a pipeline work folder; set work_dir to a new folder")
        shutil.rmtree(work)  # a different recipe: its intermediate files must not leak into this one
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"fingerprint": fingerprint, "name": r.name}) + "\n")


INSTALL_HINT = 'pip install "datatrove[processing]" spacy orjson'


def _require_datatrove() -> None:
    import importlib.util

    missing = [m for m in ("datatrove", "orjson") if importlib.util.find_spec(m) is None]
    if missing:
        raise SlmError(f"the data pipeline needs {', '.join(missing)}; run `{INSTALL_HINT}`")


def run_data_pipeline(r: DataRecipe) -> dict:
    """Run (or resume) the whole pipeline; returns the report (local, ray) or the submitted stages (slurm)."""
    _require_datatrove()
    tokenizer, sources = _preflight(r)
    _prepare_work(r)
    stages = build_stages(r, tokenizer, quiet=r.executor.kind == "local", sources=sources)
    if r.executor.kind == "ray":  # runs the stages one after another from here, like local, on the cluster's workers
        connect_ray(r.executor)
    if r.executor.kind == "slurm":
        executor = None
        for stage, pipeline, tasks in stages:
            executor = make_executor(r, stage, pipeline, tasks, depends=executor)
        executor.run()
        return {"submitted": [s for s, _, _ in stages], "work_dir": str(r.work()), "out": str(r.out_dir())}
    if not (r.out_dir() / MANIFEST_FILE).is_file():  # the dataset was removed since: pack must run again
        (r.work() / "logs" / "pack" / "completions" / "00000").unlink(missing_ok=True)
    timings = {}
    with _quiet_main_process():
        for stage, pipeline, tasks in tqdm(stages, desc="data pipeline", unit="stage", disable=not r.progress):
            start = time.perf_counter()
            make_executor(r, stage, pipeline, tasks).run()
            timings[stage] = round(time.perf_counter() - start, 3)
    report_file = r.out_dir() / REPORT_FILE
    report = json.loads(report_file.read_text(encoding="utf-8"))
    report["timings_s"] = timings
    atomic_write_text(report_file, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    if not r.keep_work:
        shutil.rmtree(r.work(), ignore_errors=True)
    return report
