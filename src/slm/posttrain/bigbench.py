"""BIG-bench task files -> post-training JSONL for the demos: SFT chats, DPO pairs, GRPO math prompts.

    python -m slm.posttrain.bigbench --out runs/posttrain-data

writes sft_{train,val}.jsonl (natural_instructions: the task definition plus the input as the user turn, the first
target as the reply), dpo_{train,val}.jsonl (hhh_alignment: the best-scored answer is chosen, each worse one is a
rejected partner) and grpo_{train,val}.jsonl (arithmetic: the question, the exact answer). Splits are by a hash of the
record, so they are stable; the val files are held out of training.

Decisions:
- BIG-bench ships as one 358 MB PyPI sdist (Apache-2.0) with TensorFlow-era dependencies, so it is never installed:
  the sdist is fetched once with `pip download --no-deps` into a cache dir and only the needed task.json files are
  extracted with `tarfile`. pip >= 25 refuses the sdist (its metadata declares a direct-URL dependency even with
  --no-deps); the error says how to fetch it with an older pip in a throwaway venv.
- Every BIG-bench file carries a canary asking not to train on it for benchmarking; these files serve demos and
  tests of the post-training code only, never a benchmark claim.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator

from ..errors import SlmError, atomic_write_text
from .data import content_id

SDIST = "bigbench-1.0.0.tar.gz"
ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"
TASKS = ("hhh_alignment", "natural_instructions", "arithmetic")


def default_cache() -> Path:
    return Path(os.environ.get("SLM_CACHE", Path.home() / ".cache" / "slm")) / "bigbench"


def fetch_tasks(cache: Path, tasks: tuple[str, ...] = TASKS) -> Path:
    """Directory holding `benchmark_tasks/<task>/**/task.json` for `tasks`, downloading/extracting when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    base = cache / ROOT
    if all((base / t).is_dir() for t in tasks):
        return base
    tarball = cache / SDIST
    if not tarball.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "bigbench==1.0.0", "-d", str(cache)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not tarball.is_file():
            raise SlmError(f"{tarball}: download failed ({proc.stderr.strip().splitlines()[-1:] or ['?']}); pip >= 25 "
                           f"refuses this sdist: python -m venv /tmp/oldpip && /tmp/oldpip/bin/pip install pip==24.0 "
                           f"&& /tmp/oldpip/bin/pip download --no-deps bigbench==1.0.0 -d {cache}")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith("task.json")
                   and any(m.name.startswith(ROOT + t + "/") for t in tasks)]
        tar.extractall(cache, members=members, filter="data")
    return base


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
