"""`slm report RUN_A RUN_B`: the comparison page from two small fake run folders — both runs named, their curves drawn
(one SVG line per run and split), the eval tables filled, only the config keys that differ shown — and bad inputs
(exit 2, one line, nothing written). The slow test opens the page in headless Chromium and measures the curves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from slm.cli import main
from slm.report_compare import config_diff, load_run, nice_ticks, run_names, write_comparison


def make_run(root: Path, name: str, *, lr: float, slope: float, steps: int = 100) -> Path:
    """A run folder as `slm run` leaves it: metrics.jsonl (train every 10 steps, eval every 50), config.yaml,
    summary.json and an lm-eval results file."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    records = []
    for step in range(10, steps + 1, 10):
        records.append({"kind": "train", "step": step, "loss": 8.0 - slope * step / steps, "lr": lr * step / steps,
                        "grad_norm": 1.0, "tok_per_s": 1000.0 + 10 * step, "mfu": 0.1, "tokens": 4096 * step})
        if step % 50 == 0:
            records.append({"kind": "eval", "step": step, "loss": 7.9 - slope * step / steps,
                            "bpb": 3.0 - slope * step / (2 * steps), "accuracy": 0.1 + step / 1000})
    records.append({"kind": "sample", "step": steps, "text": "hello"})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"run": {"name": "shared", "seed": 1337}, "model": {"arch": "llama", "d_model": 64},
              "train": {"lr": lr, "steps": steps, "phases": []}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"steps": steps, "params": 12345, "tok_per_s": 1500.0, "checkpoint": f"{run}/checkpoints/step_000100",
               "val": {"loss": 7.9 - slope, "perplexity": 100.0, "bpb": 3.0 - slope / 2, "accuracy": 0.2,
                       "top5_accuracy": 0.4}}
    (run / "summary.json").write_text(json.dumps(summary))
    results = {"results": {"slm_bb_toy": {"alias": "slm_bb_toy", "acc,none": 0.25 + slope / 10,
                                          "acc_stderr,none": "N/A", "acc_norm,none": 0.5}},
               "slm_random_baseline": {"slm_bb_toy": 0.3333}, "config": {"limit": 8}}
    (run / "eval" / "lm_eval_step_000100.json").write_text(json.dumps(results))
    return run


@pytest.fixture
def two_runs(tmp_path) -> tuple[Path, Path]:
    return make_run(tmp_path, "run_a", lr=3e-3, slope=2.0), make_run(tmp_path, "run_b", lr=1e-3, slope=1.0)


def _svg(page: str, plot_id: str) -> str:
    match = re.search(rf'<svg id="{plot_id}".*?</svg>', page, flags=re.S)
    assert match, f"no {plot_id} in the page"
    return match.group(0)


def test_page_compares_two_runs(two_runs, tmp_path):
    out = write_comparison(list(two_runs), tmp_path / "cmp.html")
    page = out.read_text()
    assert "run_a" in page and "run_b" in page
    # curves: loss has train + val per run, bpb only val, throughput and lr only train
    for plot_id, lines in (("plot-loss", 4), ("plot-bits-per-byte", 2), ("plot-throughput", 2),
                           ("plot-learning-rate", 2)):
        svg = _svg(page, plot_id)
        assert svg.count("<polyline") == lines, plot_id
        for points in re.findall(r'<polyline points="([^"]+)"', svg):
            xy = [tuple(map(float, p.split(","))) for p in points.split()]
            assert all(0 <= x <= 760 and 0 <= y <= 320 for x, y in xy)  # inside the viewBox
            assert len({y for _, y in xy}) > 1  # a curve, not a flat line at the edge
    loss = _svg(page, "plot-loss")
    assert 'data-name="run_a train"' in loss and 'data-name="run_b val"' in loss
    assert loss.count('stroke-dasharray') == 2  # the val lines
    # config differences: train.lr differs, identical keys are left out
    diff = re.search(r'<table class="config-diff">.*?</table>', page, flags=re.S).group(0)
    assert "train.lr" in diff and "<td>0.003</td>" in diff and "<td>0.001</td>" in diff
    assert "model.d_model" not in diff and "run.seed" not in diff
    # tables: the median throughput of the steps after the first fifth, final eval, lm-eval with its baseline
    runs = re.search(r'<table class="runs">.*?</table>', page, flags=re.S).group(0)
    assert "1,650" in runs and "12,345" in runs and "step_000100" in runs
    final = re.search(r'<table class="final">.*?</table>', page, flags=re.S).group(0)
    assert "<b>5.9000</b>" in final  # the lower val loss of run_a, bold
    lm_eval = re.search(r'<table class="lm-eval">.*?</table>', page, flags=re.S).group(0)
    assert "slm_bb_toy" in lm_eval and "0.3333" in lm_eval and "0.4500" in lm_eval and "limit 8" in lm_eval
    # self-contained: nothing loaded from elsewhere
    assert not re.search(r'(src|href)="', page)


def test_a_run_without_evals_or_config_still_renders(tmp_path):
    a = make_run(tmp_path, "a", lr=1e-3, slope=1.0)
    b = tmp_path / "b"
    b.mkdir()
    (b / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 9.0, "tok_per_s": 5.0}) + "\n")
    page = write_comparison([a, b], tmp_path / "p.html").read_text()
    assert "No config.yaml in b" in page
    assert _svg(page, "plot-loss").count("<circle") >= 1  # b's single point is a marker, not a line


