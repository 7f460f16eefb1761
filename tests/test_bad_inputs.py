"""Every bad input -> exit 2, one `slm: error:` line on stderr, no traceback, nothing left behind that looks complete.

One table across every command, run in-process through `slm.cli.main` (a subprocess per case would cost ~3 s of
imports each). Each case runs in a fresh working directory; afterwards no new directory there may hold what a
finished output holds (meta.json, config.json, manifest.json, tokenizer.json or slm's output marker), and the user
folder every case can see must be byte-for-byte unchanged. OS errors (disk full, read-only file system, permission)
are injected with monkeypatch, since this suite runs as root where chmod cannot deny anything.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from slm.cli import main

COMPLETE = {"meta.json", "config.json", "manifest.json", "tokenizer.json", ".slm-output.json"}
POST = ["--train.steps=1", "--train.batch_size=2", "--train.seq_len=32", "--train.precision=fp32",
        "--train.tensorboard=false", "--train.num_threads=1"]


@dataclass
class Env:
    root: Path  # shared fixtures (read-only for the cases)
    ck: Path  # a checkpoint with a byte tokenizer
    hf: Path  # its HF export
    user: Path  # a user's folder with their own files
    prepared: Path
    corpus: Path
    files: dict[str, Path] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Path:
        files = self.__dict__.get("files", {})
        if name in files:
            return files[name]
        raise AttributeError(name)


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory, prepared, corpus_dir) -> Env:
    from slm.checkpoint import save_checkpoint
    from slm.config import RunConfig
    from slm.export.hf import export_hf
    from slm.models import build_model, preset_config
    from slm.tokenizer import byte_tokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    model = build_model(preset_config("test", vocab_size=320))
    cfg = RunConfig(model=model.cfg)
    cfg.tokenizer.kind = "byte"
    cfg.train.seq_len = 32
    ck = save_checkpoint(root / "ck", model=model, config=cfg, tokenizer=byte_tokenizer())
    hf = export_hf(ck, root / "hf")
    user = root / "user"
    _write(user / "notes.txt", "my own notes\n")
    _write(user / "config.json", '{"mine": true}\n')
    e = Env(root=root, ck=ck, hf=hf, user=user, prepared=prepared, corpus=corpus_dir)
    f = e.files
    f["corrupt"] = root / "corrupt"
    shutil.copytree(ck, f["corrupt"])
    w = bytearray((f["corrupt"] / "model.safetensors").read_bytes())
    w[-50] ^= 0xFF  # same size, one byte different
    (f["corrupt"] / "model.safetensors").write_bytes(bytes(w))
    f["truncated"] = root / "truncated"
    shutil.copytree(ck, f["truncated"])
    (f["truncated"] / "model.safetensors").write_bytes((ck / "model.safetensors").read_bytes()[:500])
    f["nometa"] = root / "nometa"
    shutil.copytree(ck, f["nometa"])
    (f["nometa"] / "meta.json").unlink()
    f["badmeta"] = root / "badmeta"
    shutil.copytree(ck, f["badmeta"])
    (f["badmeta"] / "meta.json").write_text('{"format": "slm-checkpoint-v1", "files": 7}')
    big = "1" * 5000
    deep = "[" * 100_000 + "]" * 100_000
    f["huge_jsonl"] = _write(root / "huge.jsonl", f'{{"text": "a", "n": {big}}}\n')
    f["deep_jsonl"] = _write(root / "deep.jsonl", deep + "\n")
    f["surrogate_jsonl"] = _write(root / "surr.jsonl", '{"text": "bad \\ud800 text"}\n')
    f["notobj_jsonl"] = _write(root / "notobj.jsonl", "[1, 2]\n")
    f["badjson_jsonl"] = _write(root / "bad.jsonl", '{"text": "a"\n')
    f["nontext_jsonl"] = _write(root / "nontext.jsonl", '{"text": 5}\n')
    f["huge_array"] = _write(root / "huge_array.json", f'[{{"text": "a", "n": {big}}}]')
    f["latin1"] = _write(root / "latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"))
    f["prompts_latin1"] = _write(root / "prompts.txt", "caf\xe9\n".encode("latin-1"))
    f["prompts_huge"] = _write(root / "prompts_huge.jsonl", f'{{"prompt": {big}}}\n')
    f["prompts_deep"] = _write(root / "prompts_deep.jsonl", deep + "\n")
    f["prompts_surrogate"] = _write(root / "prompts_surr.jsonl", '{"prompt": "\\udc80x"}\n')
    f["prompts_list"] = _write(root / "prompts_list.jsonl", '{"prompt": [1, 2]}\n')
    f["prompts_noprompt"] = _write(root / "prompts_noprompt.jsonl", '{"text": "x"}\n')
    f["chats_huge"] = _write(root / "chats_huge.jsonl", f'{{"messages": [], "n": {big}}}\n')
    f["chats_deep"] = _write(root / "chats_deep.jsonl", deep + "\n")
    f["chats_surrogate"] = _write(root / "chats_surr.jsonl", json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}).replace(
        '"x"', '"\\ud800"') + "\n")
    f["chats_object"] = _write(root / "chats_obj.json", '[{"messages": []}, 5]')
    f["pairs_bad"] = _write(root / "pairs.jsonl", '{"prompt": "p", "chosen": 5, "rejected": "r"}\n')
    f["recipe_latin1"] = _write(root / "r_latin1.yaml", "run:\n  name: caf\xe9\n".encode("latin-1"))
    f["recipe_list"] = _write(root / "r_list.yaml", "- 1\n- 2\n")
    f["recipe_scalar_section"] = _write(root / "r_scalar.yaml", "train: 5\n")
    f["recipe_model_list"] = _write(root / "r_model.yaml", "model: [1, 2]\n")
    f["recipe_bad_yaml"] = _write(root / "r_bad.yaml", "train: {lr: [\n")
    f["recipe_neg_phase"] = _write(root / "r_phase.yaml", "train:\n  phases:\n    - {seq_len: 32, steps: -1}\n")
    f["recipe_nan_lr"] = _write(root / "r_nan.yaml", "train:\n  lr: .nan\n")
    f["recipe_huge_steps"] = _write(root / "r_huge.yaml", "train:\n  steps: 1e400\n")
    f["data_recipe_bad"] = _write(root / "r_data.yaml", "sources: 5\n")
    f["empty_dir"] = root / "empty"
    f["empty_dir"].mkdir()
    f["a_file"] = _write(root / "a_file.txt", "hello\n")
    f["hf_noconfig"] = root / "hf_noconfig"
    f["hf_noconfig"].mkdir()
    f["hf_hugeconfig"] = root / "hf_huge"
    shutil.copytree(hf, f["hf_hugeconfig"])
    _write(f["hf_hugeconfig"] / "config.json", f'{{"model_type": "llama", "hidden_size": {big}}}')
    f["hf_deepconfig"] = root / "hf_deep"
    shutil.copytree(hf, f["hf_deepconfig"])
    _write(f["hf_deepconfig"] / "config.json", deep)
    f["hf_unknown"] = root / "hf_unknown"
    shutil.copytree(hf, f["hf_unknown"])
    _write(f["hf_unknown"] / "config.json", '{"model_type": "gpt_nope"}')
    f["hf_badweights"] = root / "hf_badweights"
    shutil.copytree(hf, f["hf_badweights"])
    _write(f["hf_badweights"] / "model.safetensors", b"not safetensors at all")
    f["post"] = _write(root / "post.yaml", "run:\n  name: post\n")
    f["parquet_pages"], f["parquet_footer"] = _corrupt_parquets(root)
    f["run_nometrics"] = root / "run_nometrics"
    f["run_nometrics"].mkdir()
    _write(f["run_nometrics"] / "something.txt", "x")
    f["run_badsummary"] = root / "run_badsummary"
    _write(f["run_badsummary"] / "summary.json", "{not json")
    return e


def _post(e: Env, command: str, *overrides: str, init: Path | None | str = "ck") -> list[str]:
    """A post-training command line: the recipe, the starting checkpoint (unless init=None), tiny train settings."""
    start = e.ck if init == "ck" else init
    head = ["distill", "kd"] if command == "distill" else [command]
    return [*head, str(e.post), *([f"--posttrain.init_from={start}"] if start else []), *POST, *overrides]


def _corrupt_parquets(root: Path) -> tuple[Path, Path]:
    """Two damaged parquet files: bytes flipped inside the data pages, and inside the footer."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    good = root / "good.parquet"
    pq.write_table(pa.table({"text": [f"document {i} " * 40 for i in range(400)]}), good, row_group_size=100)
    data = good.read_bytes()
    out = []
    for name, at in (("pages.parquet", len(data) // 4), ("footer.parquet", len(data) - 60)):
        damaged = bytearray(data)
        for i in range(at, min(at + 400, len(data) - 8)):
            damaged[i] ^= 0x5A
        out.append(_write(root / name, bytes(damaged)))
    good.unlink()
    return out[0], out[1]


def _oserror(code: int) -> Callable:
    def fail(*args, **kwargs):
        raise OSError(code, __import__("os").strerror(code))

    return fail


def _runtime_full_disk(*args, **kwargs):
    raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 525184 vs 525072")


# (id, argv builder, substring the one line must hold, optional monkeypatch: ("module.attr.path", replacement))
CASES: list[tuple[str, Callable[[Env], list[str]], str, tuple | None]] = [
    # --- config values, at the boundary (run / train) ---
    ("lr-zero", lambda e: ["run", "--train.lr=0"], "--train.lr", None),
    ("lr-negative", lambda e: ["train", "--train.lr=-1e-3"], "--train.lr", None),
    ("lr-nan", lambda e: ["run", "--train.lr=nan"], "--train.lr", None),
    ("lr-inf", lambda e: ["run", "--train.lr=.inf"], "--train.lr", None),
    ("lr-text", lambda e: ["run", "--train.lr=fast"], "train.lr", None),
    ("lr-nested", lambda e: ["run", "--train.lr.x=1"], "train.lr", None),
    ("heads-zero", lambda e: ["run", "--model.n_heads=0"], "model", None),
    ("heads-indivisible", lambda e: ["run", "--model.n_heads=3"], "n_heads", None),
    ("d-model-negative", lambda e: ["run", "--model.d_model=-8"], "model", None),
    ("rope-theta-nan", lambda e: ["run", "--model.rope_theta=nan"], "rope_theta", None),
    ("section-scalar", lambda e: ["run", "--train=5"], "train", None),
    ("phase-scalar", lambda e: ["run", "--train.phases=[5]"], "phases", None),
    ("phase-negative-steps", lambda e: ["run", "--train.phases=[{seq_len: 32, steps: -1}]"], "steps", None),
    ("phase-zero-seq", lambda e: ["run", "--train.phases=[{seq_len: 0, steps: 3}]"], "seq_len", None),
    ("seq-len-over-max", lambda e: ["run", "--model.max_seq_len=64", "--train.seq_len=128"], "max_seq_len", None),
    ("phase-seq-over-max", lambda e: ["run", "--model.preset=test", "--train.phases=[{seq_len: 512, steps: 2}]"],
     "max_seq_len", None),
    ("eval-seq-over-max", lambda e: ["run", "--model.preset=test", "--train.seq_len=32", "--eval.seq_len=4096"],
     "max_seq_len", None),
    ("batch-zero", lambda e: ["run", "--train.batch_size=0"], "batch_size", None),
    ("grad-clip-negative", lambda e: ["run", "--train.grad_clip=-1"], "grad_clip", None),
    ("warmup-negative", lambda e: ["run", "--train.warmup_steps=-5"], "warmup_steps", None),
    ("beta1-above-one", lambda e: ["run", "--train.beta1=1.5"], "beta1", None),
    ("weight-decay-nan", lambda e: ["run", "--train.weight_decay=nan"], "weight_decay", None),
    ("val-fraction", lambda e: ["run", "--data.val_fraction=2"], "val_fraction", None),
    ("eval-batch-zero", lambda e: ["run", "--eval.batch_size=0"], "eval.batch_size", None),
    ("keep-last-negative", lambda e: ["run", "--train.keep_last=-1"], "keep_last", None),
    ("optimizer-unknown", lambda e: ["run", "--train.optimizer=sgd"], "optimizer", None),
    ("signal-unknown", lambda e: ["run", "--train.preempt_signals=[SIGKILL]"], "preempt_signals", None),
    ("rollback-factor", lambda e: ["run", "--train.rollback_lr_factor=0"], "rollback_lr_factor", None),
    ("device-unknown", lambda e: ["run", "--run.device=tpu"], "run.device", None),
    ("seed-huge", lambda e: ["run", "--run.seed=99999999999999999999999"], "seed", None),
    ("preset-unknown", lambda e: ["run", "--model.preset=nope"], "preset", None),
    ("arch-unknown", lambda e: ["run", "--model.arch=nope"], "arch", None),
    ("key-unknown", lambda e: ["run", "--train.lrr=1"], "train.lrr", None),
    ("override-no-value", lambda e: ["run", "--train.lr"], "--train.lr", None),
    ("top-p-zero", lambda e: ["run", "--sample.top_p=0"], "top_p", None),
    ("recipe-missing", lambda e: ["run", str(e.root / "missing.yaml")], "missing.yaml", None),
    ("recipe-not-utf8", lambda e: ["run", str(e.recipe_latin1)], "r_latin1.yaml", None),
    ("recipe-list", lambda e: ["run", str(e.recipe_list)], "mapping", None),
    ("recipe-section-scalar", lambda e: ["run", str(e.recipe_scalar_section)], "train", None),
    ("recipe-model-list", lambda e: ["train", str(e.recipe_model_list)], "model", None),
    ("recipe-bad-yaml", lambda e: ["run", str(e.recipe_bad_yaml)], "YAML", None),
    ("recipe-negative-phase", lambda e: ["run", str(e.recipe_neg_phase)], "steps", None),
    ("recipe-nan-lr", lambda e: ["run", str(e.recipe_nan_lr)], "lr", None),
    ("recipe-huge-steps", lambda e: ["run", str(e.recipe_huge_steps)], "steps", None),
    ("corpus-missing", lambda e: ["run", "--data.inputs=[/no/such/corpus]", "--tokenizer.kind=byte"],
     "/no/such/corpus", None),
    ("resume-missing", lambda e: ["train", f"--data.prepared_dir={e.prepared}", "--tokenizer.kind=byte",
                                  "--model.preset=test", "--train.seq_len=32", "--train.resume=/no/such/ckpt"],
     "/no/such/ckpt", None),
    ("prepared-dir-missing", lambda e: ["train", "--data.prepared_dir=/no/such/data", "--tokenizer.kind=byte"],
     "/no/such/data", None),
    ("argv-not-utf8", lambda e: ["run", "--run.name=caf\udce9"], "UTF-8", None),
    ("no-command", lambda e: [], "required", None),
    ("unknown-command", lambda e: ["frobnicate"], "frobnicate", None),
    # --- tokenizer / data ---
    ("tokenizer-pretrained-no-path", lambda e: ["tokenizer", "train", "--out", "tok", "--tokenizer.kind=pretrained"],
     "tokenizer.path", None),
    ("tokenizer-vocab-zero", lambda e: ["tokenizer", "train", "--out", "tok", "--tokenizer.vocab_size=0"],
     "vocab_size", None),
    ("tokenizer-out-user-dir", lambda e: ["tokenizer", "train", "--out", str(e.user), "--tokenizer.kind=byte"],
     "already exists", None),
    ("tokenizer-out-user-dir-overwrite", lambda e: ["tokenizer", "train", "--out", str(e.user), "--overwrite",
                                                    "--tokenizer.kind=byte"], "not written by slm", None),
    ("tokenizer-out-cwd", lambda e: ["tokenizer", "train", "--out", ".", "--tokenizer.kind=byte"],
     "current directory", None),
    ("tokenizer-out-readonly", lambda e: ["tokenizer", "train", "--out", "tok", "--tokenizer.kind=byte"],
     "read-only", ("slm.errors.tempfile.mkdtemp", _oserror(errno.EROFS))),
    ("tokenizer-out-permission", lambda e: ["tokenizer", "train", "--out", "tok", "--tokenizer.kind=byte"],
     "permission denied", ("slm.errors.tempfile.mkdtemp", _oserror(errno.EACCES))),
    ("data-prepare-no-out", lambda e: ["data", "prepare", "--tokenizer.kind=byte"], "--out", None),
    ("data-prepare-user-dir", lambda e: ["data", "prepare", "--out", str(e.user), "--tokenizer.kind=byte",
                                         f"--data.inputs=[{e.corpus}]"], "not written by slm", None),
    ("data-prepare-huge-int", lambda e: ["data", "prepare", "--out", "d", "--tokenizer.kind=byte",
                                         f"--data.inputs=[{e.huge_jsonl}]"], "huge.jsonl", None),
    ("data-prepare-deep", lambda e: ["data", "prepare", "--out", "d", "--tokenizer.kind=byte",
                                     f"--data.inputs=[{e.deep_jsonl}]"], "deep.jsonl", None),
    ("data-prepare-surrogate", lambda e: ["data", "prepare", "--out", "d", "--tokenizer.kind=byte",
                                          f"--data.inputs=[{e.surrogate_jsonl}]"], "surr.jsonl", None),
    ("data-recipe-bad", lambda e: ["data", "prepare", str(e.data_recipe_bad), "--out", "d"], "sources", None),
    ("data-stats-missing", lambda e: ["data", "stats", "/no/such/data"], "/no/such/data", None),
    ("data-stats-huge-int", lambda e: ["data", "stats", str(e.huge_jsonl)], "huge.jsonl", None),
    ("data-stats-huge-array", lambda e: ["data", "stats", str(e.huge_array)], "huge_array.json", None),
    ("data-stats-deep", lambda e: ["data", "stats", str(e.deep_jsonl)], "deep.jsonl", None),
    ("data-stats-surrogate", lambda e: ["data", "stats", str(e.surrogate_jsonl)], "surr.jsonl", None),
    ("data-stats-not-object", lambda e: ["data", "stats", str(e.notobj_jsonl)], "notobj.jsonl", None),
    ("data-stats-bad-json", lambda e: ["data", "stats", str(e.badjson_jsonl)], "bad.jsonl", None),
    ("data-stats-non-text", lambda e: ["data", "stats", str(e.nontext_jsonl)], "nontext.jsonl", None),
    ("data-stats-corrupt-parquet-pages", lambda e: ["data", "stats", str(e.parquet_pages)], "pages.parquet", None),
    ("data-stats-corrupt-parquet-footer", lambda e: ["data", "stats", str(e.parquet_footer)], "footer.parquet", None),
    ("data-prepare-corrupt-parquet", lambda e: ["data", "prepare", "--out", "d", "--tokenizer.kind=byte",
                                                f"--data.inputs=[{e.parquet_pages}]"], "pages.parquet", None),
    ("data-stats-bad-tokenizer", lambda e: ["data", "stats", str(e.corpus), "--tokenizer", "/no/such/tok"],
     "/no/such/tok", None),
    # --- eval ---
    ("eval-no-checkpoint", lambda e: ["eval"], "--checkpoint", None),
    ("eval-batch-zero", lambda e: ["eval", "--checkpoint", str(e.ck), "--batch-size", "0"], "--batch-size", None),
    ("eval-max-batches-negative", lambda e: ["eval", "--checkpoint", str(e.ck), "--max-batches=-1"],
     "--max-batches", None),
    ("eval-seq-negative", lambda e: ["eval", "--checkpoint", str(e.ck), "--seq-len=-5"], "--seq-len", None),
    ("eval-batch-text", lambda e: ["eval", "--checkpoint", str(e.ck), "--batch-size", "many"], "batch-size", None),
    ("eval-split-unknown", lambda e: ["eval", "--checkpoint", str(e.ck), "--split", "test"], "split", None),
    ("eval-missing-checkpoint", lambda e: ["eval", "--checkpoint", "/no/such/ckpt"], "/no/such/ckpt", None),
    ("eval-corrupt-checkpoint", lambda e: ["eval", "--checkpoint", str(e.corrupt), "--data", str(e.prepared)],
     "checksum mismatch", None),
    ("eval-truncated-checkpoint", lambda e: ["eval", "--checkpoint", str(e.truncated)], "truncated", None),
    ("eval-checkpoint-no-meta", lambda e: ["eval", "--checkpoint", str(e.nometa)], "nometa", None),
    ("eval-checkpoint-bad-meta", lambda e: ["eval", "--checkpoint", str(e.badmeta)], "metadata", None),
    ("eval-data-missing", lambda e: ["eval", "--checkpoint", str(e.ck), "--data", "/no/such/data"],
     "/no/such/data", None),
    ("eval-device-cuda", lambda e: ["eval", "--checkpoint", str(e.ck), "--device", "cuda:7"], "cuda", None),
    # --- generate ---
    ("generate-no-prompt", lambda e: ["generate", "--checkpoint", str(e.ck)], "--prompt", None),
    ("generate-max-new-zero", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "a",
                                         "--max-new-tokens", "0"], "max_new_tokens", None),
    ("generate-temperature-negative", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "a",
                                                 "--temperature=-1"], "temperature", None),
    ("generate-temperature-nan", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "a",
                                            "--temperature=nan"], "temperature", None),
    ("generate-top-p-zero", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "a", "--top-p=0"],
     "top_p", None),
    ("generate-samples-zero", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "a",
                                         "--num-samples=0"], "num_samples", None),
    ("generate-prompt-not-utf8", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "caf\udce9"],
     "UTF-8", None),
    ("generate-prompt-file-missing", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file", "/no/p.txt"],
     "/no/p.txt", None),
    ("generate-prompt-file-latin1", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file",
                                               str(e.prompts_latin1)], "UTF-8", None),
    ("generate-prompt-file-huge-int", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file",
                                                 str(e.prompts_huge)], "prompts_huge.jsonl", None),
    ("generate-prompt-file-deep", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file",
                                             str(e.prompts_deep)], "prompts_deep.jsonl", None),
    ("generate-prompt-file-surrogate", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file",
                                                  str(e.prompts_surrogate)], "prompts_surr.jsonl", None),
    ("generate-prompt-file-list", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file",
                                             str(e.prompts_list)], "prompts_list.jsonl", None),
    ("generate-prompt-file-no-prompt", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt-file",
                                                  str(e.prompts_noprompt)], "prompt", None),
    ("generate-corrupt-checkpoint", lambda e: ["generate", "--checkpoint", str(e.corrupt), "--prompt", "a"],
     "checksum mismatch", None),
    ("generate-output-is-dir", lambda e: ["generate", "--checkpoint", str(e.ck), "--prompt", "a",
                                          "--max-new-tokens=2", "--out", str(e.user)], "directory", None),
    # --- export / import ---
    ("export-into-user-dir", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", str(e.user)],
     "already exists", None),
    ("export-overwrite-user-dir", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", str(e.user),
                                             "--overwrite"], "not written by slm", None),
    ("export-cwd", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", "."], "current directory", None),
    ("export-parent-of-cwd", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", "..", "--overwrite"],
     "current directory", None),
    ("export-onto-file", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", str(e.a_file)],
     "not a directory", None),
    ("export-missing-checkpoint", lambda e: ["export", "hf", "--checkpoint", "/no/such/ckpt", "--out", "out"],
     "/no/such/ckpt", None),
    ("export-corrupt-checkpoint", lambda e: ["export", "hf", "--checkpoint", str(e.corrupt), "--out", "out"],
     "checksum mismatch", None),
    ("export-dtype", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", "out", "--dtype", "int8"],
     "dtype", None),
    ("export-disk-full", lambda e: ["export", "hf", "--checkpoint", str(e.ck), "--out", "out"], "no space left",
     ("slm.export.hf.save_file", _oserror(errno.ENOSPC))),
    ("import-missing", lambda e: ["import", "hf", "/no/such/hf", "--out", "ck"], "/no/such/hf", None),
    ("import-no-config", lambda e: ["import", "hf", str(e.hf_noconfig), "--out", "ck"], "config.json", None),
    ("import-huge-config", lambda e: ["import", "hf", str(e.hf_hugeconfig), "--out", "ck"], "config.json", None),
    ("import-deep-config", lambda e: ["import", "hf", str(e.hf_deepconfig), "--out", "ck"], "config.json", None),
    ("import-unknown-type", lambda e: ["import", "hf", str(e.hf_unknown), "--out", "ck"], "gpt_nope", None),
    ("import-bad-weights", lambda e: ["import", "hf", str(e.hf_badweights), "--out", "ck"], "model.safetensors", None),
    ("import-gguf-missing", lambda e: ["import", "hf", "/no/such/model.gguf", "--out", "ck"], "model.gguf", None),
    ("import-into-user-dir", lambda e: ["import", "hf", str(e.hf), "--out", str(e.user)], "already exists", None),
    ("import-overwrite-user-dir", lambda e: ["import", "hf", str(e.hf), "--out", str(e.user), "--overwrite"],
     "not written by slm", None),
    ("import-readonly", lambda e: ["import", "hf", str(e.hf), "--out", "ck"], "read-only",
     ("slm.checkpoint.save_file", _oserror(errno.EROFS))),
    ("import-full-disk-runtime", lambda e: ["import", "hf", str(e.hf), "--out", "ck"], "free space",
     ("slm.checkpoint.save_file", _runtime_full_disk)),
    # --- post-training (a recipe, then overrides) ---
    ("sft-no-init", lambda e: _post(e, "sft", "--posttrain.train_data=[x.jsonl]", init=None), "init_from", None),
    ("sft-no-data", lambda e: _post(e, "sft"), "train_data", None),
    ("sft-data-missing", lambda e: _post(e, "sft", "--posttrain.train_data=[/no/c.jsonl]"), "/no/c.jsonl", None),
    ("sft-huge-int", lambda e: _post(e, "sft", f"--posttrain.train_data=[{e.chats_huge}]"), "chats_huge.jsonl", None),
    ("sft-deep", lambda e: _post(e, "sft", f"--posttrain.train_data=[{e.chats_deep}]"), "chats_deep.jsonl", None),
    ("sft-surrogate", lambda e: _post(e, "sft", f"--posttrain.train_data=[{e.chats_surrogate}]"), "chats_surr.jsonl",
     None),
    ("sft-array-not-objects", lambda e: _post(e, "sft", f"--posttrain.train_data=[{e.chats_object}]"),
     "chats_obj.json", None),
    ("sft-seq-over-max", lambda e: _post(e, "sft", "--posttrain.train_data=[x.jsonl]", "--train.seq_len=4096"),
     "max_seq_len", None),
    ("sft-corrupt-start", lambda e: _post(e, "sft", "--posttrain.train_data=[x.jsonl]", init=e.corrupt),
     "checksum mismatch", None),
    ("sft-unknown-key", lambda e: _post(e, "sft", "--posttrain.nope=1"), "posttrain.nope", None),
    ("dpo-bad-pairs", lambda e: _post(e, "dpo", f"--posttrain.train_data=[{e.pairs_bad}]"), "pairs.jsonl", None),
    ("dpo-beta-text", lambda e: _post(e, "dpo", "--posttrain.dpo.beta=strong"), "beta", None),
    ("grpo-no-data", lambda e: _post(e, "grpo"), "train_data", None),
    ("kd-no-usable-data", lambda e: _post(e, "distill", f"--posttrain.train_data=[{e.chats_surrogate}]",
                                          "--posttrain.on_bad_example=skip"), "no usable conversations", None),
    ("chat-no-checkpoint", lambda e: ["chat"], "--checkpoint", None),
    ("chat-missing-checkpoint", lambda e: ["chat", "--checkpoint", "/no/such/ckpt"], "/no/such/ckpt", None),
    # --- report ---
    ("report-missing-dir", lambda e: ["report", "/no/such/run"], "/no/such/run", None),
    ("report-not-a-run", lambda e: ["report", str(e.run_nometrics)], "not a run directory", None),
    ("report-on-file", lambda e: ["report", str(e.a_file)], "a_file.txt", None),
    ("report-bad-summary", lambda e: ["report", str(e.run_badsummary)], "summary.json", None),
]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _looks_complete(folder: Path) -> list[str]:
    """Finished-looking outputs under `folder`. A tokenizer stage's own folder (`runs/<name>/tokenizer`,
    `<out>.tokenizer` of `slm data prepare`) is exempt: it is a complete, stamped stage output that a re-run reuses, written before a
    later stage met the bad input."""
    return [str(p) for p in folder.rglob("*") if p.name in COMPLETE
            and not (p.parent.name == "tokenizer" or p.parent.name.endswith(".tokenizer"))]


@pytest.mark.parametrize("case_id,argv,needle,patch", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case_id, argv, needle, patch, env, tmp_path, monkeypatch, capsys):
    work = tmp_path / "cwd" / "deeper"  # `..` must stay inside tmp_path
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    user_before = _snapshot(env.user)
    shared_before = sorted(p.name for p in env.root.iterdir())
    if patch is not None:
        monkeypatch.setattr(*patch)
    rc = main(argv(env))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("slm: error: "), err
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), lines[0]
    assert _snapshot(env.user) == user_before  # a user's folder is never touched
    assert not _looks_complete(tmp_path / "cwd")  # nothing left that looks like a finished output
    assert sorted(p.name for p in env.root.iterdir()) == shared_before  # nor beside the inputs


def test_the_table_is_large_enough():
    assert len(CASES) >= 60
