"""Hermetic fixtures: a tiny byte-tokenizer model saved as an slm checkpoint."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from _posttrain_helpers import tiny_model  # noqa: E402
from slm.config import RunConfig  # noqa: E402
from slm.tokenizer import byte_tokenizer  # noqa: E402
from slm.checkpoint import save_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="session")
def start_ckpt(tmp_path_factory, tok) -> Path:
    torch.manual_seed(0)
    model = tiny_model(seed=1)
    cfg = RunConfig()
    cfg.model = model.cfg
    cfg.tokenizer.kind = "byte"
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "start", model=model, config=cfg, tokenizer=tok)
