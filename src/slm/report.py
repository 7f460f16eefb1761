"""Run report: Markdown with PNG plots of loss, bits-per-byte, learning rate and throughput, plus the samples.

Everything in it is read back from the run's own files (metrics.jsonl, summary.json, config.yaml), so a report can be
regenerated for any finished run (`slm report RUN_DIR`) and never contains a typed-in figure; lm-eval results that
`slm eval --tasks` saved in <run dir>/eval/ get a table each. matplotlib runs on the Agg backend: no display needed.
Several runs side by side, as one HTML page: `slm.report_compare`.
"""

from __future__ import annotations

from pathlib import Path

from .errors import SlmError, atomic_write_text, loads_json
from .train.metrics import MetricsLogger


def _plot(path: Path, title: str, series: list[tuple[str, list[int], list[float]]], ylabel: str,
          logy: bool = False) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [s for s in series if s[1]]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, xs, ys in series:
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _series(records: list[dict], kind: str, key: str) -> tuple[list[int], list[float]]:
    rows = [(r["step"], r[key]) for r in records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
    return [s for s, _ in rows], [v for _, v in rows]


def stability_section(records: list[dict]) -> list[str]:
    """Markdown lines on skipped / spiked steps, rollbacks and preemptions (none when training was uneventful)."""
    counts = {k: sum(1 for r in records if r.get("kind") == k) for k in ("skip", "spike", "rollback", "preempted")}
    if not any(counts.values()):
        return []
    lines = ["## Stability", "", f"{counts['skip']} non-finite step(s) skipped, {counts['spike']} loss spike(s) "
             f"skipped, {counts['rollback']} rollback(s), {counts['preempted']} preemption(s).", ""]
    rollbacks = [r for r in records if r.get("kind") == "rollback"]
    if rollbacks:
        lines += ["| at step | back to | reason | lr scale | bad data skipped |", "|---|---|---|---|---|"]
        for r in rollbacks:
            lines.append(f"| {r.get('step')} | {r.get('checkpoint')} | {r.get('reason')} | {r.get('lr_scale')} | "
                         f"{r.get('skipped_data')} |")
        lines.append("")
    return lines


def data_section(data: dict | None) -> list[str]:
    """Markdown lines on the run's dataset: documents per split and what dedup removed (or that it was skipped)."""
    if not data:
        return []
    from .data.dedup import describe_dedup

    docs = ", ".join(f"{data[k]:,} {k.removesuffix('_documents')}" for k in ("train_documents", "val_documents")
                     if isinstance(data.get(k), int))
    return ["## Data", "", f"{docs} documents in `{data.get('dir')}`; {describe_dedup(data.get('dedup'))}.", ""]


def sft_section(run_dir: Path, sft: dict | None) -> list[str]:
    """Markdown on `slm run`'s SFT stage (slm.posttrain.stage): chats, loss before/after, loss curve, replies."""
    if not sft:
        return []
    lines = ["## SFT: chat fine-tuning", ""]
    chats = sft.get("chats") or {}
    if chats.get("source") == "corpus":
        lines += [f"{chats.get('train_conversations', 0):,} train / {chats.get('val_conversations', 0):,} held-out "
                  f"conversations derived from the corpus ({chats.get('train_documents', 0)} / "
                  f"{chats.get('val_documents', 0)} documents, split by document) in `{chats.get('dir')}`.", ""]
    elif chats:
        lines += [f"Chats from {', '.join(chats.get('train_data') or [])}.", ""]
    before, after = sft.get("eval_before") or {}, sft.get("eval_after") or {}
    rows = [("steps", sft.get("steps")), ("held-out chat loss before", before.get("loss")),
            ("held-out chat loss after", after.get("loss")), ("first train loss", sft.get("train_loss_first")),
            ("last train loss", sft.get("train_loss_last")), ("checkpoint", sft.get("checkpoint"))]
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows if v is not None]
    lines.append("")
    records = MetricsLogger.read_jsonl(run_dir / "sft" / "metrics.jsonl") if (run_dir / "sft" / "metrics.jsonl"
                                                                                ).is_file() else []
    if _plot(run_dir / "plots" / "sft_loss.png", "SFT loss (assistant tokens)",
             [("train", *_series(records, "train", "loss")), ("val", *_series(records, "eval", "loss"))], "nats/token"):
        lines += ["![SFT loss](plots/sft_loss.png)", ""]
    for reply in sft.get("replies") or []:
        lines += ["```text", f"user: {reply.get('user')}", f"assistant: {reply.get('assistant')}", "```", ""]
    return lines


