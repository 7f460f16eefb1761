"""The MFU peak: measured once per machine and cached, never exceeded (a beaten peak is raised, in the cache too), and
described in words. The GEMM measurement is replaced by fake figures: no heavy measurement here."""

from __future__ import annotations

import json

import pytest
import torch

from slm.train import metrics
from slm.train.metrics import PEAK_FILE, Peak, machine_key, peak_flops

CPU = torch.device("cpu")


@pytest.fixture
def fake_gemm(tmp_path, monkeypatch) -> list[tuple]:
    monkeypatch.setenv("SLM_CACHE", str(tmp_path / "cache"))
    calls: list[tuple] = []

    def measure(device, dtype, reps=4, **kw):
        calls.append((device.type, dtype, reps))
        return 1e12

    monkeypatch.setattr(metrics, "measure_gemm_flops", measure)
    return calls


def _cache(tmp_path) -> dict:
    return json.loads((tmp_path / "cache" / PEAK_FILE).read_text())


def test_peak_is_measured_once_per_machine_and_cached(fake_gemm, tmp_path, monkeypatch):
    peak = peak_flops(CPU, torch.bfloat16)
    assert peak.flops == 1e12 and peak.source == "measured" and len(fake_gemm) == 1
    assert fake_gemm[0][2] >= 4  # the best of several repetitions
    assert _cache(tmp_path) == {machine_key(CPU, torch.bfloat16): 1e12}
    again = peak_flops(CPU, torch.bfloat16)  # a new process on the same machine reads the cache
    assert again.flops == 1e12 and len(fake_gemm) == 1
    peak_flops(CPU, torch.float32)  # another dtype is another entry
    assert len(fake_gemm) == 2 and len(_cache(tmp_path)) == 2


def test_key_names_cpu_model_dtype_torch_and_threads(monkeypatch):
    key = machine_key(CPU, torch.bfloat16)
    assert "bf16" in key and torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    monkeypatch.setattr(torch, "get_num_threads", lambda: 999)
    assert machine_key(CPU, torch.bfloat16) != key and "999 threads" in machine_key(CPU, torch.bfloat16)


def test_mfu_never_exceeds_one_and_a_beaten_peak_is_raised_in_the_cache(fake_gemm, tmp_path):
    peak = peak_flops(CPU, torch.bfloat16)
    assert peak.mfu(0.5e12) == pytest.approx(0.5) and peak.source == "measured"
    assert peak.mfu(2.16e12) == 1.0  # the 216 % of the issue: the peak was low
    assert peak.flops == 2.16e12 and peak.source == "observed"
    assert _cache(tmp_path)[peak.cache_key] == 2.16e12  # the next run starts from the higher peak
    assert peak.mfu(1.08e12) == pytest.approx(0.5)
    assert peak_flops(CPU, torch.bfloat16).flops == 2.16e12 and len(fake_gemm) == 1


def test_cache_is_only_raised_and_a_broken_cache_is_measured_again(fake_gemm, tmp_path):
    metrics._store_peak("k", 3e12)
    metrics._store_peak("k", 1e12)  # lower: ignored
    assert _cache(tmp_path)["k"] == 3e12
    (tmp_path / "cache" / PEAK_FILE).write_text("{not json")
    assert peak_flops(CPU, torch.float32).flops == 1e12 and len(fake_gemm) == 1


def test_describe_says_what_mfu_is_relative_to():
    assert Peak(1.2e12, "bf16", "measured").describe() == "1.20 TFLOP/s bf16 measured"
    assert Peak(53.9e9, "fp32", "measured").describe() == "53.9 GFLOP/s fp32 measured"
    spec = Peak(989e12, "bf16", "spec")
    assert spec.mfu(1000e12) == 1.0 and spec.describe() == "1000.00 TFLOP/s bf16 observed"


def _wandb_history(run_file) -> list[dict]:
    """The history records of an offline run's .wandb file: W&B's LevelDB-style log (a 7-byte file header, 32 KiB
    blocks of chunks with a crc32 / length / type header) of protobuf `Record`s, read with wandb's own protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, records, pending = run_file.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def test_wandb_sink_logs_the_run_for_real_offline(tmp_path, prepared, monkeypatch, fake_gemm):
    """The real wandb package in offline mode: the run's .wandb file holds every train step's loss and the eval."""
    wandb = pytest.importorskip("wandb")
    from slm_testutil import run_tiny, tiny_config

    for var, sub in (("WANDB_DIR", ""), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / "wb" / sub))
    (tmp_path / "wb").mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_tiny(tiny_config(tmp_path / "run", prepared, steps=4, wandb=True, eval_every=2), prepared)
    # run.finish() can return before wandb's service process has written the run's log; teardown waits for it (as the
    # interpreter's exit does at the end of an `slm` command)
    wandb.teardown()
    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    rows = _wandb_history(run_file)
    losses = {row["_step"]: row["train/loss"] for row in rows if "train/loss" in row}
    expected = {r["step"]: r["loss"] for r in result.history if r["kind"] == "train"}
    assert losses.keys() == expected.keys() == {1, 2, 3, 4}
    assert all(losses[s] == pytest.approx(expected[s]) for s in expected)
    assert any("eval/loss" in row for row in rows)
    assert all(0 < row["train/mfu"] <= 1 for row in rows if "train/mfu" in row)
