"""Fill the README's Results section from a finished run's summary.json and its Speed section from the bench scripts'
runs/bench/*.json (figures are generated, never typed). Usage: python scripts/readme_results.py [RUN_DIR]"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


OLD_AMX_CPU = "Intel CPU with AMX (model not recorded), 2 cores"  # rows written before the CPU was recorded


def cpu_label(machine: dict | None) -> str:
    """"AMD EPYC ..., AVX512-BF16 yes, AMX no, 2 cores" from slm.runtime.cpu_features() (+ cores)."""
    if not machine:
        return OLD_AMX_CPU
    yes = {True: "yes", False: "no"}
    return (f"{machine.get('model') or 'CPU'}, AVX512-BF16 {yes[bool(machine.get('avx512_bf16'))]}, "
            f"AMX {yes[bool(machine.get('amx'))]}, {machine.get('cores', '?')} cores")


def _table_rows(block: str) -> dict[str, list[str]]:
    """Rows of the first markdown table in `block` keyed by their CPU, each with its steps first (the old one-row
    table: OLD_AMX_CPU; tables without a steps column: the steps their intro line names)."""
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        return {}
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]
    if "steps" not in header:
        named = re.search(r"([\d,]+) steps", block)
        steps = named.group(1) if named else "?"
        rows = [[r[0], steps, *r[1:]] if header[0] == "CPU" else [steps, *r] for r in rows]
    if header[0] == "CPU":
        return {r[0]: r[1:] for r in rows}
    return {OLD_AMX_CPU: rows[0]}


def render(summary: dict, previous: str = "") -> str:
    """The Results block: one row per CPU the quickstart ran on (this run's row replaces its CPU's old one; each row
    says how many steps its run trained) and this run's first sample."""
    val, t = summary.get("val", {}), summary.get("timings", {})
    rows = _table_rows(previous)
    rows[cpu_label(summary.get("machine"))] = [
        f"{summary['steps']:,}", f"{val.get('loss', float('nan')):.4f}", f"{val.get('bpb', float('nan')):.4f}",
        f"{val.get('perplexity', float('nan')):.2f}", f"{val.get('accuracy', float('nan')):.3f}",
        f"{summary.get('tok_per_s', 0):,.0f}", f"{t.get('total_s', 0):.0f} s"]
    choice = summary.get("precision_choice")
    lines = [
        f"Quickstart (`make demo`, {summary.get('params', 0):,} parameters, torch {summary.get('torch', '?')}), one "
        f"row per CPU it ran on (the row of the latest run, {summary['steps']:,} steps, comes from "
        f"`runs/quickstart/summary.json`{'; its precision/compile: ' + choice if choice else ''}):",
        "",
        "| CPU | steps | val loss | val bits/byte | val perplexity | val top-1 acc | train tok/s (median) | "
        "pipeline time |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {cpu} | {' | '.join(cells)} |" for cpu, cells in rows.items()),
        "",
        "A sample (latest run):",
        "",
        "```text",
        (summary.get("samples") or [""])[0].strip(),
        "```",
    ]
    return "\n".join(lines)


# The targets per bench figure: (figure, ">=" or "<=", bound).
TARGETS = {
    "train_throughput": [("ratio_fp32", ">=", 3.0), ("ratio_bf16", ">=", 2.0), ("mfu_bf16", ">=", 0.5)],
    "decode": [("ratio_b1", ">=", 3.0), ("smollm2_vs_llamacpp_f16", ">=", 0.8)],
    "memory": [("ratio", "<=", 0.6)],
    "serve": [("ratio_16", ">=", 4.0)],
    "step_profile": [("non_gemm_share", "<=", 0.3)],
    "hgrn_scan": [("scan_speedup", ">=", 10.0)],
}


def _bench_key(row: str) -> tuple[str, str]:
    """(script, CPU) of a bench table row: rows of other CPUs are kept when this machine's are rewritten."""
    cells = [c.strip() for c in row.strip().strip("|").split("|")]
    script = re.search(r"bench/(\w+)\.py", cells[0])
    machine = cells[-1].split("; ", 1)[-1]
    cpu = machine.split(";")[0] if not machine.startswith("torch") else re.search(r"AMX=\w+", machine).group(0)
    return (script.group(1) if script else cells[0], cpu)


