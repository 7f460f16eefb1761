"""`slm eval`: evaluate a checkpoint on a prepared split or on a raw text file.

A raw text file is tokenized as one document followed by EOS and cut into windows the same way the data loader cuts
packed rows (seq_len + 1 tokens at stride seq_len), so its numbers are comparable with the validation metrics logged
during training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import SlmError
from ..train.heldout import evaluate


def windows(tokens: np.ndarray, seq_len: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream (x, y) batches of windows over a 1-D token array; y is x shifted by one (the only shift)."""
    n_rows = (len(tokens) - 1) // seq_len
    if n_rows == 0:
        raise SlmError(f"eval: the text has {len(tokens)} tokens, fewer than --seq-len + 1 = {seq_len + 1}; "
                       f"use a longer text or a smaller --seq-len")
    for start in range(0, n_rows, batch_size):
        rows = [tokens[r * seq_len: r * seq_len + seq_len + 1] for r in range(start, min(start + batch_size, n_rows))]
        block = torch.from_numpy(np.stack(rows).astype(np.int64))
        yield block[:, :-1], block[:, 1:]


def evaluate_checkpoint(checkpoint: str, *, data: str = "", split: str = "val", seq_len: int = 0, batch_size: int = 8,
                        max_batches: int = 0, device: str = "auto") -> dict:
    from ..data.loader import TokenDataset, iter_eval_batches
    from .. import checkpoint as ckpt
    from ..runtime import resolve_device

    path = ckpt.resolve_checkpoint(checkpoint)
    dev = resolve_device(device)
    model, cfg = ckpt.load_model(path, device=dev)
    tokenizer = ckpt.load_tokenizer_of(path)
    token_bytes = tokenizer.token_byte_lengths() if tokenizer is not None else None
    seq_len = seq_len or cfg.eval.seq_len or cfg.train.phase_list()[-1].seq_len
    seq_len = min(seq_len, cfg.model.max_seq_len)
    data = data or cfg.data.prepared_dir or str(cfg.run_dir() / "data")
    src = Path(data)
    if (src / "manifest.json").is_file():
        dataset = TokenDataset(str(src))
        dataset.check_vocab(cfg.model.vocab_size)
        if tokenizer is not None and dataset.manifest.get("tokenizer_hash") not in (None, tokenizer.hash()):
            raise SlmError(f"{src}: prepared with a different tokenizer than {path}; re-prepare the data with the "
                           f"checkpoint's tokenizer")
        batches = iter_eval_batches(dataset, split, seq_len, batch_size)
    elif src.is_file():
        if tokenizer is None:
            raise SlmError(f"{path}: checkpoint has no tokenizer/, so raw text {src} cannot be tokenized; pass a "
                           f"prepared dataset dir")
        text = src.read_text(encoding="utf-8", errors="replace")
        tokens = np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], dtype=np.int64)
        batches = windows(tokens, seq_len, batch_size)
    else:
        raise SlmError(f"--data {data}: not a prepared dataset dir (manifest.json) nor a text file")
    return evaluate(model, batches, token_bytes, max_batches=max_batches or None)
