"""BIG-bench task files -> post-training JSONL for the demos: SFT chats, DPO pairs, GRPO math prompts.

    python -m slm.posttrain.bigbench --out runs/posttrain-data

writes sft_{train,val}.jsonl (natural_instructions: the task definition plus the input as the user turn, the first
target as the reply), dpo_{train,val}.jsonl (hhh_alignment: the best-scored answer is chosen, each worse one is a
rejected partner) and grpo_{train,val}.jsonl (arithmetic: the question, the exact answer). Splits are by a hash of the
record, so they are stable; the val files are held out of training.

Decisions:
- BIG-bench ships as one 358 MB PyPI sdist (Apache-2.0) with TensorFlow-era dependencies, so it is never installed:
  the sdist is fetched once from the package index into a cache dir (checked against PyPI's sha256) and only the
  needed task.json files are extracted with `tarfile`. `pip download` is not used: pip >= 25 refuses this sdist (its
  metadata declares a direct-URL dependency even with --no-deps).
- Every BIG-bench file carries a canary asking not to train on it for benchmarking; these files serve demos and
  tests of the post-training code only, never a benchmark claim.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Iterator

from ..errors import SlmError, atomic_write_text
from ..runtime import slm_cache_dir
from .data import content_id

SDIST = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"  # PyPI's published digest
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
TASKS = ("hhh_alignment", "natural_instructions", "arithmetic")


def default_cache() -> Path:
    return slm_cache_dir() / "bigbench"


def fetch_tasks(cache: Path, tasks: tuple[str, ...] = TASKS) -> Path:
    """Directory holding `benchmark_tasks/<task>/**/task.json` for `tasks`, downloading/extracting when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    base = cache / ROOT
    if all((base / t).is_dir() for t in tasks):
        return base
    tarball = cache / SDIST
    if not tarball.is_file():
        download_sdist(tarball)
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("task.json")
                   and any(m.name.startswith(ROOT + t + "/") for t in tasks)]
        tar.extractall(cache, members=members, filter="data")
    return base


def download_sdist(tarball: Path) -> None:
    """Fetch the BIG-bench sdist from the package index (PEP 503 simple page; `PIP_INDEX_URL` if set) and check its
    sha256. Not `pip download`: pip >= 25 refuses this sdist (its metadata declares a direct-URL dependency)."""
    import hashlib
    import re
    import urllib.request

    from tqdm import tqdm

    from ..errors import atomic_path

    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        with urllib.request.urlopen(f"{index}/bigbench/", timeout=60) as page:
            html = page.read().decode("utf-8", "replace")
        match = re.search(r'href="([^"]*/' + re.escape(SDIST) + r')(?:#sha256=[0-9a-f]+)?"', html)
        if match is None:
            raise OSError(f"{index}/bigbench/ lists no {SDIST}")
        url = match.group(1) if "://" in match.group(1) else f"{index}/bigbench/{match.group(1)}"
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=60) as resp, atomic_path(tarball) as tmp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0)
            with tqdm(total=total or None, unit="B", unit_scale=True, desc=SDIST) as bar:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    f.write(block)
                    digest.update(block)
                    bar.update(len(block))
            if digest.hexdigest() != SDIST_SHA256:
                raise OSError(f"sha256 {digest.hexdigest()[:12]}... differs from the published {SDIST_SHA256[:12]}...")
    except OSError as exc:  # URLError is an OSError
        raise SlmError(f"{tarball}: could not download BIG-bench ({exc}); fetch {SDIST} from PyPI by hand into "
                       f"{tarball.parent}") from None


def _examples(path: Path) -> tuple[dict, list[dict]]:
    task = json.loads(path.read_text(encoding="utf-8"))
    return task, task.get("examples", [])


def sft_records(base: Path, per_subtask: int = 40) -> Iterator[dict]:
    for path in sorted((base / "natural_instructions").glob("*/task.json")):
        task, examples = _examples(path)
        prefix = (task.get("task_prefix") or task.get("description") or "").strip()
        for ex in examples[:per_subtask]:
            target = ex.get("target")
            reply = target[0] if isinstance(target, list) and target else target
            if isinstance(reply, str) and reply.strip() and isinstance(ex.get("input"), str):
                yield {"messages": [{"role": "user", "content": f"{prefix}\n\n{ex['input'].strip()}"},
                                    {"role": "assistant", "content": reply.strip()}], "task": path.parent.name}


def dpo_records(base: Path) -> Iterator[dict]:
    for path in sorted((base / "hhh_alignment").glob("*/task.json")):
        _, examples = _examples(path)
        for ex in examples:
            scores = ex.get("target_scores") or {}
            if len(scores) < 2:
                continue
            ranked = sorted(scores.items(), key=lambda kv: -kv[1])
            best, best_score = ranked[0]
            for worse, score in ranked[1:]:
                if score < best_score:
                    yield {"prompt": ex["input"].strip(), "chosen": best.strip(), "rejected": worse.strip(),
                           "task": path.parent.name}


def grpo_records(base: Path, subtasks: tuple[str, ...] = ("1_digit_addition", "1_digit_subtraction",
                                                          "2_digit_addition", "2_digit_subtraction")) -> Iterator[dict]:
    for name in subtasks:
        _, examples = _examples(base / "arithmetic" / name / "task.json")
        for ex in examples:
            yield {"prompt": f"{ex['input']} Reply with just the number.", "answer": str(ex["target"]).strip(),
                   "task": name}


def write_split(records: list[dict], out: Path, name: str, val_fraction: float) -> tuple[int, int]:
    train, val = [], []
    for r in records:
        (val if int(content_id(r), 16) / 16 ** 16 < val_fraction else train).append(r)
    for split, rows in (("train", train), ("val", val)):
        atomic_write_text(out / f"{name}_{split}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                                                 for r in rows))
    return len(train), len(val)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Convert BIG-bench tasks into post-training JSONL files")
    p.add_argument("--out", default="runs/posttrain-data", help="output folder")
    p.add_argument("--cache", default=str(default_cache()), help="where the sdist and extracted tasks are kept")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--sft-per-subtask", type=int, default=40, help="examples per natural_instructions subtask")
    args = p.parse_args(argv)
    try:
        base = fetch_tasks(Path(args.cache))
        out = Path(args.out)
        for name, records in (("sft", list(sft_records(base, args.sft_per_subtask))),
                              ("dpo", list(dpo_records(base))), ("grpo", list(grpo_records(base)))):
            n_train, n_val = write_split(records, out, name, args.val_fraction)
            print(f"{name}: {n_train} train / {n_val} val -> {out}/{name}_{{train,val}}.jsonl")
    except SlmError as exc:
        print(f"slm: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
