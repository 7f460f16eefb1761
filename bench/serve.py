"""Load test of `slm serve`: streaming clients against a live server, and continuous batching vs one at a time.

Usage: python bench/serve.py [--checkpoint CKPT] [--clients 64] [--duration 60] [--ratio-clients 16]
                             [--ratio-duration 20] [--rounds 3] [--max-tokens 64] [--max-batch 16] [--quick]

- The servers are real `slm serve` subprocesses on 127.0.0.1 (free ports); the clients are asyncio tasks with httpx
  in this process, each sending one streaming `/v1/completions` request after another (a short prompt, temperature
  0.8, a seed per request, `max_tokens` new tokens, usage in the stream).
- Load: `--clients` clients for `--duration` s against a server with `--max-batch` rows. Every stream is checked:
  `data:` lines of JSON only, `[DONE]` last, one finish_reason (stop | length), a usage chunk with 1..max_tokens
  completion tokens; anything else, or a non-200 answer, is an error. Figures: errors, aggregate tokens/s (usage
  completion tokens / wall time), request latency p50/p99 and time to first token p50/p99 (completed requests).
- Ratio: `--ratio-clients` clients for `--ratio-duration` s against a server with `--max-batch` rows (continuous
  batching) and against one with 1 row (one request at a time, the rest queued), alternating rounds, medians;
  ratio = batched tokens/s / one-at-a-time tokens/s. Target >= 4 at 16 clients with the quickstart model.
- `--checkpoint` defaults to runs/quickstart (`make demo`); without it, the quickstart's `tiny` preset with random
  weights and a byte tokenizer is used, and the output says so (speed does not depend on the weights' values).
Last line: ratio_16 batched_tok_s sequential_tok_s load_tok_s load_p50_s load_p99_s ttft_p50_s ttft_p99_s errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import alternate, emit, machine_line

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["ROMEO.\n", "To be, or not to be", "JULIET.\nO Romeo", "KING.\nWhat news", "First Citizen.\n",
           "HAMLET.\nWhy, look you", "The quality of mercy", "Now is the winter"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_quickstart_checkpoint(folder: Path) -> Path:
    """The quickstart's model shape (`tiny` preset) with random weights and a byte tokenizer."""
    import torch

    from slm.checkpoint import save_checkpoint
    from slm.config import RunConfig
    from slm.models import build_model, preset_config
    from slm.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = build_model(preset_config("tiny", vocab_size=320))
    model.reset_parameters(seed=0)
    cfg = RunConfig()
    cfg.run.name = "quickstart-random"
    cfg.model = model.cfg
    cfg.tokenizer.kind = "byte"
    cfg.train.seq_len = min(cfg.train.seq_len, model.cfg.max_seq_len)
    return save_checkpoint(folder / "quickstart-random", model=model, config=cfg, tokenizer=tok)


class Server:
    def __init__(self, checkpoint: Path, max_batch: int, max_queue: int, extra: tuple[str, ...] = ()) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "slm.cli", "serve", "--checkpoint", str(checkpoint), "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--log-level", "warning", *extra]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        seen = []
        while True:  # "slm serve: NAME (...) on http://..." once it is ready; earlier lines: the decode calibration
            line = self.proc.stdout.readline()
            seen.append(line)
            if not line or (line.startswith("slm serve: ") and " on http://" in line):
                break
            print(f"  {line.rstrip()}", flush=True)
        if not line:
            raise RuntimeError(f"server did not start: {''.join(seen)[-2000:]}")
        self.name = line.split("slm serve: ", 1)[1].split(" (", 1)[0]
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server /health never answered")
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _check_stream(lines: list[str], max_tokens: int) -> tuple[int, str | None]:
    """(completion tokens, problem or None) of one SSE response body."""
    data = [ln[6:] for ln in lines if ln.startswith("data: ")]
    if any(ln and not ln.startswith("data: ") for ln in lines):
        return 0, "a non-data line"
    if not data or data[-1] != "[DONE]":
        return 0, "no [DONE] at the end"
    chunks = [json.loads(d) for d in data[:-1]]
    if any("error" in c for c in chunks):
        return 0, "error event"
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    if finishes not in (["stop"], ["length"]):
        return 0, f"finish reasons {finishes}"
    usage = chunks[-1].get("usage") if chunks else None
    if not usage or not 1 <= usage["completion_tokens"] <= max_tokens:
        return 0, f"usage {usage}"
    return usage["completion_tokens"], None


