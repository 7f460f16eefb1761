"""Fill the README's Results section from a finished run's summary.json and its Speed section from the bench scripts'
runs/bench/*.json (figures are generated, never typed). Usage: python scripts/readme_results.py [RUN_DIR]"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def render(summary: dict) -> str:
    val, t = summary.get("val", {}), summary.get("timings", {})
    lines = [
        f"Quickstart (`make demo`, {summary.get('params', 0):,} parameters, {summary['steps']} steps, "
        f"torch {summary.get('torch', '?')}, this machine's 2 CPU cores):",
        "",
        "| val loss | val bits/byte | val perplexity | val top-1 acc | train tok/s (median) | pipeline time |",
        "|---|---|---|---|---|---|",
        f"| {val.get('loss', float('nan')):.4f} | {val.get('bpb', float('nan')):.4f} | "
        f"{val.get('perplexity', float('nan')):.2f} | {val.get('accuracy', float('nan')):.3f} | "
        f"{summary.get('tok_per_s', 0):,.0f} | {t.get('total_s', 0):.0f} s |",
        "",
        "A sample:",
        "",
        "```text",
        (summary.get("samples") or [""])[0].strip(),
        "```",
    ]
    return "\n".join(lines)


# The targets per bench figure: (figure, ">=" or "<=", bound).
TARGETS = {
    "train_throughput": [("ratio_fp32", ">=", 3.0), ("ratio_bf16", ">=", 2.0), ("mfu_bf16", ">=", 0.5)],
    "decode": [("ratio_b1", ">=", 3.0)],
    "memory": [("ratio", "<=", 0.6)],
    "serve": [("ratio_16", ">=", 4.0)],
}


def render_bench(bench_dir: Path) -> str:
    lines = ["| bench | figures (medians) | targets | run |", "|---|---|---|---|"]
    for path in sorted(bench_dir.glob("*.json")):
        rec = json.loads(path.read_text())
        figs = rec["figures"]
        def fmt(items: dict) -> str:
            return ", ".join(f"{k} {v:,.4g}" if abs(v) < 10 else f"{k} {v:,.1f}" for k, v in items.items())

        shown = fmt(figs) + (f" (also: {fmt(rec['extra'])})" if rec.get("extra") else "")
        checks = []
        for key, op, bound in TARGETS.get(path.stem, []):
            if key in figs:
                ok = figs[key] >= bound if op == ">=" else figs[key] <= bound
                checks.append(f"{key} {op} {bound}: {'met' if ok else '**not met**'}")
        lines.append(f"| `{rec['command']}` | {shown} | {'; '.join(checks) or '-'} | {rec['date']}; "
                     f"{rec['machine']} |")
    return "\n".join(lines)


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
        text = _fill(text, "results", render(json.loads((run_dir / "summary.json").read_text())))
    bench_dir = ROOT / "runs" / "bench"
    if any(bench_dir.glob("*.json")):
        text = _fill(text, "bench", render_bench(bench_dir))
    if (bench_dir / "export.json").is_file():
        text = _fill(text, "export", render_export(json.loads((bench_dir / "export.json").read_text())))
    readme.write_text(text)
    print(text[text.index("## Results"):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