def lm_eval_section(run_dir: Path) -> list[str]:
    """Markdown tables of the lm-eval results `slm eval --tasks` saved in <run dir>/eval/, one per checkpoint."""
    files = sorted((run_dir / "eval").glob("lm_eval_*.json"))
    if not files:
        return []
    from .eval.harness import format_results

    lines = ["## Benchmark tasks (lm-eval)", ""]
    for path in files:
        try:
            results = loads_json(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            results = None
        if not isinstance(results, dict) or not isinstance(results.get("results"), dict):
            raise SlmError(f"{path}: corrupt lm-eval results; delete it, or write it again with `slm eval "
                           f"--checkpoint CKPT --tasks ...`")
        limit = (results.get("config") or {}).get("limit")
        lines += [f"`{path.stem.removeprefix('lm_eval_')}`" + (f" (--limit {limit})" if limit else "") + ":", "",
                  format_results(results), ""]
    return lines


def write_report(run_dir: str | Path, summary: dict | None = None) -> Path:
    """Write <run dir>/report.md and its plots; returns the report path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SlmError(f"{run_dir}: run directory not found; pass the folder of a run (it holds metrics.jsonl)")
    if not (run_dir / "metrics.jsonl").is_file() and not (run_dir / "summary.json").is_file():
        raise SlmError(f"{run_dir}: not a run directory (no metrics.jsonl or summary.json); pass a run's folder")
    records = MetricsLogger.read_jsonl(run_dir / "metrics.jsonl")
    if summary is None and (run_dir / "summary.json").is_file():
        try:
            summary = loads_json((run_dir / "summary.json").read_bytes())
        except (ValueError, UnicodeDecodeError):
            raise SlmError(f"{run_dir / 'summary.json'}: corrupt JSON; delete it and run `slm report` again") from None
        if not isinstance(summary, dict):
            raise SlmError(f"{run_dir / 'summary.json'}: expected a JSON object; delete it and run `slm report` again")
    summary = summary or {}
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    made = []
    if _plot(plots / "loss.png", "loss", [("train", *_series(records, "train", "loss")),
                                          ("val", *_series(records, "eval", "loss"))], "nats/token"):
        made.append(("Loss", "plots/loss.png"))
    if _plot(plots / "bpb.png", "validation bits per byte", [("val", *_series(records, "eval", "bpb"))], "bpb"):
        made.append(("Validation bits per byte", "plots/bpb.png"))
    if _plot(plots / "lr.png", "learning rate", [("lr", *_series(records, "train", "lr"))], "lr"):
        made.append(("Learning rate", "plots/lr.png"))
    if _plot(plots / "throughput.png", "throughput", [("tokens/s", *_series(records, "train", "tok_per_s"))],
             "tokens/s"):
        made.append(("Throughput", "plots/throughput.png"))
    for key in ("reward_mean", "accuracy"):
        if _plot(plots / f"{key}.png", key, [(key, *_series(records, "train", key))], key):
            made.append((key, f"plots/{key}.png"))

    lines = [f"# Run report: {run_dir.name}", ""]
    val = summary.get("val") or {}
    if summary:
        lines += ["| metric | value |", "|---|---|"]
        rows = [("steps", summary.get("steps")), ("parameters", summary.get("params")),
                ("val loss", val.get("loss")), ("val perplexity", val.get("perplexity")),
                ("val bits/byte", val.get("bpb")), ("val accuracy", val.get("accuracy")),
                ("val top-5 accuracy", val.get("top5_accuracy")),
                ("samples: valid UTF-8 (share)", summary.get("samples_utf8_valid")),
                ("training tokens/s (median)", summary.get("tok_per_s")),
                ("skipped steps", summary.get("skipped_steps")), ("spiked steps", summary.get("spiked_steps")),
                ("rollbacks", summary.get("rollbacks"))]
        rows += [(f"time: {k}", v) for k, v in (summary.get("timings") or {}).items()]
        for name, value in rows:
            if value is None:
                continue
            shown = f"{value:,.4f}" if isinstance(value, float) else (f"{value:,}" if isinstance(value, int) else value)
            lines.append(f"| {name} | {shown} |")
        lines.append("")
    lines += data_section(summary.get("data"))
    lines += sft_section(run_dir, summary.get("sft"))
    for title, rel in made:
        lines += [f"## {title}", "", f"![{title}]({rel})", ""]
    lines += stability_section(records)
    lines += lm_eval_section(run_dir)
    samples = summary.get("samples") or []
    in_training = [r for r in records if r.get("kind") == "sample"]
    if samples or in_training:
        lines += ["## Samples", ""]
        for text in samples:
            lines += ["```text", str(text), "```", ""]
        if in_training:
            lines += ["### During training", ""]
            for r in in_training[-6:]:
                lines += [f"step {r['step']}:", "```text", str(r.get("text", "")), "```", ""]
    if (run_dir / "config.yaml").is_file():
        config_text = (run_dir / "config.yaml").read_text(encoding="utf-8", errors="replace")
        lines += ["## Resolved config", "", "```yaml", config_text.rstrip(), "```", ""]
    out = run_dir / "report.md"
    atomic_write_text(out, "\n".join(lines))
    return out
