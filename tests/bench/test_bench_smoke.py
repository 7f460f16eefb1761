"""Each bench script runs end to end with --quick and ends with its one `key=value` line (figures are not checked:
speed targets live in the scripts' output, never in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
LAST_LINE_KEYS = {
    "attention.py": ["sdpa_ms", "dense_ms", "speedup"],
    "train_throughput.py": ["slm_tok_s", "hf_fp32_tok_s", "hf_bf16_tok_s", "ratio_fp32", "ratio_bf16", "mfu_bf16"],
    "decode.py": ["ratio_b1", "ratio_b8"],
    "memory.py": ["slm_peak_mib", "hf_peak_mib", "ratio"],
    "lif.py": ["slm_ms"],
    "serve.py": ["ratio_4"],
    "export.py": ["slm_tok_s", "llamacpp_f32_mib", "llamacpp_f32_top1"],
    "distributed.py": ["ddp_efficiency", "fsdp_efficiency", "fsdp_state_ratio"],
    "step_profile.py": ["non_gemm_share", "step_ms", "gemm_ms"],
}


@pytest.mark.slow  # each takes 30-90 s on 2 cores (HF models, subprocesses)
@pytest.mark.parametrize("script", sorted(LAST_LINE_KEYS))
def test_bench_quick_run_ends_with_key_value_line(script):
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    figures = dict(item.split("=", 1) for item in last.split())
    assert list(figures)[:len(LAST_LINE_KEYS[script])] == LAST_LINE_KEYS[script]
    for key in LAST_LINE_KEYS[script]:  # the headline figures are measured rates/ratios: positive
        assert float(figures[key]) > 0, f"{key}={figures[key]}"


@pytest.mark.slow  # three tiny `slm train` runs in subprocesses
def test_arch_compare_quick_run_trains_every_model_on_the_same_data(tmp_path, corpus_dir):
    out = subprocess.run([sys.executable, str(BENCH / "arch_compare.py"), "--name", "smoke", "--quick",
                          "--out-dir", str(tmp_path),
                          "--recipe", "recipes/slms-flow.yaml", "--model", "flow=preset=flow-test,vocab_size=0",
                          "--model", "pulse=preset=pulse-test,vocab_size=0", "--model", "llama=preset=test,vocab_size=0",
                          "--corpus", f"tiny={corpus_dir}", "--", "--data.num_workers=1"],
                         capture_output=True, text=True, timeout=900, check=False, cwd=BENCH.parent)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = out.stdout[out.stdout.index("**tiny**"):]
    for label in ("flow", "pulse", "llama"):
        assert f"| `{label}` |" in table
    assert "spike_rate" in table  # Pulse's own step metric reaches the table
