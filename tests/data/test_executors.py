"""The data pipeline on distributed engines: a real local Ray cluster gives the local executor's bytes; the Slurm
executor's job scripts (captured by a stand-in `sbatch`) say what they should; bad addresses fail in one line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import stat
import string
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from slm.data import pipeline as pl  # noqa: E402
from slm.data.pipeline import load_data_recipe, run_data_pipeline  # noqa: E402


def _corpus(root: Path, docs: int = 60) -> list[dict]:
    rng = random.Random(0)
    pages = root / "pages"
    pages.mkdir(parents=True)
    for i in range(docs):
        words = (" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                          for _ in range(rng.randint(20, 80))))
        (pages / f"p{i:02d}.txt").write_text(words + ".")
    (pages / "copy.txt").write_text((pages / "p00.txt").read_text())  # an exact duplicate for dedup
    return [{"name": "pages", "path": str(pages)}]


def _recipe(root: Path, sources: list[dict], out: str, **executor) -> dict:
    return {"name": "t", "out": str(root / out), "val_fraction": 0.1, "progress": False, "sources": sources,
            "clean": {"filters": [{"name": "length", "min_chars": 20}]}, "dedup": {"n_grams": 3, "bands": 4, "rows": 3},
            "pack": {"tokenizer": "byte", "context_lengths": [32]},
            "executor": {"tasks": 2, "workers": 2, **executor}}


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "report.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_job_scripts_say_what_each_stage_needs(tmp_path: Path, monkeypatch) -> None:
    """Every stage is submitted once through `sbatch` (a stand-in that keeps the script and its arguments), chained
    by --dependency, with the partition, resources, venv and pickled pipeline of the recipe."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"""#!/bin/sh
n=$(ls {jobs} | grep -c '.sh$')
n=$((n + 100))
for last; do :; done
cp "$last" {jobs}/job_$n.sh
echo "$@" > {jobs}/job_$n.args
echo "Submitted batch job $n"
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    sources = _corpus(tmp_path / "in", docs=4)
    r = load_data_recipe(None, ["--executor.kind=slurm", "--executor.partition=cpu", "--executor.time=01:00:00",
                                "--executor.cpus_per_task=2"], _recipe(tmp_path, sources, "out"))
    report = run_data_pipeline(r)
    assert report["submitted"][0] == "clean" and report["submitted"][-1] == "pack"
    scripts = {}
    for script in sorted(jobs.glob("job_*.sh")):
        text = script.read_text()
        if "launch_pickled_pipeline" not in text:  # datatrove's stats-merging job after each stage
            continue
        name = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("#SBATCH --job-name="))
        scripts[name] = (text, script.with_suffix(".args").read_text())
    stages = [f"t-{s}" for s in report["submitted"]]
    assert set(stages) == set(scripts)
    venv = Path(sys.prefix) / "bin" / "activate"
    for stage in stages:
        text, args = scripts[stage]
        assert text.startswith("#!/bin/bash\n")
        for line in ("#SBATCH --partition=cpu", "#SBATCH --time=01:00:00", "#SBATCH --cpus-per-task=2",
                     "#SBATCH --mem-per-cpu=2.0G", f"source {venv}"):
            assert line in text, (stage, line)
        pickled = r.work() / "logs" / stage.removeprefix("t-") / "executor.pik"
        assert f"launch_pickled_pipeline {pickled}" in text and pickled.is_file()
        assert ("--dependency=afterok:" in args) == (stage != "t-clean"), (stage, args)
    assert not r.out_dir().exists()  # submitted, not run


def test_a_ray_address_that_does_not_answer_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    from slm.cli import main

    pytest.importorskip("ray")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps(_recipe(tmp_path, _corpus(tmp_path / "in", docs=2), "out")))
    address = f"127.0.0.1:{_free_port()}"
    assert main(["data", "prepare", str(recipe), "--executor.kind=ray", f"--executor.ray_address={address}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and address in err and "ray start --head" in err, err
    assert not pl.load_data_recipe(recipe).work().exists() and not (tmp_path / "out").exists()


@pytest.fixture
def ray_cluster(tmp_path_factory):
    """A real Ray cluster on 127.0.0.1: a head node and one worker node, in a temp dir; stopped afterwards."""
    pytest.importorskip("ray")
    ray_bin = Path(sys.executable).with_name("ray")
    temp = Path("/tmp") / f"slm-ray-{os.getpid()}"  # ray's socket paths must stay short (< 108 bytes)
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": os.pathsep.join(sys.path)}
    common = ["--disable-usage-stats", "--num-cpus=1", "--object-store-memory=100000000"]
    try:
        subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                        f"--temp-dir={temp}", "--include-dashboard=false", *common], check=True, env=env,
                       capture_output=True, timeout=120)
        subprocess.run([str(ray_bin), "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                        *common], check=True, env=env, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_cluster_gives_the_local_executors_bytes(tmp_path: Path, ray_cluster: str) -> None:
    sources = _corpus(tmp_path / "in")
    local = run_data_pipeline(load_data_recipe(None, [], _recipe(tmp_path, sources, "local")))
    on_ray = run_data_pipeline(load_data_recipe(None, ["--executor.kind=ray", f"--executor.ray_address={ray_cluster}",
                                                       "--executor.mem_per_cpu_gb=0.1"],
                                                _recipe(tmp_path, sources, "ray")))
    assert _digest(tmp_path / "local") == _digest(tmp_path / "ray")
    assert local["tokenize"] == on_ray["tokenize"]
