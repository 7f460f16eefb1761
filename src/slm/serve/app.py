"""The ASGI application: OpenAI-compatible routes, server-sent-event streaming, /health, /metrics and the chat page.

Decisions:
- Starlette (the ASGI toolkit under FastAPI) and uvicorn do all HTTP; this module only maps JSON bodies to
  `Scheduler` requests and events back to OpenAI's response and chunk shapes. FastAPI itself would add pydantic
  request models whose 422 errors are not OpenAI's 400 shape, so the routes are plain Starlette.
- Streaming follows OpenAI's SSE framing: one `data: {chunk}` per event, `data: [DONE]` last; a usage chunk (empty
  choices) before it when `stream_options.include_usage` is set. A client that disconnects mid-stream cancels the
  generator Starlette runs for it, whose `finally` cancels the request and frees its batch row; a non-streaming
  request polls for a disconnect while it waits.
- Length rule (OpenAI's): prompt + max_tokens must fit the context, else 400 `context_length_exceeded`; without
  max_tokens a reply gets the server's default, cut to what fits.
- Completions stop at the tokenizer's EOS; chat completions at the template's end-of-turn token (and EOS), with the
  prompt rendered by the checkpoint's own chat template (`ChatFormatter.encode_prompt`, what SFT trained on).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..tokenizer.chat_template import ChatFormatter, message_problem
from .protocol import (ApiError, GenerationParams, chat_messages, check_body, check_model, completion_prompts,
                       generation_params)
from .scheduler import QueueFull, Request, Scheduler


@dataclass
class ServedModel:
    name: str  # the `model` id clients must send
    tokenizer: Any  # slm.tokenizer.Tokenizer
    formatter: ChatFormatter | None  # None when the tokenizer has no usable chat template
    arch: str
    parameters: int
    context_length: int

    def info(self) -> dict[str, Any]:
        return {"arch": self.arch, "parameters": self.parameters, "context_length": self.context_length}


def _error(exc: ApiError, endpoint: str, scheduler: Scheduler, headers: dict[str, str] | None = None) -> JSONResponse:
    scheduler.metrics.count_request(endpoint, exc.status)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"  # ASCII: a raw U+2028 or U+0085 would split the line for some clients


def build_app(served: ServedModel, scheduler: Scheduler, *, default_max_tokens: int = 256) -> Starlette:
    tok = served.tokenizer
    created = int(time.time())

    def model_card() -> dict[str, Any]:
        return {"id": served.name, "object": "model", "created": created, "owned_by": "slm", "slm": served.info()}

    async def index(_: HttpRequest) -> Response:
        page = resources.files("slm.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page)

    async def health(_: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "model": served.name, "running": scheduler.batch.active,
                             "queued": scheduler.queued})

    async def metrics(_: HttpRequest) -> Response:
        return PlainTextResponse(scheduler.metrics.render(), media_type="text/plain; version=0.0.4")

    async def models(_: HttpRequest) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def model(request: HttpRequest) -> Response:
        if request.path_params["name"] != served.name:
            return _error(ApiError(f"the model '{request.path_params['name']}' does not exist", param="model",
                                   status=404, code="model_not_found"), "/v1/models", scheduler)
        return JSONResponse(model_card())

    # -------------------------------------------------------------------------------------------------------------- #

    def fit(prompts: list[list[int]], params: GenerationParams, param: str) -> int:
        ctx = scheduler.max_len
        for ids in prompts:
            wanted = len(ids) + (params.max_tokens or 1)
            if wanted > ctx:
                raise ApiError(f"This model's maximum context length is {ctx} tokens. However, you requested "
                               f"{wanted} tokens ({len(ids)} in the prompt, {params.max_tokens or 1} for the "
                               f"completion). Please reduce the prompt or max_tokens.", param=param,
                               code="context_length_exceeded")
        return params.max_tokens or default_max_tokens

    def completion_ids(body: dict) -> list[list[int]]:
        out = []
        for p in completion_prompts(body):
            if isinstance(p, str):
                ids = tok.encode(p) if p else [tok.bos_id if tok.bos_id is not None else tok.eos_id]
            else:
                bad = [t for t in p if not 0 <= t < tok.vocab_size]
                if bad:
                    raise ApiError(f"'prompt' has token id {bad[0]} outside the vocabulary [0, {tok.vocab_size})",
                                   param="prompt")
                ids = p
            out.append(ids)
        return out

    def chat_ids(body: dict) -> list[int]:
        if served.formatter is None:
            raise ApiError("this model's tokenizer has no chat template; use /v1/completions")
        messages = chat_messages(body)
        problem = message_problem(messages, need_assistant=False, specials=served.formatter.specials)
        if problem:
            raise ApiError(problem, param="messages")
        return served.formatter.encode_prompt(messages)

    async def generate(request: HttpRequest, chat: bool) -> Response:
        endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        try:
            raw = await request.body()
            try:
                body = check_body(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(f"the request body is not valid JSON ({exc})") from None
            check_model(body, served.name)
            params = generation_params(body, max_tokens_key=("max_tokens", "max_completion_tokens") if chat
                                       else ("max_tokens",))
            prompts = [chat_ids(body)] if chat else completion_ids(body)
            max_tokens = fit(prompts, params, "messages" if chat else "prompt")
            stop_ids = {tok.eos_id} | ({served.formatter.end_of_turn_id} if chat else set())
            job = Request(prompts, params.sampling, max_tokens, params.stop, frozenset(i for i in stop_ids
                                                                                       if i is not None),
                          params.n, asyncio.get_running_loop(), asyncio.Queue())
            try:
                scheduler.submit(job)
            except QueueFull as full:
                raise _BusyError(full.retry_after) from None
        except _BusyError as busy:
            return _error(ApiError(f"the server is busy ({scheduler.queued} sequences queued); retry after "
                                   f"{busy.retry_after} s", status=429, type_="rate_limit_error",
                                   code="rate_limit_exceeded"), endpoint, scheduler,
                          headers={"Retry-After": str(busy.retry_after)})
        except ApiError as exc:
            return _error(exc, endpoint, scheduler)
        scheduler.metrics.count_request(endpoint, 200)
        prompt_tokens = sum(len(p) for p in prompts)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if params.stream:
            return StreamingResponse(_stream(job, rid, chat, prompt_tokens, params.include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _collect(request, job, rid, chat, prompt_tokens)

    # -------------------------------------------------------------------------------------------------------------- #

    def envelope(rid: str, chat: bool) -> dict[str, Any]:
        return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created":
                int(time.time()), "model": served.name}

    def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    async def _stream(job: Request, rid: str, chat: bool, prompt_tokens: int,
                      include_usage: bool) -> AsyncIterator[str]:
        count = len(job.prompts) * job.n
        open_, completion_tokens = count, 0
        try:
            if chat:
                for i in range(count):
                    yield _sse({**envelope(rid, True), "choices": [
                        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            while open_:
                event = await job.queue.get()
                kind, index = event[0], event[1]
                if kind == "delta":
                    choice = ({"index": index, "delta": {"content": event[2]}, "finish_reason": None} if chat else
                              {"index": index, "text": event[2], "finish_reason": None, "logprobs": None})
                elif kind == "done":
                    open_ -= 1
                    completion_tokens += event[3]
                    choice = ({"index": index, "delta": {}, "finish_reason": event[2]} if chat else
                              {"index": index, "text": "", "finish_reason": event[2], "logprobs": None})
                else:
                    yield _sse({"error": {"message": event[2], "type": "server_error", "param": None,
                                          "code": None}})
                    return
                yield _sse({**envelope(rid, chat), "choices": [choice]})
            if include_usage:
                yield _sse({**envelope(rid, chat), "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
            yield "data: [DONE]\n\n"
        finally:
            scheduler.cancel(job)  # no-op when it finished; frees its rows when the client went away

    async def _collect(request: HttpRequest, job: Request, rid: str, chat: bool, prompt_tokens: int) -> Response:
        count = len(job.prompts) * job.n
        texts, finish, tokens = [""] * count, [None] * count, [0] * count
        open_ = count
        while open_:
            try:
                event = await asyncio.wait_for(job.queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    scheduler.cancel(job)
                    return Response(status_code=499)
                continue
            kind, index = event[0], event[1]
            if kind == "delta":
                texts[index] += event[2]
            elif kind == "done":
                finish[index], tokens[index] = event[2], event[3]
                open_ -= 1
            else:
                scheduler.cancel(job)
                return JSONResponse({"error": {"message": event[2], "type": "server_error", "param": None,
                                               "code": None}}, status_code=500)
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "finish_reason": finish[i],
                        "logprobs": None} for i in range(count)]
        else:
            choices = [{"index": i, "text": texts[i], "finish_reason": finish[i], "logprobs": None}
                       for i in range(count)]
        return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": served.name, "choices": choices,
                             "usage": usage(prompt_tokens, sum(tokens))})

    async def completions(request: HttpRequest) -> Response:
        return await generate(request, chat=False)

    async def chat_completions(request: HttpRequest) -> Response:
        return await generate(request, chat=True)

    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        kind = "not_found" if exc.status_code == 404 else None
        return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {exc.detail}",
                                       "type": "invalid_request_error", "param": None, "code": kind}},
                            status_code=exc.status_code)

    routes = [
        Route("/", index),
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/v1/models", models),
        Route("/v1/models/{name:path}", model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


class _BusyError(Exception):
    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
