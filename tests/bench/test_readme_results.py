"""scripts/readme_results.py renders the README's speed table from bench result files, judging each target."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "readme_results.py"


def _module():
    spec = importlib.util.spec_from_file_location("readme_results", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_table_reports_each_target_from_the_recorded_figures(tmp_path):
    records = {
        "train_throughput": {"ratio_fp32": 3.2, "ratio_bf16": 1.9, "mfu_bf16": 0.25},
        "memory": {"slm_peak_mib": 2500.0, "hf_peak_mib": 5000.0, "ratio": 0.5},
    }
    for name, figures in records.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"command": f"python bench/{name}.py", "machine": "m", "date": "d", "figures": figures,
             "extra": {"ratio_bf16_keepmem": 1.7} if name == "train_throughput" else {}}))
    table = _module().render_bench(tmp_path)
    assert "(also: ratio_bf16_keepmem 1.7)" in table
    assert "ratio_fp32 >= 3.0: met" in table
    assert "ratio_bf16 >= 2.0: **not met**" in table
    assert "mfu_bf16 >= 0.5: **not met**" in table
    assert "ratio <= 0.6: met" in table
    assert "`python bench/memory.py`" in table and "slm_peak_mib 2,500.0" in table


def test_fill_replaces_only_the_tagged_block():
    mod = _module()
    text = "a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nb"
    assert mod._fill(text, "bench", "new") == "a\n<!-- bench:start -->\nnew\n<!-- bench:end -->\nb"


def test_export_table_lists_each_runtime_measured():
    rec = {"command": "python bench/export.py", "machine": "m", "date": "d",
           "figures": {"slm_tok_s": 40.0, "llamacpp_q8_0_mib": 138.2, "llamacpp_q8_0_tok_s": 90.5,
                       "llamacpp_q8_0_top1": 0.97},
           "extra": {"slm_mib": 513.0, "llamacpp_q8_0_same_greedy": 3.0}}
    table = _module().render_export(rec)
    assert "| slm (safetensors, fp32, eager) | 513.0 | 40.0 | - | - |" in table
    assert "| llama.cpp GGUF q8_0 | 138.2 | 90.5 | 0.970 | 3/5 |" in table
    assert "ONNX" not in table and "`python bench/export.py`" in table


def test_rows_of_other_cpus_are_kept_and_this_cpus_row_is_replaced(tmp_path):
    mod = _module()
    amx_row = ("| `python bench/memory.py` | ratio 0.51 | - | 2026-11-22; torch 2.13.0+cpu, 2 threads, AMX=yes, 2 cores, "
               "load average 1.5, wall time |")
    zen_old = ("| `python bench/memory.py` | ratio 0.9 | - | 2026-12-01; AMD EPYC, AVX512-BF16=yes, AMX=no; torch 2.13.0, "
               "2 threads |")
    previous = "| bench | figures (medians) | targets | run |\n|---|---|---|---|\n" + amx_row + "\n" + zen_old
    (tmp_path / "memory.json").write_text(json.dumps(
        {"command": "python bench/memory.py", "machine": "AMD EPYC, AVX512-BF16=yes, AMX=no; torch 2.13.0, 2 threads",
         "date": "2026-12-02", "figures": {"ratio": 0.55}}))
    table = mod.render_bench(tmp_path, previous)
    assert amx_row in table and zen_old not in table and "ratio 0.55" in table


def test_results_table_has_one_row_per_cpu():
    mod = _module()
    old_block = ("Quickstart ...\n\n| val loss | val bits/byte | val perplexity | val top-1 acc | train tok/s (median) | "
                 "pipeline time |\n|---|---|---|---|---|---|\n| 4.0220 | 1.9183 | 55.81 | 0.284 | 19,196 | 196 s |")
    summary = {"steps": 800, "params": 10, "val": {"loss": 4.1, "bpb": 1.95, "perplexity": 60.0, "accuracy": 0.28},
               "tok_per_s": 12000, "timings": {"total_s": 250}, "samples": ["Romeo."],
               "machine": {"model": "AMD EPYC", "avx512_bf16": True, "amx": False, "cores": 2}}
    block = mod.render(summary, old_block)
    assert f"| {mod.OLD_AMX_CPU} | ? | 4.0220 | 1.9183 |" in block  # its steps were not recorded in that table
    assert "| AMD EPYC, AVX512-BF16 yes, AMX no, 2 cores | 800 | 4.1000 | 1.9500 |" in block
    again = mod.render({**summary, "val": {**summary["val"], "bpb": 1.9}}, block)  # the same CPU: its row replaced
    assert again.count("AMD EPYC") == 1 and "1.9000" in again and mod.OLD_AMX_CPU in again


def test_results_rows_keep_the_steps_their_runs_trained():
    mod = _module()
    old_block = ("Quickstart (`make demo`, 10 parameters, 800 steps, torch 2.13.0), one row per CPU:\n\n"
                 "| CPU | val loss | val bits/byte | val perplexity | val top-1 acc | train tok/s (median) | "
                 "pipeline time |\n|---|---|---|---|---|---|---|\n"
                 "| Intel Xeon, AVX512-BF16 yes, AMX yes, 2 cores | 4.0220 | 1.9183 | 55.81 | 0.284 | 19,196 | 196 s |")
    summary = {"steps": 500, "params": 10, "val": {"loss": 4.1, "bpb": 1.98, "perplexity": 60.0, "accuracy": 0.27},
               "tok_per_s": 12000, "timings": {"total_s": 200}, "samples": ["Romeo."],
               "machine": {"model": "AMD EPYC", "avx512_bf16": True, "amx": False, "cores": 2}}
    block = mod.render(summary, old_block)
    assert "| Intel Xeon, AVX512-BF16 yes, AMX yes, 2 cores | 800 | 4.0220 |" in block
    assert "| AMD EPYC, AVX512-BF16 yes, AMX no, 2 cores | 500 | 4.1000 | 1.9800 |" in block
    again = mod.render(summary, block)  # a table with the steps column keeps them
    assert "| Intel Xeon, AVX512-BF16 yes, AMX yes, 2 cores | 800 | 4.0220 |" in again and again.count("| 500 |") == 1
