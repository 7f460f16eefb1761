"""Architectures side by side: the same recipe, tokenizer, data and token budget for each model; val bits/byte at
equal tokens and at equal training time, training tok/s, peak memory, and each architecture's own step metrics
(spike rates, expert usage).

Usage: python bench/arch_compare.py --name NAME --recipe RECIPE --model LABEL=key=value[,key=value...] ...
         [--corpus LABEL=INPUT ...] [--quick] [-- extra --section.key=value overrides for every run]
e.g.   python bench/arch_compare.py --name slms --recipe recipes/slms-flow.yaml \\
         --model flow=preset=flow-tiny --model pulse=preset=pulse-tiny \\
         --model llama=preset=,arch=llama,d_model=256,n_layers=6,n_heads=4,n_kv_heads=2,ffn_hidden=1024 \\
         --corpus shakespeare=shakespeare --corpus fortunes=fortunes

Each (corpus, model) is one `slm train` process (so its peak RSS is its own, read with os.wait4). The first model of
a corpus trains the tokenizer and packs the data; the others reuse both (`--tokenizer.kind=pretrained`,
`--data.prepared_dir`), so every model sees the same tokens in the same order. `fortunes` as an input is the
fortune-mod corpus (/usr/share/games/fortunes, `apt-get install fortunes fortunes-min`), converted once to JSONL
documents under runs/compare/corpora/. "Equal time" reads each run's metrics.jsonl: training seconds (step time, no
eval) up to each eval, and compares the val bpb of every model at the latest eval each reached within the time the
fastest run took in all.

Writes runs/compare/<name>.json and a Markdown table between `<!-- compare-<name>:start -->` and `:end -->` in
README.md (figures generated, never typed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from slm.errors import atomic_write_text  # noqa: E402

CORPORA_DIR = ROOT / "runs" / "compare" / "corpora"
FORTUNES = Path("/usr/share/games/fortunes")


def fortunes_jsonl() -> Path:
    """The fortune-mod corpus as JSONL documents (one fortune each), built once."""
    out = CORPORA_DIR / "fortunes.jsonl"
    if out.is_file():
        return out
    files = [p for p in sorted(FORTUNES.rglob("*")) if p.is_file() and p.suffix not in (".dat", ".u8")
             and not p.is_symlink()]
    if not files:
        raise SystemExit(f"{FORTUNES}: no fortune files; run: apt-get install fortunes fortunes-min")
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        docs += [d.strip() for d in re.split(r"\n%\n", text) if len(d.strip()) > 20]
    atomic_write_text(out, "".join(json.dumps({"text": d}) + "\n" for d in docs))
    return out


def resolve_input(value: str) -> str:
    return str(fortunes_jsonl()) if value == "fortunes" else value


def parse_model(spec: str) -> tuple[str, list[str]]:
    """'flow=preset=flow-tiny,window=64' -> ('flow', ['--model.preset=flow-tiny', '--model.window=64'])."""
    label, _, rest = spec.partition("=")
    return label, [f"--model.{pair}" for pair in rest.split(",") if pair]


def run_one(args: list[str], log: Path) -> tuple[int, float, float]:
    """Run `slm train ARGS`; returns (exit code, peak RSS in MiB, wall seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "slm.cli", "train", *args], stdout=f, stderr=subprocess.STDOUT,
                                cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024, time.perf_counter() - t0


def train_seconds(records: list[dict]) -> list[tuple[int, float]]:
    """(step, cumulative training seconds) from the per-step train records (tokens / tok_per_s)."""
    out, elapsed, prev_tokens = [], 0.0, 0
    for r in records:
        if r.get("kind") == "train" and r.get("tok_per_s"):
            elapsed += (r["tokens"] - prev_tokens) / r["tok_per_s"]
            prev_tokens = r["tokens"]
            out.append((r["step"], elapsed))
    return out


