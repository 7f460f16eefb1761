"""A recipe's stages: tokenizer -> data -> train -> [sft] -> eval -> samples -> export -> report (`slm run`).

Each stage writes into the run directory and is skipped on a re-run when its output exists and was made from the same
settings (a stamp file holds a hash of the config section and inputs that produced it), so a crashed or extended run
does not redo the tokenizer or the packing. Under torchrun only rank 0 prepares; the others wait at a barrier.

The config is resolved once, by pure functions that return a new `RunConfig` (`resolve_init_checkpoint` before the
tokenizer stage, `resolve_vocab` as soon as the tokenizer exists); no stage edits it, every later stage reads that one
object, and it is what `config.yaml` in the run dir records. (The datatrove DAG of data recipes is `slm.data.pipeline`.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import RunConfig
from .data.corpora import resolve_input
from .errors import SlmError, atomic_dir, atomic_write_text, check_output_dir
from .models import get_arch, with_vocab
from .runtime import DistInfo, barrier, init_distributed, shutdown

if TYPE_CHECKING:
    from .posttrain.stage import SFTStageConfig

STAMP = ".slm_stamp.json"


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _stamp_matches(folder: Path, fingerprint: str) -> bool:
    f = folder / STAMP
    try:
        return json.loads(f.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def input_specs(cfg: RunConfig) -> list[tuple[str, str]]:
    """(path, glob) per configured input, builtin corpus names resolved."""
    if not cfg.data.inputs:
        raise SlmError("--data.inputs: no corpus given; pass files/folders, e.g. --data.inputs=[input.txt] or "
                       "--data.inputs=[shakespeare]")
    specs = []
    for name in cfg.data.inputs:
        path, glob = resolve_input(name)
        specs.append((path, glob or cfg.data.glob))
    return specs


def _source_options(cfg: RunConfig) -> dict:
    return dict(text_column=cfg.data.text_column or None, txt_split=cfg.data.txt_split,
                on_decode_error=cfg.data.on_decode_error)


def _iter_corpus_texts(cfg: RunConfig, max_bytes: int = 0):
    from .data.sources import iter_documents

    seen = 0
    for path, glob in input_specs(cfg):
        for _key, text in iter_documents(path, glob=glob, **_source_options(cfg)):
            yield text
            seen += len(text.encode("utf-8"))
            if max_bytes and seen >= max_bytes:
                return


def check_inputs(cfg: RunConfig) -> None:
    """What can be checked before any stage runs: the corpus paths exist, a named resume checkpoint exists."""
    from .data.sources import list_source_files

    if not cfg.data.prepared_dir:
        if cfg.data.dedup:
            from .data.dedup import require_dedup_packages

            require_dedup_packages()
        for path, glob in input_specs(cfg):
            list_source_files(path, glob)  # SlmError naming a missing path or a folder without matching files
    elif not (Path(cfg.data.prepared_dir) / "manifest.json").is_file():
        raise SlmError(f"--data.prepared_dir={cfg.data.prepared_dir}: not a prepared dataset (no manifest.json); "
                       f"run `slm data prepare` first or leave it empty")
    if cfg.train.resume not in ("", "auto") and not (Path(cfg.train.resume) / "meta.json").is_file():
        raise SlmError(f"--train.resume={cfg.train.resume}: not a checkpoint directory (no meta.json); pass one, "
                       f"or auto for the run dir's latest")


def build_tokenizer(cfg: RunConfig, progress: bool = True):
    """Train (bpe), construct (byte) or load (pretrained) the run's tokenizer."""
    from .tokenizer import byte_tokenizer, load_tokenizer, train_bpe

    tc = cfg.tokenizer
    if tc.kind == "byte":
        return byte_tokenizer(extra_special_tokens=tc.extra_special_tokens)
    if tc.kind == "pretrained":
        return load_tokenizer(tc.path, extra_special_tokens=tc.extra_special_tokens)
    return train_bpe(_iter_corpus_texts(cfg, tc.max_train_bytes), vocab_size=tc.vocab_size,
                     min_frequency=tc.min_frequency, show_progress=progress,
                     extra_special_tokens=tc.extra_special_tokens)


def stage_tokenizer(cfg: RunConfig, out: Path, progress: bool = True):
    from .tokenizer import load_tokenizer

    fp = _fingerprint(dataclasses.asdict(cfg.tokenizer), cfg.data.inputs, _source_options(cfg), cfg.data.glob)
    if (out / "tokenizer.json").is_file() and _stamp_matches(out, fp):
        return load_tokenizer(out)
    tok = build_tokenizer(cfg, progress)
    with atomic_dir(out, overwrite=True, kind="tokenizer") as tmp:  # the run dir's own (stamped) tokenizer
        tok.save(tmp)
        (tmp / STAMP).write_text(json.dumps({"fingerprint": fp}))
    return load_tokenizer(out)


