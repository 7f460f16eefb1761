"""Fill the README's Results section from a finished run's summary.json (figures are generated, never typed)."""

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


def main() -> int:
    run_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs" / "quickstart"
    summary = json.loads((run_dir / "summary.json").read_text())
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = re.sub(r"(<!-- results:start -->\n).*?(\n<!-- results:end -->)",
                 lambda m: m.group(1) + render(summary) + m.group(2), text, flags=re.S)
    readme.write_text(new)
    print(render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
