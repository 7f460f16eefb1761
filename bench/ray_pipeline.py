"""The datatrove data pipeline on a real Ray cluster vs the local executor: throughput on the same corpus and identical
output bytes.

Usage: python bench/ray_pipeline.py [--mb 20] [--tasks 4] [--workers 2] [--nodes 2] [--quick]

A synthetic corpus (random words in `--mb` MB of .txt pages, with planted exact duplicates) runs through the whole
recipe (clean -> exact + MinHash dedup -> tokenize -> pack, byte tokenizer) twice: with `LocalPipelineExecutor`
(`--workers` processes) and with `RayPipelineExecutor` on a cluster this script starts on 127.0.0.1 (`ray start
--head` plus `--nodes - 1` worker nodes, `--workers` CPUs in all, in a temp dir; stopped at the end). The figures are
whole-pipeline MB/s of input text for each, their ratio, and whether every output file (shards, manifest, tokenizer;
not report.json with its timings) is byte-identical. Ray pays for scheduling and for pickling each stage to its
workers, so on one machine it trails the local executor; it is the path to more machines, not more speed here.
Last line: local_mb_s ray_mb_s ratio identical.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import emit  # (puts src/ on sys.path)


def corpus(folder: Path, mb: float, seed: int = 0) -> Path:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    folder.mkdir(parents=True)
    written, i, texts = 0, 0, []
    while written < mb * 1e6:
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(100, 600))) + "."
        if texts and rng.random() < 0.05:
            text = rng.choice(texts)  # an exact duplicate for dedup to find
        texts.append(text)
        (folder / f"p{i:06d}.txt").write_text(text)
        written, i = written + len(text), i + 1
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(temp: Path, nodes: int, cpus: int) -> str:
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    per_node = [cpus // nodes + (1 if n < cpus % nodes else 0) for n in range(nodes)]
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--temp-dir={temp}",
                    "--include-dashboard=false", "--disable-usage-stats", f"--num-cpus={per_node[0]}"], check=True,
                   env=env, capture_output=True)
    for n in per_node[1:]:
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                        "--disable-usage-stats", f"--num-cpus={n}"], check=True, env=env, capture_output=True)
    return f"127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=20.0)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2, help="Ray nodes (head + workers) on 127.0.0.1")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 MB")
    args = ap.parse_args()
    if args.quick:
        args.mb = 1.0
    from slm.data.pipeline import load_data_recipe, run_data_pipeline

    root = Path(tempfile.mkdtemp(prefix="slm-raybench-", dir="/tmp"))  # short: ray's socket paths
    try:
        src = corpus(root / "in", args.mb)
        mb = sum(p.stat().st_size for p in src.iterdir()) / 1e6

        def recipe(out: str, *overrides: str):
            return load_data_recipe(None, list(overrides), {
                "name": "bench", "out": str(root / out), "val_fraction": 0.01, "progress": False,
                "sources": [{"name": "pages", "path": str(src)}],
                "pack": {"tokenizer": "byte", "context_lengths": [256]},
                "executor": {"tasks": args.tasks, "workers": args.workers}})

        t0 = time.perf_counter()
        run_data_pipeline(recipe("local"))
        local_s = time.perf_counter() - t0
        address = start_cluster(root / "ray-tmp", args.nodes, args.workers)
        try:
            t0 = time.perf_counter()
            run_data_pipeline(recipe("ray", "--executor.kind=ray", f"--executor.ray_address={address}",
                                     "--executor.mem_per_cpu_gb=0.5"))
            ray_s = time.perf_counter() - t0
        finally:
            import ray

            ray.shutdown()
            subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)
        same = digest(root / "local") == digest(root / "ray")
        print(f"{mb:.1f} MB: local {local_s:.1f} s ({mb / local_s:.2f} MB/s), ray {ray_s:.1f} s ({mb / ray_s:.2f} "
              f"MB/s) on {args.nodes} nodes x {args.workers} CPUs; identical output: {same}", flush=True)
        emit(save=not args.quick, local_mb_s=mb / local_s, ray_mb_s=mb / ray_s, ratio=local_s / ray_s,
             identical=float(same))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
