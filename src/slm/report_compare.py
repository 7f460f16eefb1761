"""`slm report RUN_A RUN_B ...`: one self-contained HTML page comparing runs — loss, bits-per-byte, learning-rate and
throughput curves of every run on one plot each, a table per kind of result (training, final held-out eval, lm-eval
benchmark tasks with their random-guess baseline) and the config keys whose values differ.

Decisions:
- Everything is read back from the runs' own files (metrics.jsonl, summary.json, config.yaml, eval/lm_eval_*.json from
  `slm eval --tasks`, see `slm.eval.harness.results_path`), so a page can be rebuilt at any time and holds no typed-in
  figure. A file that cannot be read is an error naming it, never a silently missing column.
- Plots are inline SVG written here (~80 lines), not matplotlib PNGs: the page stays one small text file that opens
  anywhere, curves stay sharp at any zoom, a hover shows the series' name, and a test (or a person) can find each
  curve as an element in the DOM. Colour is the run, line style the split (train solid, val dashed).
- Throughput is the median of the logged training steps after the first fifth (warm-up and compiling), as the trainer
  computes `tok_per_s` for summary.json; taken from metrics.jsonl it exists for unfinished runs too.
- Config differences compare the flattened keys (`train.lr`); a key missing from a run shows as "—". Runs are named
  by their folder, or by as many trailing path parts as it takes to tell them apart (`a/run` vs `b/run`).
- The page is written atomically (`slm.errors.atomic_write_text`); bad inputs are found before anything is written.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SlmError, atomic_write_text, loads_json

DEFAULT_OUT = "report-compare.html"  # `slm report RUN_A RUN_B` without --out: in the current directory
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10: distinct for up to 10 runs, then repeated
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 760, 320, 70, 16, 14, 42  # plot size and margins in SVG pixels
FINAL_KEYS = ("loss", "perplexity", "bpb", "accuracy", "top5_accuracy")  # held-out metrics shown, lower is better
LOWER_IS_BETTER = {"loss", "perplexity", "bpb"}  # for the first three


@dataclass
class RunData:
    """What the page shows of one run, read from its folder."""

    path: Path
    name: str
    records: list[dict]  # metrics.jsonl
    summary: dict  # summary.json ({} when the run has none yet)
    config: dict[str, Any]  # config.yaml flattened to dotted keys ({} when missing)
    lm_eval: list[tuple[str, dict]] = field(default_factory=list)  # (checkpoint name, lm-eval results) per file


def _read_json_object(path: Path, fix: str) -> dict:
    try:
        value = loads_json(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise SlmError(f"{path}: corrupt JSON; {fix}") from None
    if not isinstance(value, dict):
        raise SlmError(f"{path}: expected a JSON object; {fix}")
    return value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 3e-3}} -> {"train.lr": 3e-3}; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def load_run(path: str | Path, name: str = "") -> RunData:
    """Read a run folder; SlmError (naming the file and the fix) when it is not a run or a file is unreadable."""
    import yaml

    from .train.metrics import MetricsLogger

    path = Path(path)
    if not path.is_dir():
        raise SlmError(f"{path}: run directory not found; pass the folder of a run (it holds metrics.jsonl)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise SlmError(f"{path}: not a run directory (no metrics.jsonl); pass a folder `slm run` or `slm train` "
                       f"wrote")
    try:
        records = [r for r in MetricsLogger.read_jsonl(metrics) if isinstance(r, dict)]
    except UnicodeDecodeError:
        raise SlmError(f"{metrics}: not UTF-8 JSON lines; restore it or leave this run out of the report") from None
    if not any(r.get("kind") in ("train", "eval") and isinstance(r.get("step"), int) for r in records):
        raise SlmError(f"{metrics}: no train or eval records (the run stopped before its first log line); train "
                       f"it past --train.log_every steps or leave it out of the report")
    fix = "delete it and run `slm report` again"
    summary = _read_json_object(path / "summary.json", fix) if (path / "summary.json").is_file() else {}
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            tree = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise SlmError(f"{path / 'config.yaml'}: not valid YAML ({str(exc).splitlines()[0]}); restore it from "
                           f"a checkpoint's config.yaml") from None
        if tree is not None and not isinstance(tree, dict):
            raise SlmError(f"{path / 'config.yaml'}: expected a mapping of config sections; restore it from a "
                           f"checkpoint's config.yaml")
        config = flatten(tree or {})
    lm_eval = []
    for file in sorted((path / "eval").glob("lm_eval_*.json")):
        results = _read_json_object(file, "delete it, or write it again with `slm eval --checkpoint CKPT --tasks ...`")
        if isinstance(results.get("results"), dict):
            lm_eval.append((file.stem.removeprefix("lm_eval_"), results))
    return RunData(path=path, name=name or path.name, records=records, summary=summary, config=config,
                   lm_eval=lm_eval)


def run_names(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of each resolved path that tell the runs apart."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def series(records: list[dict], kind: str, key: str) -> list[tuple[float, float]]:
    """(step, value) of every `kind` record with a finite numeric `key`, in step order."""
    points = [(r["step"], float(r[key])) for r in records
              if r.get("kind") == kind and isinstance(r.get("step"), int) and isinstance(r.get(key), (int, float))
              and not isinstance(r.get(key), bool) and math.isfinite(float(r[key]))]
    return sorted(points)


def median_tok_per_s(records: list[dict]) -> float | None:
    """Median tokens/s of the logged training steps after the first fifth (warm-up and compiling), like the trainer."""
    rates = [v for _, v in series(records, "train", "tok_per_s")]
    steady = rates[len(rates) // 5:] or rates
    return statistics.median(steady) if steady else None


def final_eval(run: RunData) -> dict[str, float]:
    """The final held-out evaluation: summary.json's "val", else the last eval record of metrics.jsonl."""
    val = run.summary.get("val")
    if isinstance(val, dict) and val:
        return {k: v for k, v in val.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    evals = [r for r in run.records if r.get("kind") == "eval"]
    return {k: v for k, v in evals[-1].items() if k in FINAL_KEYS and isinstance(v, (int, float))} if evals else {}


# ---------------------------------------------------------------------------------------------------------------- #
# SVG plots


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    span = hi - lo
    raw = span / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        return lo - pad, hi + pad
    return lo - (hi - lo) * 0.04, hi + (hi - lo) * 0.04


def svg_plot(plot_id: str, lines: list[dict], ylabel: str) -> str:
    """An inline SVG line plot. `lines`: dicts with name, colour, dashed, points [(step, value)]."""
    lines = [ln for ln in lines if ln["points"]]
    xs = [x for ln in lines for x, _ in ln["points"]]
    ys = [y for ln in lines for _, y in ln["points"]]
    x0, x1 = _padded(min(xs), max(xs))
    y0, y1 = _padded(min(ys), max(ys))
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _TOP + (1 - (y - y0) / (y1 - y0)) * ph

    out = [f'<svg id="{plot_id}" class="plot" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" '
           f'width="{_W}" height="{_H}" role="img" aria-label="{html.escape(ylabel)} by step">']
    for t in nice_ticks(y0, y1):
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>'
                   f'<text class="tick" x="{_LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in nice_ticks(x0, x1, 6):
        out.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{_TOP}" y2="{_TOP + ph}"/>'
                   f'<text class="tick" x="{px(t):.1f}" y="{_TOP + ph + 16}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<rect class="frame" x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}"/>')
    out.append(f'<text class="axis" x="{_LEFT + pw / 2}" y="{_H - 6}" text-anchor="middle">step</text>')
    out.append(f'<text class="axis" transform="translate(14 {_TOP + ph / 2}) rotate(-90)" '
               f'text-anchor="middle">{html.escape(ylabel)}</text>')
    for ln in lines:
        name = html.escape(ln["name"])
        dash = ' stroke-dasharray="7 4"' if ln["dashed"] else ""
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in ln["points"])
        out.append(f'<g class="series" data-name="{name}"><title>{name}</title>')
        if len(ln["points"]) > 1:
            out.append(f'<polyline points="{points}" fill="none" stroke="{ln["colour"]}" stroke-width="1.8"{dash}/>')
        if len(ln["points"]) <= 40:  # sparse series (evals, short runs): mark each point
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{ln["colour"]}"/>' for x, y in ln["points"]]
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def thin(points: list[tuple[float, float]], most: int = 1500) -> list[tuple[float, float]]:
    """Every k-th point (and the last) so that at most ~`most` remain: more than the plot has pixels across adds only
    page size (a 100k-step run logged every step would be megabytes of SVG)."""
    if len(points) <= most:
        return points
    k = math.ceil(len(points) / most)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


