"""lm-eval tasks that run offline: BIG-bench task files (from its PyPI sdist) turned into lm-eval task YAMLs over
local JSONL, in a cache dir lm-eval's `TaskManager(include_path=...)` reads.

    slm eval --list-tasks            # what is there (preparing the files on first use)
    slm eval --checkpoint CKPT --tasks slm_bb_hhh_alignment,slm_bb_arithmetic_gen --limit 50

Decisions:
- lm-eval's own BIG-bench tasks load `hails/bigbench` from the Hub, which needs the network at run time. The same
  task files ship in the `bigbench` sdist; `slm.posttrain.bigbench.fetch_tasks` fetches it once (never installs it)
  and extracts only the task.json files; this module writes one JSONL + one YAML per (sub)task and a group per task.
- Multiple choice (`slm_bb_<task>[_<subtask>]`): BIG-bench's `target_scores` become the choices, the best-scored one
  the label; the prompt is BIG-bench's default "Q: <input>\\nA:" and each choice is scored as " <choice>" (acc and
  acc_norm). Tasks with exact answers (`arithmetic`) also get a generative variant (`..._gen`: greedy until a
  newline, exact match of the stripped answer).
- Everything is deterministic: lm-eval's seeds are fixed by `slm.eval.harness.run_tasks`, and the files are written
  atomically, so a second run reads the same files.
- Every file carries BIG-bench's canary asking not to train on it: these tasks score models, they never feed training.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SlmError, atomic_write_text
from ..runtime import slm_cache_dir

# BIG-bench tasks turned into lm-eval tasks (multiple choice unless noted): small enough to run on a CPU.
TASKS = ("hhh_alignment", "logical_deduction", "arithmetic", "causal_judgment", "date_understanding",
         "sports_understanding", "physical_intuition", "general_knowledge", "anachronisms", "common_morpheme")
GENERATIVE = ("arithmetic",)  # also scored by exact match of a greedy generation
PREFIX = "slm_bb_"
FORMAT_VERSION = 1  # bump when the YAML/JSONL layout changes: the cache is rebuilt


def cache_root() -> Path:
    return slm_cache_dir()


def task_dir() -> Path:
    return cache_root() / "lm_eval_tasks"


def offline_task_dir(prepare: bool = True) -> Path | None:
    """The folder of slm's offline lm-eval tasks; built from BIG-bench on first use when `prepare` (downloads the
    sdist once, ~50 s). None when it is not there and cannot be built (no network and no cached sdist)."""
    out = task_dir()
    stamp = out / "FORMAT"
    if stamp.is_file() and stamp.read_text().strip() == str(FORMAT_VERSION):
        return out
    if not prepare:
        return None
    try:
        build_tasks(out)
    except SlmError:
        return None
    return out


def build_tasks(out: Path, source: Path | None = None) -> list[str]:
    """Write the YAML + JSONL of every task in TASKS under `out`; returns the task names. `source` is a folder of
    `<task>/**/task.json` (default: BIG-bench's, fetched into the cache)."""
    if source is None:
        from ..posttrain.bigbench import default_cache, fetch_tasks

        source = fetch_tasks(default_cache(), TASKS)
    names: list[str] = []
    for task in TASKS:
        files = sorted((source / task).glob("**/task.json"))
        members = []
        for path in files:
            spec = json.loads(path.read_text(encoding="utf-8"))
            examples = [e for e in spec.get("examples", []) if isinstance(e.get("target_scores"), dict)
                        and isinstance(e.get("input"), str) and e["target_scores"]]
            if not examples:
                continue
            rel = path.parent.relative_to(source / task)
            sub = "_".join(rel.parts)  # "" for a task without subtasks
            name = PREFIX + task + (f"_{sub}" if sub else "")
            _write_multiple_choice(out, name, examples)
            members.append(name)
            if task in GENERATIVE and all(isinstance(e.get("target"), (str, list)) for e in examples):
                _write_generative(out, name + "_gen", examples)
                members.append(name + "_gen")
        if len(members) > 1:
            mc = [m for m in members if not m.endswith("_gen")]
            _write_group(out, PREFIX + task, mc)
            gen = [m for m in members if m.endswith("_gen")]
            if gen:
                _write_group(out, PREFIX + task + "_gen", gen)
        names += members
    if not names:
        raise SlmError(f"{source}: no BIG-bench task.json with examples found for {', '.join(TASKS)}")
    atomic_write_text(out / "FORMAT", f"{FORMAT_VERSION}\n")
    return names


def _task_header(name: str, data: Path, output_type: str) -> list[str]:
    """The YAML lines every offline task shares: its name, its local JSONL as the test split, the BIG-bench prompt."""
    return [f"task: {name}", "dataset_path: json",
            f"dataset_kwargs: {{data_files: {{test: {json.dumps(str(data))}}}}}", "test_split: test",
            f"output_type: {output_type}", 'doc_to_text: "Q: {{question}}\\nA:"']


def _write_multiple_choice(out: Path, name: str, examples: list[dict]) -> None:
    rows = []
    for e in examples:
        choices = [str(c) for c in e["target_scores"]]
        scores = list(e["target_scores"].values())
        rows.append({"question": e["input"].strip(), "choices": choices, "label": scores.index(max(scores))})
    data = out / "data" / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    yaml_text = "\n".join([
        *_task_header(name, data, "multiple_choice"),
        'doc_to_choice: "{{choices}}"',
        'doc_to_target: "{{label}}"',
        'target_delimiter: " "',
        "metric_list:",
        "  - {metric: acc, aggregation: mean, higher_is_better: true}",
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}",
        "metadata: {version: 1.0}",
        "",
    ])
    atomic_write_text(out / f"{name}.yaml", yaml_text)


def _write_generative(out: Path, name: str, examples: list[dict]) -> None:
    rows = []
    for e in examples:
        target = e["target"][0] if isinstance(e["target"], list) else e["target"]
        rows.append({"question": e["input"].strip(), "answer": str(target).strip()})
    data = out / "data" / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    yaml_text = "\n".join([
        *_task_header(name, data, "generate_until"),
        'doc_to_target: "{{answer}}"',
        'generation_kwargs: {until: ["\\n"], do_sample: false, max_gen_toks: 16}',
        "filter_list:",
        "  - name: strip",
        "    filter: [{function: regex, regex_pattern: \"(-?[0-9]+)\", group_select: 0}, {function: take_first}]",
        "metric_list:",
        "  - {metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true, "
        "ignore_punctuation: true}",
        "metadata: {version: 1.0}",
        "",
    ])
    atomic_write_text(out / f"{name}.yaml", yaml_text)


def _write_group(out: Path, group: str, members: list[str]) -> None:
    text = "\n".join([f"group: {group}", "task:", *[f"  - {m}" for m in members],
                      "aggregate_metric_list:", "  - {metric: acc, aggregation: mean, weight_by_size: true}"
                      if not group.endswith("_gen") else
                      "  - {metric: exact_match, aggregation: mean, weight_by_size: true}",
                      "metadata: {version: 1.0}", ""])
    atomic_write_text(out / f"{group}.yaml", text)


def list_tasks(prepare: bool = True) -> list[str]:
    folder = offline_task_dir(prepare)
    if folder is None:
        return []
    return sorted(p.stem for p in folder.glob("*.yaml"))
