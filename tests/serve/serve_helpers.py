"""Helpers of the server tests: a tiny chat checkpoint and a live server on 127.0.0.1 run in-process in a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from slm.checkpoint import save_checkpoint
from slm.config import RunConfig
from slm.models import build_model, preset_config
from slm.serve import ServeOptions, bind_socket, build_server, load_served

VOCAB = 320  # 256 bytes + 5 specials, rounded up
CONTEXT = 128


def tiny_checkpoint(folder: Path, tok, *, arch_preset: str = "test", name: str = "tiny-chat") -> Path:
    torch.manual_seed(0)
    # An untied head and a wide init: replies vary with the prompt instead of repeating one byte.
    model = build_model(preset_config(arch_preset, vocab_size=VOCAB, max_seq_len=CONTEXT, tie_embeddings=False,
                                      init_std=0.3))
    model.reset_parameters(seed=0)
    cfg = RunConfig()
    cfg.run.name = name
    cfg.model = model.cfg
    cfg.tokenizer.kind = "byte"
    cfg.train.seq_len = CONTEXT
    return save_checkpoint(folder / name, model=model, config=cfg, tokenizer=tok)


class LiveServer:
    def __init__(self, checkpoint: Path, **options) -> None:
        # no timing in tests unless one asks; the test process keeps its thread count
        options = {"compile": "false", "dtype": "fp32", "threads": torch.get_num_threads(), **options}
        self.opts = ServeOptions(port=0, **options)
        sock = bind_socket(self.opts.host, 0)
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        served, engine = load_served(checkpoint, self.opts)
        self.name = served.name
        self.server, self.scheduler = build_server(served, engine, self.opts, log_level="error")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.sock = sock

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.scheduler.close()
        self.sock.close()