def plot_section(runs: list[RunData], title: str, ylabel: str, keys: list[tuple[str, str, bool]]) -> str:
    """One figure: for every run, one line per (kind, key, dashed) in `keys` that it has data for."""
    lines = []
    for i, run in enumerate(runs):
        for kind, key, dashed in keys:
            label = "train" if kind == "train" else "val"
            lines.append({"name": f"{run.name} {label}", "colour": COLOURS[i % len(COLOURS)], "dashed": dashed,
                          "points": thin(series(run.records, kind, key))})
    plot_id = "plot-" + title.lower().replace(" ", "-")
    head = f"<h2>{html.escape(title)}</h2>"
    if not any(ln["points"] for ln in lines):
        return head + f'<p class="none">No run logged {html.escape(ylabel)}.</p>'
    dash = ' stroke-dasharray="7 4"'
    legend = "".join(f'<li><svg width="28" height="10"><line x1="0" x2="28" y1="5" y2="5" stroke="{ln["colour"]}" '
                     f'stroke-width="2.5"{dash if ln["dashed"] else ""}/></svg>{html.escape(ln["name"])}</li>'
                     for ln in lines if ln["points"])
    return head + f'<figure>{svg_plot(plot_id, lines, ylabel)}<ul class="legend">{legend}</ul></figure>'