def render_bench(bench_dir: Path, previous: str = "") -> str:
    lines = ["| bench | figures (medians) | targets | run |", "|---|---|---|---|"]
    fresh: list[str] = []
    for path in sorted(bench_dir.glob("*.json")):
        rec = json.loads(path.read_text())
        figs = rec["figures"]
        def fmt(items: dict) -> str:
            return ", ".join(f"{k} {v:,.4g}" if abs(v) < 10 else f"{k} {v:,.1f}" for k, v in items.items()
                             if isinstance(v, (int, float)))  # per-cell tables in `extra` stay in the JSON

        shown = fmt(figs) + (f" (also: {fmt(rec['extra'])})" if rec.get("extra") else "")
        checks = []
        for key, op, bound in TARGETS.get(path.stem, []):
            if key in figs:
                ok = figs[key] >= bound if op == ">=" else figs[key] <= bound
                checks.append(f"{key} {op} {bound}: {'met' if ok else '**not met**'}")
        fresh.append(f"| `{rec['command']}` | {shown} | {'; '.join(checks) or '-'} | {rec['date']}; "
                     f"{rec['machine']} |")
    kept = {_bench_key(r): r for r in previous.splitlines()[2:] if r.startswith("| `")}
    kept.update({_bench_key(r): r for r in fresh})
    return "\n".join(lines + [kept[k] for k in sorted(kept)])


EXPORT_ROWS = (("slm (safetensors, fp32, eager)", "slm"), ("llama.cpp GGUF f32", "llamacpp_f32"),
               ("llama.cpp GGUF f16", "llamacpp_f16"), ("llama.cpp GGUF q8_0", "llamacpp_q8_0"),
               ("ONNX Runtime fp32", "onnx_fp32"), ("ONNX Runtime fp16", "onnx_fp16"))


def render_export(rec: dict) -> str:
    """runs/bench/export.json -> a table: runtime, file size, greedy tokens/s, agreement with slm."""
    figs, extra = rec["figures"], rec.get("extra", {})
    lines = ["| runtime | file MiB | decode tok/s | top-1 agreement with slm | same 64-token greedy text |",
             "|---|---|---|---|---|"]
    for label, key in EXPORT_ROWS:
        rate = figs.get(f"{key}_tok_s")
        if rate is None:
            continue
        size = figs.get(f"{key}_mib", extra.get(f"{key}_mib"))
        top1 = figs.get(f"{key}_top1")
        same = extra.get(f"{key}_same_greedy")
        lines.append(f"| {label} | {size:,.1f} | {rate:,.1f} | {'-' if top1 is None else f'{top1:.3f}'} | "
                     f"{'-' if same is None else f'{int(same)}/5'} |")
    lines += ["", f"`{rec['command']}`; {rec['date']}; {rec['machine']}."]
    return "\n".join(lines)


def _fill(text: str, tag: str, body: str) -> str:
    return re.sub(rf"(<!-- {tag}:start -->\n).*?(\n<!-- {tag}:end -->)", lambda m: m.group(1) + body + m.group(2),
                  text, flags=re.S)


def main() -> int:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "quickstart"
    readme = ROOT / "README.md"
    text = readme.read_text()
    if (run_dir / "summary.json").is_file():
        old = re.search(r"<!-- results:start -->\n(.*?)\n<!-- results:end -->", text, flags=re.S)
        text = _fill(text, "results", render(json.loads((run_dir / "summary.json").read_text()),
                                             old.group(1) if old else ""))
    bench_dir = ROOT / "runs" / "bench"
    if any(bench_dir.glob("*.json")):
        old = re.search(r"<!-- bench:start -->\n(.*?)\n<!-- bench:end -->", text, flags=re.S)
        text = _fill(text, "bench", render_bench(bench_dir, old.group(1) if old else ""))
    if (bench_dir / "export.json").is_file():
        text = _fill(text, "export", render_export(json.loads((bench_dir / "export.json").read_text())))
    readme.write_text(text)
    print(text[text.index("## Results"):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
