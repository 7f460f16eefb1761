"""Builders for tiny deterministic training runs on the shared fixture dataset."""

from __future__ import annotations

from pathlib import Path

import torch

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


def assert_ragged_decode_matches_full(m, seqs: list[torch.Tensor], lens: list[int], new: int) -> None:
    """Prefill the rows' first `lens[b]` tokens left-padded into one batch, then decode `new` tokens one at a time
    through the model's state (each row its own continuation): every step's logits equal the full forward pass of
    that row alone (atol 2e-5, rtol 1e-5)."""
    width, n = max(lens), len(seqs)
    ids = torch.zeros(n, width, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.bool)
    for b, L in enumerate(lens):
        ids[b, width - L:], mask[b, width - L:] = seqs[b][:L], True
    state = m.new_state(n, width + new)
    with torch.no_grad():
        steps = [m(ids, state=state, attention_mask=mask)[:, -1]]
        for i in range(new):
            nxt = torch.stack([seqs[b][lens[b] + i] for b in range(n)])[:, None]
            steps.append(m(nxt, state=state)[:, -1])
        for b, L in enumerate(lens):
            full = m(seqs[b][None])[0]  # (L + new, V)
            for i, logits in enumerate(steps):
                torch.testing.assert_close(logits[b], full[L - 1 + i], atol=2e-5, rtol=1e-5)


def assert_chunked_and_packed_match(m, x: torch.Tensor, cuts: list[tuple[int, int]], docs: list[torch.Tensor]) -> None:
    """A recurrent model fed `x` (B, T) in chunks `cuts` through one state equals one forward of x, and documents
    `docs` (each (1, n)) packed into one row with doc_ids/position_ids equal separate forwards."""
    with torch.no_grad():
        state = m.new_state(x.shape[0], 64)
        chunked = torch.cat([m(x[:, a:b], state=state) for a, b in cuts], dim=1)
        torch.testing.assert_close(chunked, m(x), atol=2e-5, rtol=1e-5)
        doc_ids = torch.cat([torch.full((1, d.shape[1]), i) for i, d in enumerate(docs)], dim=1)
        pos = torch.cat([torch.arange(d.shape[1])[None] for d in docs], dim=1)
        packed = m(torch.cat(docs, dim=1), doc_ids=doc_ids, position_ids=pos)
        torch.testing.assert_close(packed, torch.cat([m(d) for d in docs], dim=1), atol=2e-5, rtol=1e-5)