# ---------------------------------------------------------------------------------------------------------------- #
# tables


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, dict)):
        return html.escape(json.dumps(value, default=str))
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], cls: str) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _best(values: list[float | None], lower: bool) -> float | None:
    known = [v for v in values if v is not None]
    return (min(known) if lower else max(known)) if len(set(known)) > 1 else None  # no bold when all are equal


def runs_table(runs: list[RunData]) -> str:
    header = ["run", "folder", "steps", "parameters", "train tok/s (median)", "checkpoint"]
    rows = []
    for i, run in enumerate(runs):
        steps = max((r["step"] for r in run.records if isinstance(r.get("step"), int)), default=None)
        swatch = f'<span class="swatch" style="background:{COLOURS[i % len(COLOURS)]}"></span>'
        checkpoint = run.summary.get("checkpoint")
        rate = median_tok_per_s(run.records)
        rows.append([swatch + html.escape(run.name), html.escape(str(run.path)),
                     _cell(run.summary.get("steps", steps)), _cell(run.summary.get("params")),
                     _cell(None if rate is None else round(rate)),
                     _cell(Path(checkpoint).name if checkpoint else None)])
    return _table([html.escape(h) for h in header], rows, "runs")


def final_eval_table(runs: list[RunData]) -> str:
    finals = [final_eval(run) for run in runs]
    if not any(finals):
        return '<p class="none">No run has a held-out evaluation yet.</p>'
    rows = []
    for key in FINAL_KEYS:
        values = [f.get(key) for f in finals]
        if all(v is None for v in values):
            continue
        best = _best(values, key in LOWER_IS_BETTER)
        rows.append([html.escape(key)] + [f"<b>{_cell(v)}</b>" if v is not None and v == best else _cell(v)
                                          for v in values])
    return _table(["metric"] + [html.escape(r.name) for r in runs], rows, "final")


def lm_eval_table(runs: list[RunData]) -> str:
    """Rows (task, metric), a column per (run, checkpoint) results file, then the random-guess baseline."""
    columns = [(run, ckpt, res) for run in runs for ckpt, res in run.lm_eval]
    if not columns:
        return ('<p class="none">No run has lm-eval results; add them with <code>slm eval --checkpoint RUN_DIR '
                '--tasks slm_bb_hhh_alignment --limit 100</code>.</p>')
    cells: dict[tuple[str, str], dict[int, float]] = {}
    baselines: dict[str, float] = {}
    for col, (_, _, res) in enumerate(columns):
        for task, metrics in res["results"].items():
            if not isinstance(metrics, dict):
                continue
            for key, value in metrics.items():
                if "," in key and "stderr" not in key and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    cells.setdefault((task, key.split(",")[0]), {})[col] = float(value)
        baselines.update({k: v for k, v in (res.get("slm_random_baseline") or {}).items()
                          if isinstance(v, (int, float))})
    header = ["task", "metric"]
    for run, ckpt, res in columns:
        limit = (res.get("config") or {}).get("limit")
        header.append(f"{html.escape(run.name)}<br><small>{html.escape(ckpt)}"
                      f"{'' if limit is None else f', limit {html.escape(str(limit))}'}</small>")
    header.append("random guess")
    rows = []
    for (task, metric), by_col in sorted(cells.items()):
        values = [by_col.get(c) for c in range(len(columns))]
        best = _best(values, lower=False)
        base = baselines.get(task) if metric in ("acc", "acc_norm") else None
        rows.append([html.escape(task), html.escape(metric)]
                    + [f"<b>{_cell(v)}</b>" if v is not None and v == best else _cell(v) for v in values]
                    + [_cell(base)])
    return _table(header, rows, "lm-eval")


