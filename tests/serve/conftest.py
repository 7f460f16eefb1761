"""A live server on 127.0.0.1 (a free port) over a tiny checkpoint, shared by a test module."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
sys.path.insert(0, str(Path(__file__).parent))

from serve_helpers import LiveServer, tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, byte_tok) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve"), byte_tok)


@pytest.fixture(scope="module")
def live(checkpoint):
    server = LiveServer(checkpoint, max_batch=4, max_queue=64, max_tokens=16)
    yield server
    server.close()
