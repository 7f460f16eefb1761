"""`slm serve --checkpoint CKPT`: the OpenAI-compatible server and web chat page of `slm.serve`, on 127.0.0.1 by default.

Order matters for the user: flags are checked and the port is bound first (a port in use is one line and exit 2
before any model loads), then the model loads and its decode step warms up, then the address is printed and uvicorn
serves on the already-bound socket until Ctrl-C.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import ServeOptions, bind_socket, build_server, check_installed, load_served

    opts = ServeOptions(host=args.host, port=args.port, max_batch=args.max_batch, max_queue=args.max_queue,
                        max_tokens=args.max_tokens, context=args.context, compile=args.compile,
                        dtype=args.dtype, model_name=args.model_name, device=args.device,
                        threads=args.threads)
    opts.check()
    check_installed()
    sock = bind_socket(opts.host, opts.port)
    try:
        served, engine = load_served(args.checkpoint, opts, log=lambda m: print(f"slm serve: {m}", flush=True))
        server, scheduler = build_server(served, engine, opts, log_level=args.log_level)
        host, port = sock.getsockname()[:2]
        import torch

        threads = f", {torch.get_num_threads()} decode threads" if next(engine.model.parameters()).device.type == "cpu" else ""
        print(f"slm serve: {served.name} ({served.arch}, {served.parameters:,} parameters, context "
              f"{served.context_length}, batch {opts.max_batch}{threads}) on http://{host}:{port}/  (OpenAI API under /v1; "
              f"Ctrl-C stops)", flush=True)
        try:
            server.run(sockets=[sock])
        finally:
            scheduler.close()
    finally:
        sock.close()
    return 0


def add_serve(sub: Any) -> None:
    from ..serve import ServeOptions

    d = ServeOptions()
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching and a web chat page",
                       description="Serve a checkpoint: /v1/completions, /v1/chat/completions (streaming), "
                       "/v1/models, /health, /metrics and a chat page at /")
    p.add_argument("--checkpoint", required=True, help="checkpoint dir (or a run dir: its latest checkpoint)")
    p.add_argument("--host", default=d.host, help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="TCP port")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="requests decoded together in one step")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="sequences that may wait for a batch row; "
                   "more get 429 + Retry-After")
    p.add_argument("--max-tokens", type=int, default=d.max_tokens, help="new tokens of a reply that does not set "
                   "max_tokens")
    p.add_argument("--context", type=int, default=d.context, help="tokens per request, prompt + reply (0 = the "
                   "model's max_seq_len)")
    p.add_argument("--compile", nargs="?", const="true", default=d.compile,
                   choices=["auto", "true", "false", "autotune"],
                   help="torch.compile the decode step (slow start, faster steps); auto: when it pays on this machine "
                   "(timed once per model and machine, cached)")
    p.add_argument("--dtype", default=d.dtype, choices=["auto", "fp32", "bf16"], help="decode weights; auto: the "
                   "faster on this machine (timed once, cached)")
    p.add_argument("--model-name", default=d.model_name, help="model id clients send (default: the run name)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads of the decode step (0 = the usable "
                   "cores minus one, which the HTTP side needs to stream tokens)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(fn=cmd_serve)