def test_config_diff_shows_missing_keys_and_lists(tmp_path):
    a, b = make_run(tmp_path, "a", lr=1e-3, slope=1.0), make_run(tmp_path, "b", lr=1e-3, slope=1.0)
    text = (b / "config.yaml").read_text().replace("phases: []", "phases: [{steps: 5}]") + "extra:\n  key: 1\n"
    (b / "config.yaml").write_text(text)
    diff = dict(config_diff([load_run(a), load_run(b)]))
    assert diff == {"extra.key": [None, 1], "train.phases": [[], [{"steps": 5}]]}


def test_run_names_tell_same_named_folders_apart(tmp_path):
    assert run_names([tmp_path / "x" / "run", tmp_path / "y" / "run"]) == ["x/run", "y/run"]
    assert run_names([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]


def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0.0, 10.0) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    ticks = nice_ticks(3.17, 3.93)
    assert ticks[0] >= 3.17 and ticks[-1] <= 3.93 and len(ticks) >= 3


def test_cli_writes_the_page_to_out_and_by_default_to_the_current_dir(two_runs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pages" / "compare.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    assert out.is_file() and capsys.readouterr().out.strip() == str(out)
    monkeypatch.chdir(tmp_path)
    assert main(["report", *map(str, two_runs)]) == 0
    assert (tmp_path / "report-compare.html").is_file()


def _bad_inputs(root: Path, good: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (argv, a fragment of the one error line)."""
    def run_with(name: str, files: dict[str, str]) -> Path:
        run = root / name
        shutil.copytree(good, run)
        for rel, text in files.items():
            (run / rel).write_text(text)
        return run

    nometrics = root / "nometrics"
    nometrics.mkdir()
    (nometrics / "notes.txt").write_text("x")
    empty = run_with("empty", {"metrics.jsonl": json.dumps({"kind": "sample", "step": 1, "text": "x"}) + "\n"})
    out_dir = root / "out_dir"
    out_dir.mkdir()
    g = str(good)
    return {
        "missing": (["report", g, str(root / "nope")], "nope: run directory not found"),
        "not-a-run": (["report", g, str(nometrics)], "not a run directory"),
        "no-records": (["report", g, str(empty)], "no train or eval records"),
        "bad-summary": (["report", g, str(run_with("s", {"summary.json": "{oops"}))], "summary.json: corrupt JSON"),
        "bad-config": (["report", g, str(run_with("c", {"config.yaml": "a: [1,\n"}))], "config.yaml: not valid YAML"),
        "bad-lm-eval": (["report", g, str(run_with("e", {"eval/lm_eval_step_000100.json": "["}))],
                        "lm_eval_step_000100.json: corrupt JSON"),
        "twice": (["report", g, g + "/"], "given twice"),
        "out-is-a-dir": (["report", g, str(run_with("o", {})), "--out", str(out_dir)], "out_dir: is a directory"),
    }


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(two_runs, tmp_path, monkeypatch, capsys):
    root = tmp_path / "bad"
    root.mkdir()
    cases = _bad_inputs(root, two_runs[0])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for case, (argv, fragment) in cases.items():
        assert main(argv) == 2, case
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("slm: error: ") and fragment in err, (case, err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no page, no temp file


@pytest.mark.slow
def test_page_in_headless_chromium_draws_every_curve(two_runs, tmp_path):
    """Debian's chromium via Playwright (its own browser download needs the network): every plot is laid out and
    every curve has a non-zero extent on screen."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium binary; run: apt-get install chromium")
    out = write_comparison(list(two_runs), tmp_path / "cmp.html")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(out.as_uri())
        assert "run_a" in page.title() and "run_b" in page.title()
        plots = page.eval_on_selector_all("svg.plot", """svgs => svgs.map(s => {
            const r = s.getBoundingClientRect();
            return {id: s.id, w: r.width, h: r.height,
                    lines: [...s.querySelectorAll('polyline')].map(p => {
                        const b = p.getBBox(); return [b.width, b.height, p.getTotalLength()]; })};
        })""")
        browser.close()
    assert [p["id"] for p in plots] == ["plot-loss", "plot-bits-per-byte", "plot-throughput", "plot-learning-rate"]
    assert [len(p["lines"]) for p in plots] == [4, 2, 2, 2]
    for plot in plots:
        assert plot["w"] > 300 and plot["h"] > 100, plot
        for width, height, length in plot["lines"]:
            assert width > 50 and height > 5 and length > 50, plot


def test_single_run_report_md_lists_its_lm_eval_results(two_runs):
    from slm.report import write_report

    text = write_report(two_runs[0]).read_text()
    section = text[text.index("## Benchmark tasks (lm-eval)"):]
    assert "`step_000100` (--limit 8):" in section and "| slm_bb_toy | acc | 0.4500 | 0.3333 |" in section


def test_long_curves_are_thinned_but_keep_their_ends():
    from slm.report_compare import thin

    points = [(float(i), float(i)) for i in range(10_001)]
    kept = thin(points, 1500)
    assert len(kept) <= 1502 and kept[0] == points[0] and kept[-1] == points[-1]
    assert thin(points[:10]) == points[:10]
