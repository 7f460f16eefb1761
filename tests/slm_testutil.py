"""Builders for tiny deterministic training runs on the shared fixture dataset."""

from __future__ import annotations

from pathlib import Path

from slm.config import RunConfig, build_run_config
from slm.data.loader import TokenDataset
from slm.tokenizer import byte_tokenizer
from slm.train.pretrain import PretrainTask
from slm.train.trainer import TrainResult, train


def tiny_config(run_dir: Path, prepared: Path, **train_kw) -> RunConfig:
    train_cfg = {"steps": 8, "batch_size": 4, "seq_len": 32, "precision": "fp32", "eval_every": 0, "eval_batches": 2,
                 "tensorboard": False, "log_every": 1, "warmup_steps": 2, "lr": 3e-3, "num_threads": 1}
    train_cfg.update(train_kw)
    return build_run_config({"run": {"name": "t", "out_dir": str(run_dir), "seed": 0, "device": "cpu"},
                             "model": {"preset": "test", "vocab_size": 320}, "data": {"prepared_dir": str(prepared)},
                             "eval": {"batch_size": 4}, "train": train_cfg})


def run_tiny(cfg: RunConfig, prepared: Path, task=None) -> TrainResult:
    tok = byte_tokenizer()
    task = task or PretrainTask(TokenDataset(str(prepared)), tok.token_byte_lengths(), cfg)
    return train(cfg, task, tokenizer=tok, progress=False)


def train_losses(result: TrainResult) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in result.history if r["kind"] == "train"}
