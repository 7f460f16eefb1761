"""`slm serve`: an OpenAI-compatible HTTP server with continuous batching and a web chat page, in one process.

Layout: `protocol` (request validation, error bodies) -> `app` (Starlette routes, SSE) -> `scheduler` (the thread that
owns the model's `slm.generate.batching.RunningBatch`) -> `text` (streamed detokenizing, stop strings); `metrics`
renders Prometheus text; `static/index.html` is the chat page (plain HTML/JS, no CDN: it works offline).

`bind_socket` binds exactly the host asked for (default 127.0.0.1) before the model loads (`slm serve` calls it
first), so a port in use fails at once with one line (exit 2) instead of after a model load, and uvicorn is handed
that socket. starlette and uvicorn are an optional extra (`pip install 'slm[serve]'`), imported only when a server
is built. This package never prints: `slm.cli.serve` does.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import SlmError

SERVER_EXPECTED_TOKENS = 1_000_000  # decode steps a server is assumed to run (whether compiling pays)
INSTALL_HINT = "slm serve needs starlette and uvicorn; run: pip install 'slm[serve]'"


@dataclass(kw_only=True)
class ServeOptions:
    host: str = "127.0.0.1"  # interface to bind; the default is reachable from this machine only
    port: int = 8000  # TCP port (0 = any free port)
    max_batch: int = 16  # rows of the running batch: requests decoded together in one step
    max_queue: int = 256  # sequences that may wait for a row; beyond it requests get 429 + Retry-After
    max_tokens: int = 256  # new tokens of a reply that does not ask for max_tokens (cut to fit the context)
    context: int = 0  # tokens per row (prompt + reply); 0 = the model's max_seq_len
    # torch.compile the decode step (slow start, faster steps; see slm.generate.engine): auto | true | false | autotune;
    # auto: when its measured compile time pays back over a server's life (timed once per machine and model, cached)
    compile: str | bool = "auto"
    dtype: str = "auto"  # decode weights: auto (the faster on this machine, timed once and cached) | fp32 | bf16
    model_name: str = ""  # the `model` id clients send; "" = the checkpoint's run name
    device: str = "auto"
    # intra-op threads of the decode step on CPU; 0 = auto: the usable cores minus one, left to the HTTP event loop
    threads: int = 0

    def check(self) -> None:
        for name, low in (("max_batch", 1), ("max_queue", 1), ("max_tokens", 1), ("context", 0), ("port", 0),
                          ("threads", 0)):
            if getattr(self, name) < low:
                raise SlmError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")
        if self.port > 65535:
            raise SlmError(f"--port must be <= 65535, got {self.port}")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on exactly (host, port), or SlmError with one line naming the address."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SlmError(f"--host {host}: cannot resolve ({exc.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno in (98, 48) else exc.strerror
        raise SlmError(f"cannot listen on {host}:{port}: {reason}; pick another --port") from None
    sock.set_inheritable(True)
    return sock


def decode_threads(requested: int) -> int:
    """Intra-op threads for the server's decode step on CPU: `requested`, or (0) the usable cores minus one.

    The event loop streams every token as its own SSE event, so it needs a core of its own: when the decode step's
    OpenMP team spans every core, each parallel region waits a scheduler slice for the thread the event loop
    displaced (milliseconds per region; bench/serve.py measured continuous batching at 2.8-4.0x one-at-a-time with
    both cores of a 2-core machine and 4.5-4.8x with one, eager fp32, quickstart model).
    """
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def load_served(checkpoint: str | Path, opts: ServeOptions,
                log: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """(ServedModel, DecodeEngine) of a checkpoint, in the weights dtype and compile setting `opts` asks for."""
    from .. import checkpoint as ckpt
    from ..generate.calibrate import choose_decode
    from ..generate.engine import DecodeEngine
    import torch

    from ..runtime import resolve_device
    from ..tokenizer.chat_template import ChatFormatter
    from .app import ServedModel

    path = ckpt.resolve_checkpoint(checkpoint)
    device = resolve_device(opts.device)
    if device.type == "cpu":  # before the decode calibration, which times the step at this thread count
        torch.set_num_threads(decode_threads(opts.threads))
    model, cfg = ckpt.load_model(path, device=device)
    tok = ckpt.load_tokenizer_of(path)
    if tok is None:
        raise SlmError(f"{path}: checkpoint has no tokenizer/; serving needs one to turn text into ids")
    try:
        formatter = ChatFormatter(tok)
    except SlmError:
        formatter = None
    context = min(opts.context or model.cfg.max_seq_len, model.cfg.max_seq_len)
    name = opts.model_name or cfg.run.name or path.name
    served = ServedModel(name=name, tokenizer=tok, formatter=formatter, arch=model.cfg.arch,
                         parameters=model.num_parameters(), context_length=context)
    compile_ = {True: "true", False: "false"}.get(opts.compile, opts.compile)  # type: ignore[call-overload]
    model, choice = choose_decode(model, dtype=opts.dtype, compile=str(compile_), batch=opts.max_batch,
                                  expected_tokens=SERVER_EXPECTED_TOKENS, log=log)
    return served, DecodeEngine.of(model, compile=choice.compile)


def check_installed() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise SlmError(INSTALL_HINT) from None


def build_server(served: Any, engine: Any, opts: ServeOptions, log_level: str = "warning") -> tuple[Any, Any]:
    """(uvicorn.Server, Scheduler) ready to run; the scheduler thread is started and warmed up."""
    check_installed()
    import uvicorn

    from .app import build_app
    from .scheduler import Scheduler

    scheduler = Scheduler(engine, lambda ids: served.tokenizer.decode(ids, skip_special=True),
                          max_batch=opts.max_batch, max_queue=opts.max_queue, max_len=served.context_length)
    scheduler.warmup()
    scheduler.start()
    app = build_app(served, scheduler, default_max_tokens=opts.max_tokens)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off")
    return uvicorn.Server(config), scheduler

