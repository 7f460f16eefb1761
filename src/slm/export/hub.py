"""`slm push`: put a checkpoint (as an HF folder) or an export (HF / ONNX folder, GGUF file) on the Hugging Face Hub,
with a model card generated from the run.

Design decisions
- One commit (`HfApi.create_commit` with one add per file): a reader never sees a half-uploaded repo, and nothing is
  copied to a staging folder first (a GGUF can be gigabytes). A checkpoint is exported with `slm.export.hf` into a
  temporary folder first, so the repo loads with `AutoModelForCausalLM.from_pretrained(repo_id)`.
- The token comes only from the environment (`HF_TOKEN`) or the cached `hf auth login`; there is no --token flag
  (it would land in shell history) and the token is never printed. Without one: a one-line error before any work.
- The model card is built from the run's own files, like `slm report`: the resolved config (architecture, size,
  data inputs, training settings), summary.json's metrics table, the loss curve (plots/loss.png of the run, copied),
  intended use and limitations, and the license field (`--license`). A card the export already has is kept.
- The network boundary is `HfApi.create_repo` / `create_commit`; the tests replace them and check what would be sent.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..errors import SlmError, loads_json

_SKIP = {".slm-output.json"}  # slm's own marker file: not part of a model repo


def _require_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise SlmError("slm push needs huggingface_hub; run: pip install huggingface_hub") from None
    return huggingface_hub


def _token_available(hub: Any) -> bool:
    return bool(hub.get_token())


def find_run_dir(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (it or a parent up to two levels holding metrics.jsonl/summary.json)."""
    for folder in (checkpoint, *list(checkpoint.resolve().parents)[:2]):
        if (folder / "summary.json").is_file() or (folder / "metrics.jsonl").is_file():
            return folder
    return None


def _summary(run_dir: Path | None) -> dict[str, Any]:
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return {}
    try:
        data = loads_json((run_dir / "summary.json").read_bytes())
    except (ValueError, UnicodeDecodeError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def model_card(*, repo_id: str, config: Any | None, summary: dict[str, Any], files: list[str], license: str,
               has_plot: bool) -> str:
    """README.md of the model repo (YAML front matter + Markdown)."""
    arch = getattr(getattr(config, "model", None), "arch", "unknown")
    front = ["---", f"license: {license}", "library_name: slm", "pipeline_tag: text-generation",
             "tags:", "- slm", f"- {arch}"]
    if any(f.endswith(".gguf") for f in files):
        front.append("- gguf")
    if any(f.endswith(".onnx") for f in files):
        front.append("- onnx")
    lines = [*front, "---", "", f"# {repo_id.split('/')[-1]}", "",
             f"A small causal language model (`{arch}`) trained with [slm](https://pypi.org/project/slm/)."]
    if config is not None:
        m = config.model
        lines += ["", "## Model", "", "| field | value |", "|---|---|", f"| architecture | {m.arch} |"]
        if summary.get("params"):
            lines.append(f"| parameters | {summary['params']:,} |")
        for key in ("preset", "d_model", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            if getattr(m, key, None) not in (None, ""):
                lines.append(f"| {key} | {getattr(m, key)} |")
        lines += ["", "## Training data", ""]
        inputs = list(config.data.inputs) or ["(not recorded: imported or trained from a prepared dataset)"]
        lines += [f"- `{x}`" for x in inputs]
        t = config.train
        lines += ["", "## Training", "", f"steps {getattr(t, 'steps', '?')}, batch size "
                  f"{getattr(t, 'batch_size', '?')}, sequence length {getattr(t, 'seq_len', '?')}, learning rate "
                  f"{getattr(t, 'lr', '?')}, seed {config.run.seed}."]
    val = summary.get("val") or {}
    rows = [("validation loss", val.get("loss")), ("validation perplexity", val.get("perplexity")),
            ("validation bits/byte", val.get("bpb")), ("validation top-1 accuracy", val.get("accuracy")),
            ("training steps", summary.get("steps")), ("training tokens/s", summary.get("tok_per_s"))]
    rows = [(k, v) for k, v in rows if v is not None]
    if rows:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:,.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    if has_plot:
        lines += ["", "## Training curve", "", "![loss](loss.png)"]
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in sorted(files)]
    lines += ["", "## Intended use and limitations", "",
              "A small research / educational model: text continuation in the style of its training data. It has "
              "not been evaluated for safety or factuality and will produce wrong or offensive text; do not use it "
              "for decisions about people or in production without your own evaluation.", ""]
    return "\n".join(lines)


def _files_of(path: Path) -> list[tuple[str, Path]]:
    if path.is_file():
        return [(path.name, path)]
    return [(str(p.relative_to(path)), p) for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in _SKIP and not p.name.startswith(".")]


def push(repo_id: str, *, checkpoint: str | Path | None = None, export: str | Path | None = None,
         private: bool = False, license: str = "apache-2.0", api: Any = None) -> str:
    """Upload to `repo_id` in one commit; returns the repo URL. Exactly one of `checkpoint` / `export`."""
    if (checkpoint is None) == (export is None):
        raise SlmError("slm push: pass exactly one of --checkpoint CKPT or --export DIR_OR_FILE")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise SlmError(f"{repo_id!r}: expected a repo id like USER/NAME")
    hub = _require_hub()
    if api is None and not _token_available(hub):
        raise SlmError("slm push: no Hugging Face token; set HF_TOKEN or run `hf auth login` (slm never takes a "
                       "token on the command line)")
    api = api or hub.HfApi()
    from huggingface_hub.errors import HfHubHTTPError

    from ..checkpoint import load_config, resolve_checkpoint

    with tempfile.TemporaryDirectory(prefix="slm-push-") as tmp:
        if checkpoint is not None:
            from .hf import export_hf

            ckpt = resolve_checkpoint(checkpoint)
            config = load_config(ckpt)
            source = export_hf(ckpt, Path(tmp) / "model")
            run_dir = find_run_dir(ckpt)
        else:
            source = Path(export)
            if not source.exists():
                raise SlmError(f"{source}: not found; pass an export folder (slm export hf|onnx) or a .gguf file")
            config, run_dir = None, None
        files = _files_of(source)
        if not files:
            raise SlmError(f"{source}: nothing to upload (empty folder)")
        plot = run_dir / "plots" / "loss.png" if run_dir is not None else None
        has_plot = plot is not None and plot.is_file()
        ops = [hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files]
        if has_plot:
            ops.append(hub.CommitOperationAdd(path_in_repo="loss.png", path_or_fileobj=str(plot)))
        if not any(name == "README.md" for name, _ in files):
            card = model_card(repo_id=repo_id, config=config, summary=_summary(run_dir),
                              files=[n for n, _ in files], license=license, has_plot=has_plot)
            ops.append(hub.CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.create_commit(repo_id, ops, commit_message="Upload with slm push", repo_type="model")
        except HfHubHTTPError as exc:
            raise SlmError(f"slm push {repo_id}: the Hub refused ({str(exc).splitlines()[0]}); check the repo id and "
                           f"that your token can write to it") from None
    return str(url)