def summarise(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    clock = dict(train_seconds(records))
    evals = [(r["step"], clock.get(r["step"], 0.0), r["bpb"]) for r in records if r.get("kind") == "eval" and "bpb" in r]
    last_train = [r for r in records if r.get("kind") == "train"][-1]
    extras = {k: v for k, v in last_train.items() if k.startswith(("spike_rate", "expert", "chunk_ratio", "aux_")) and
              not re.search(r"_\d+$", k)}
    return {"val_bpb": summary["val"]["bpb"], "val_loss": summary["val"]["loss"], "tok_per_s": summary["tok_per_s"],
            "params": summary.get("params"), "train_s": max(clock.values(), default=0.0), "evals": evals,
            "tokens": last_train["tokens"], **extras}


def bpb_within(evals: list[tuple[int, float, float]], seconds: float) -> float | None:
    reached = [bpb for _, t, bpb in evals if t <= seconds * 1.0001]
    return reached[-1] if reached else None


def render(name: str, results: dict) -> str:
    lines = []
    for corpus, models in results["runs"].items():
        budget = min(m["train_s"] for m in models.values())
        extra_keys = sorted({k for m in models.values() for k in m
                             if k.startswith(("spike_rate", "expert", "chunk_ratio"))})
        head = ["model", "params", "tokens", f"val bpb (equal tokens)", f"val bpb at {budget:.0f} s of training",
                "train tok/s", "peak RSS (MiB)", *extra_keys]
        lines += [f"**{corpus}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for label, m in models.items():
            timed = bpb_within(m["evals"], budget)
            row = [f"`{label}`", f"{m['params']:,}", f"{m['tokens']:,}", f"{m['val_bpb']:.4f}",
                   "-" if timed is None else f"{timed:.4f}", f"{m['tok_per_s']:,.0f}", f"{m['peak_rss_mib']:,.0f}",
                   *[f"{m[k]:.3f}" if k in m else "-" for k in extra_keys]]
            lines.append("| " + " | ".join(row) + " |")
        best = min(models, key=lambda k: models[k]["val_bpb"])
        behind = [f"`{k}` +{m['val_bpb'] - models[best]['val_bpb']:.3f}" for k, m in models.items() if k != best]
        lines += ["", f"Lowest val bpb at equal tokens: `{best}`; the others are behind by " + ", ".join(behind)
                  + " bits/byte.", ""]
    lines.append(f"`{results['command']}` — {results['date']}; {results['machine']}")
    return "\n".join(lines)


def fill_readme(name: str, body: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    tag = f"compare-{name}"
    pattern = rf"(<!-- {tag}:start -->\n).*?(\n<!-- {tag}:end -->)"
    if not re.search(pattern, text, flags=re.S):
        print(f"README.md has no <!-- {tag}:start --> marker; table not inserted")
        return
    atomic_write_text(readme, re.sub(pattern, lambda m: m.group(1) + body + m.group(2), text, flags=re.S))


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--model", action="append", required=True, help="LABEL=key=value[,key=value...] (model overrides)")
    ap.add_argument("--corpus", action="append", default=[], help="LABEL=INPUT (a path, 'shakespeare', 'fortunes')")
    ap.add_argument("--quick", action="store_true", help="smoke run: a few steps, no README update")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs" / "compare", help="where the runs go")
    args = ap.parse_args(argv)
    corpora = dict(c.split("=", 1) for c in args.corpus) or {"shakespeare": "shakespeare"}
    if args.quick:
        extra += ["--train.phases=[]", "--train.steps=3", "--train.seq_len=64", "--train.batch_size=2", "--eval.seq_len=0",
                  "--train.eval_every=0", "--train.eval_batches=2", "--tokenizer.vocab_size=512",
                  "--train.compile=false"]
    from harness import machine_line  # noqa: E402  (bench/ is on sys.path when run as a script)

    out_root = args.out_dir.resolve() / args.name
    results = {"command": "python bench/arch_compare.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": {}}
    for corpus, source in corpora.items():
        first: Path | None = None
        results["runs"][corpus] = {}
        for spec in args.model:
            label, model_args = parse_model(spec)
            run_dir = out_root / corpus / label
            run_args = [args.recipe, f"--run.out_dir={run_dir}", "--run.overwrite=true", "--train.log_every=1",
                        f"--data.inputs=[{resolve_input(source)}]", *model_args, *extra]
            if first is not None:
                run_args += ["--tokenizer.kind=pretrained", f"--tokenizer.path={first / 'tokenizer'}",
                             f"--data.prepared_dir={first / 'data'}"]
            run_dir.mkdir(parents=True, exist_ok=True)
            print(f"[{corpus}] {label}: slm train {' '.join(run_args)}", flush=True)
            code, rss, wall = run_one(run_args, run_dir.parent / f"{label}.log")
            if code != 0:
                print(f"  failed (exit {code}); see {run_dir.parent / f'{label}.log'}")
                return 1
            m = summarise(run_dir)
            m.update(peak_rss_mib=rss, wall_s=wall)
            results["runs"][corpus][label] = m
            print(f"  val bpb {m['val_bpb']:.4f}, {m['tok_per_s']:,.0f} tok/s, peak {rss:,.0f} MiB, {wall:.0f} s",
                  flush=True)
            first = first or run_dir
    body = render(args.name, results)
    print(body)
    if not args.quick:
        atomic_write_text(out_root.with_suffix(".json"), json.dumps(results, indent=2))
        fill_readme(args.name, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