def stage_data(cfg: RunConfig, tokenizer, out: Path, progress: bool = True, overwrite: bool = True) -> Path:
    """Prepare the recipe's data into `out` unless it already holds it (same stamp). `overwrite=False` (`slm data
    prepare` without --overwrite) refuses to replace a dataset prepared from other settings."""
    from .data.dedup import DedupConfig
    from .data.pack import prepare_dataset

    specs = input_specs(cfg)
    fp = _fingerprint(tokenizer.hash(), specs, _source_options(cfg), cfg.data.val_fraction, cfg.run.seed,
                      cfg.data.dedup)
    if (out / "manifest.json").is_file() and _stamp_matches(out, fp):
        return out
    check_output_dir(out, overwrite=overwrite)
    if cfg.data.dedup:
        from .data.dedup import require_dedup_packages

        require_dedup_packages()
    globs = {g for _, g in specs}
    if len(globs) > 1:
        raise SlmError("--data.inputs: inputs need different file globs (a builtin corpus mixed with folders); "
                       "prepare them separately or list files explicitly")
    prepare_dataset([p for p, _ in specs], tokenizer, str(out), val_fraction=cfg.data.val_fraction,
                    seed=cfg.run.seed, num_workers=cfg.data.num_workers, glob=globs.pop(), progress=progress,
                    dedup=DedupConfig() if cfg.data.dedup else None, **_source_options(cfg))
    atomic_write_text(out / STAMP, json.dumps({"fingerprint": fp}))
    return out


def generate_samples(cfg: RunConfig, tokenizer, model, max_new_tokens: int | None = None
                     ) -> tuple[list[str], list[list[int]]]:
    """Samples for the configured prompts: (prompt + generated text, the generated ids) per sample."""
    from .generate.engine import generate

    base = dataclasses.replace(cfg.sample, max_new_tokens=max_new_tokens or cfg.sample.max_new_tokens)
    was_training = model.training
    prompts = [tokenizer.encode(p) if p else [tokenizer.eos_id] for p in cfg.sample.prompts]
    outs = generate(model, prompts, base, eos_id=tokenizer.eos_id)
    model.train(was_training)
    texts = [cfg.sample.prompts[i // base.num_samples] + tokenizer.decode(out) for i, out in enumerate(outs)]
    return texts, outs


def make_sample_fn(cfg: RunConfig, tokenizer, max_new_tokens: int | None = None):
    """A callable(model, step) -> list of sample texts for the configured prompts."""

    def sample(model, step: int) -> list[str]:
        return generate_samples(cfg, tokenizer, model, max_new_tokens)[0]

    return sample


def resolve_init_checkpoint(cfg: RunConfig) -> RunConfig:
    """With --train.init_from, the model and tokenizer come from that checkpoint (fine-tuning keeps its architecture).

    Returns a new config: `train.init_from` as the resolved checkpoint dir, that checkpoint's model section, and its
    tokenizer (kind=pretrained) when it has one. Without --train.init_from, `cfg` itself."""
    if not cfg.train.init_from:
        return cfg
    from . import checkpoint as ckpt

    path = ckpt.resolve_checkpoint(cfg.train.init_from)
    tokenizer = cfg.tokenizer
    if (path / "tokenizer").is_dir():
        tokenizer = dataclasses.replace(tokenizer, kind="pretrained", path=str(path / "tokenizer"))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=str(path)),
                               model=ckpt.load_config(path).model, tokenizer=tokenizer)


def resolve_vocab(cfg: RunConfig, vocab_size: int) -> RunConfig:
    """A new config whose model section has the tokenizer's vocabulary size (see `slm.models.with_vocab`)."""
    return dataclasses.replace(cfg, model=with_vocab(cfg.model, vocab_size))