def config_diff(runs: list[RunData]) -> list[tuple[str, list[Any]]]:
    """(dotted key, value per run) for every key whose values differ between runs (missing counts as a value)."""
    missing = object()
    keys = sorted({k for run in runs for k in run.config})
    out = []
    for key in keys:
        values = [run.config.get(key, missing) for run in runs]
        shown = [json.dumps(v, sort_keys=True, default=str) if v is not missing else None for v in values]
        if len(set(shown)) > 1:
            out.append((key, [None if v is missing else v for v in values]))
    return out


def config_section(runs: list[RunData]) -> str:
    without = [r.name for r in runs if not r.config]
    note = f'<p class="none">No config.yaml in {", ".join(html.escape(n) for n in without)}.</p>' if without else ""
    with_config = [r for r in runs if r.config]
    diff = config_diff(with_config)
    if len(with_config) < 2:
        return note + '<p class="none">Fewer than two configs to compare.</p>'
    if not diff:
        return note + '<p class="same">The configs are identical.</p>'
    rows = [[f"<code>{html.escape(key)}</code>"] + [html.escape(f"{v:g}") if isinstance(v, float) else _cell(v)
                                                    for v in values] for key, values in diff]  # 1e-08, not 0.0000
    return note + _table(["key"] + [html.escape(r.name) for r in with_config], rows, "config-diff")


# ---------------------------------------------------------------------------------------------------------------- #
# the page

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child,table.lm-eval td:nth-child(2),table.runs td:nth-child(2){text-align:left}
th{background:#f4f4f4}
svg.plot{max-width:100%;height:auto}svg.plot .grid{stroke:#e8e8e8}svg.plot .frame{fill:none;stroke:#999}
svg.plot text{font-size:11px;fill:#444}svg.plot .axis{font-size:12px}
ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:4px 18px;margin:4px 0 0 70px}
ul.legend svg{vertical-align:middle;margin-right:6px}.swatch{display:inline-block;width:10px;height:10px;
margin-right:6px;border-radius:2px}.none,.same{color:#666}figure{margin:0}small{color:#666}
"""


def render_page(runs: list[RunData], generated: str) -> str:
    """The whole HTML page (no external resources)."""
    names = ", ".join(html.escape(r.name) for r in runs)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>slm report: {names}</title><style>{_CSS}</style></head><body>",
        f"<h1>Run comparison: {names}</h1>",
        f'<p class="none">Written by <code>slm report</code> on {html.escape(generated)} from each run\'s '
        "metrics.jsonl, summary.json, config.yaml and eval/lm_eval_*.json. Colour = run; solid = train, dashed = "
        "validation. Throughput: median of the logged training steps after the first fifth.</p>",
        "<h2>Runs</h2>", runs_table(runs),
        plot_section(runs, "Loss", "loss (nats/token)", [("train", "loss", False), ("eval", "loss", True)]),
        plot_section(runs, "Bits per byte", "bits per byte", [("train", "bpb", False), ("eval", "bpb", True)]),
        plot_section(runs, "Throughput", "train tokens/s", [("train", "tok_per_s", False)]),
        plot_section(runs, "Learning rate", "learning rate", [("train", "lr", False)]),
        "<h2>Final held-out evaluation</h2>", final_eval_table(runs),
        "<h2>Benchmark tasks (lm-eval)</h2>", lm_eval_table(runs),
        "<h2>Config differences</h2>", config_section(runs),
        "</body></html>", ""]
    return "\n".join(parts)


def write_comparison(run_dirs: list[str | Path], out: str | Path = DEFAULT_OUT) -> Path:
    """Read every run (all checks first), then write the comparison page to `out` atomically; returns `out`."""
    if not run_dirs:
        raise SlmError("slm report: pass one or more run directories")
    paths = [Path(p) for p in run_dirs]
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise SlmError(f"{p}: given twice (also as {seen[p.resolve()]}); pass each run once")
        seen[p.resolve()] = p
    runs = [load_run(p) for p in paths]  # raises on the first bad run, before any output exists
    for run, name in zip(runs, run_names(paths)):
        run.name = name
    out = Path(out)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    atomic_write_text(out, render_page(runs, generated))
    return out