async def _client(http, url: str, model: str, cid: int, stop_at: float, max_tokens: int, out: dict) -> None:
    n = 0
    while time.monotonic() < stop_at:
        body = {"model": model, "prompt": PROMPTS[(cid + n) % len(PROMPTS)], "max_tokens": max_tokens,
                "temperature": 0.8, "seed": cid * 100_000 + n, "stream": True,
                "stream_options": {"include_usage": True}}
        n += 1
        t0 = time.monotonic()
        first = None
        lines: list[str] = []
        try:
            async with http.stream("POST", url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    out["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    continue
                async for line in r.aiter_lines():
                    if first is None and line.startswith("data: "):
                        first = time.monotonic()
                    lines.append(line)
        except Exception as exc:  # a broken connection is an error of the run, not of the bench
            out["errors"].append(f"{type(exc).__name__}: {exc}")
            continue
        tokens, problem = _check_stream(lines, max_tokens)
        if problem:
            out["errors"].append(problem)
            continue
        done = time.monotonic()
        out["tokens"] += tokens
        out["latency"].append(done - t0)
        out["ttft"].append((first or done) - t0)


def run_clients(url: str, model: str, clients: int, duration: float, max_tokens: int) -> dict:
    import httpx

    async def main() -> dict:
        out = {"tokens": 0, "latency": [], "ttft": [], "errors": []}
        limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
        async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as http:
            t0 = time.monotonic()
            await asyncio.gather(*(_client(http, url, model, c, t0 + duration, max_tokens, out)
                                   for c in range(clients)))
            out["wall"] = time.monotonic() - t0  # includes finishing the requests in flight at the deadline
        out["tok_s"] = out["tokens"] / out["wall"]
        return out

    return asyncio.run(main())


def _has_checkpoint(path: Path) -> bool:
    from slm.checkpoint import resolve_checkpoint
    from slm.errors import SlmError

    try:
        resolve_checkpoint(path)
        return True
    except SlmError:
        return False


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="", help="default: runs/quickstart, else a random-weight tiny model")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--ratio-clients", type=int, default=16)
    ap.add_argument("--ratio-duration", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 clients, 3 s phases, 1 round, not saved")
    args = ap.parse_args()
    if args.quick:
        args.clients, args.duration, args.ratio_clients, args.ratio_duration, args.rounds = 8, 3.0, 4, 3.0, 1
    print(machine_line(), flush=True)
    tmp = tempfile.TemporaryDirectory()
    ckpt = Path(args.checkpoint) if args.checkpoint else ROOT / "runs" / "quickstart"
    if not args.checkpoint and not _has_checkpoint(ckpt):
        print("runs/quickstart has no checkpoint (make demo): using the tiny preset with random weights", flush=True)
        ckpt = random_quickstart_checkpoint(Path(tmp.name))
    extra = ("--compile", "false") if args.quick else ()  # a smoke run does not time the compiled step
    batched = Server(ckpt, args.max_batch, max_queue=4 * args.clients, extra=extra)
    single = Server(ckpt, 1, max_queue=4 * args.clients, extra=extra)
    try:
        print(f"model {batched.name}; load: {args.clients} clients x {args.duration:.0f} s, batch {args.max_batch}",
              flush=True)
        load = run_clients(batched.url, batched.name, args.clients, args.duration, args.max_tokens)
        print(f"  {len(load['latency'])} requests, {load['tokens']} tokens in {load['wall']:.1f} s, "
              f"{len(load['errors'])} errors {load['errors'][:3]}", flush=True)
        print(f"ratio: {args.ratio_clients} clients x {args.ratio_duration:.0f} s, batch {args.max_batch} vs 1",
              flush=True)
        rates = alternate({
            "batched": lambda: run_clients(batched.url, batched.name, args.ratio_clients, args.ratio_duration,
                                           args.max_tokens)["tok_s"],
            "one_at_a_time": lambda: run_clients(single.url, single.name, args.ratio_clients, args.ratio_duration,
                                                 args.max_tokens)["tok_s"],
        }, args.rounds)
    finally:
        batched.close()
        single.close()
        tmp.cleanup()
    if not rates["one_at_a_time"] or not load["tokens"]:
        raise SystemExit(f"no tokens came back; errors: {load['errors'][:3]}")
    figures = {
        f"ratio_{args.ratio_clients}": rates["batched"] / rates["one_at_a_time"],
        "batched_tok_s": rates["batched"], "sequential_tok_s": rates["one_at_a_time"],
        "load_tok_s": load["tok_s"], "load_p50_s": _pct(load["latency"], 50), "load_p99_s": _pct(load["latency"], 99),
        "ttft_p50_s": _pct(load["ttft"], 50), "ttft_p99_s": _pct(load["ttft"], 99),
        "errors": float(len(load["errors"])),
    }
    emit(save=not args.quick, extra={"load_requests": len(load["latency"]), "clients": args.clients,
                                     "duration_s": args.duration, "max_tokens": args.max_tokens,
                                     "max_batch": args.max_batch}, **figures)


if __name__ == "__main__":
    main()