def run_pipeline(cfg: RunConfig, *, progress: bool = True, dist: DistInfo | None = None,
                 sft: SFTStageConfig | None = None) -> dict:
    """Run every stage of a recipe; returns a summary dict (also written to <run dir>/summary.json). `sft`: the
    recipe's SFT stage (`slm.posttrain.stage.SFTStageConfig`), run after pretraining; the export is of its model."""
    from .data.loader import TokenDataset
    from .report import write_report
    from . import checkpoint as ckpt
    from .train.pretrain import PretrainTask
    from .runtime import resolve_precision
    from .runtime import cpu_features
    from .train.calibrate import resolve_for_run
    from .train.trainer import refuse_reused_run_dir, train

    t_start = time.perf_counter()
    refuse_reused_run_dir(cfg)  # a refused run leaves the run dir as it was: checked before anything is written
    if sft is not None:
        from .posttrain.stage import check_sft_inputs

        check_sft_inputs(sft, cfg)  # chat files, SFT seq_len, <run dir>/sft not reused: before any stage runs
    dist = dist or init_distributed(cfg.run.device)
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    cfg = resolve_init_checkpoint(cfg)
    check_inputs(cfg)
    t = time.perf_counter()
    if dist.is_main:
        stage_tokenizer(cfg, run_dir / "tokenizer", progress)
    barrier(dist)
    from .tokenizer import load_tokenizer

    tokenizer = load_tokenizer(run_dir / "tokenizer")
    timings["tokenizer_s"] = time.perf_counter() - t

    t = time.perf_counter()
    data_dir = Path(cfg.data.prepared_dir) if cfg.data.prepared_dir else run_dir / "data"
    if dist.is_main and not cfg.data.prepared_dir:
        stage_data(cfg, tokenizer, data_dir, progress)
    barrier(dist)
    dataset = TokenDataset(str(data_dir))
    timings["data_s"] = time.perf_counter() - t
    data_summary = {"dir": str(data_dir),
                    "dedup": dataset.manifest.get("dedup") or ({"data_recipe": True} if "pipeline" in dataset.manifest
                                                               else None),
                    **{f"{split}_documents": info.get("documents") for split, info in dataset.manifest["splits"].items()}}

    cfg = resolve_vocab(cfg, tokenizer.vocab_size)  # resolved: every stage from here on reads this one object
    dataset.check_vocab(cfg.model.vocab_size)  # config.yaml: written by the trainer once its run-dir checks pass
    cfg = resolve_for_run(cfg, dist, log=(lambda m: print(f"slm: {m}", file=sys.stderr)) if progress else None)
    autocast_dtype, _ = resolve_precision(cfg.train.precision, dist.device)
    task = PretrainTask(dataset, tokenizer.token_byte_lengths(), cfg, autocast_dtype)

    t = time.perf_counter()
    result = train(cfg, task, tokenizer=tokenizer, dist=dist, progress=progress,
                   sample_fn=make_sample_fn(cfg, tokenizer, max_new_tokens=min(cfg.sample.max_new_tokens, 64)))
    timings["train_s"] = time.perf_counter() - t
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": result.step, "tok_per_s": result.tok_per_s,
                               "skipped_steps": result.skipped_steps, "spiked_steps": result.extras.get("spiked_steps"),
                               "rollbacks": result.extras.get("rollbacks"), "checkpoint": str(result.checkpoint),
                               "best_checkpoint": str(result.best_checkpoint), "data": data_summary}
    final_checkpoint = result.checkpoint
    if sft is not None:  # pretrained checkpoint -> chat fine-tune in <run dir>/sft (slm.posttrain.stage)
        from .posttrain.stage import run_sft_stage

        t = time.perf_counter()
        summary["sft"] = run_sft_stage(sft, cfg, result.checkpoint, lambda: _iter_corpus_texts(cfg),
                                       progress=progress, dist=dist)
        final_checkpoint = Path(summary["sft"]["checkpoint"])
        timings["sft_s"] = time.perf_counter() - t
    if dist.is_main:
        t = time.perf_counter()
        model, _ = ckpt.load_model(result.checkpoint, device=dist.device)
        final = task.evaluate(model, cfg.eval.seq_len or cfg.train.phase_list()[-1].seq_len, cfg.eval.max_batches,
                              progress=progress)
        summary["val"] = final
        timings["eval_s"] = time.perf_counter() - t
        t = time.perf_counter()
        summary["samples"], generations = generate_samples(cfg, tokenizer, model)
        from .eval.generation import utf8_validity

        # byte-level tokenizers only: a byte model can emit bytes that are not UTF-8 (Simplified SLM's metric)
        summary["samples_utf8_valid"] = utf8_validity(tokenizer, generations, cfg.sample.max_new_tokens)
        timings["sample_s"] = time.perf_counter() - t
        if cfg.export.hf and get_arch(cfg.model.arch).hf is None:  # a capability flag, not an error after training
            summary["hf_dir"] = None
            print(f"note: no HF export: architecture {cfg.model.arch!r} has no transformers class", file=sys.stderr)
        elif cfg.export.hf:
            from .export.hf import export_hf

            t = time.perf_counter()
            summary["hf_dir"] = str(export_hf(final_checkpoint, run_dir / "hf", dtype=cfg.export.dtype,
                                                 overwrite=True))
            timings["export_s"] = time.perf_counter() - t
        summary["timings"] = {**timings, "total_s": time.perf_counter() - t_start}
        summary["params"] = model.num_parameters()
        summary["torch"] = torch.__version__
        summary["machine"] = {**cpu_features(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}
        summary["precision_choice"] = (f"{cfg.train.precision}, compile {cfg.train.compile}"
                                       + (f" — {cfg.train.calibration}" if cfg.train.calibration else ""))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        summary["report"] = str(write_report(run_dir, summary))
    barrier(dist)
    shutdown(dist)
    return summary
