"""The OpenAI request bodies this server accepts, checked by hand into typed parameters, and its error bodies.

Validation is explicit code rather than pydantic models: every rejection must be a 400 with OpenAI's error shape
(`{"error": {"message", "type", "param", "code"}}`) and a message naming the field and the rule, which is what
clients and the OpenAI SDK surface to the user (pydantic/FastAPI would answer 422 with their own shape). Fields of the
API that do not change what this server computes (`user`, `logit_bias` of nothing, ...) are ignored, as OpenAI-
compatible servers commonly do; `top_k` and `repetition_penalty` are accepted as extensions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from ..config import SamplingConfig

MAX_N = 16  # choices per request
MAX_STOPS = 16


class ApiError(Exception):
    def __init__(self, message: str, *, param: str | None = None, status: int = 400,
                 type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type_, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationParams:
    sampling: SamplingConfig
    max_tokens: int | None  # None = as many as fit, up to the server's default
    stop: list[str]
    n: int
    stream: bool
    include_usage: bool


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _number(body: dict, key: str, default: float, *, low: float | None = None, low_open: bool = False,
            high: float | None = None) -> float:
    v = body.get(key)
    if v is None:
        return default
    if not _is_number(v):
        raise ApiError(f"'{key}' must be a number, got {type(v).__name__}", param=key)
    if low is not None and (v <= low if low_open else v < low):
        raise ApiError(f"'{key}' must be {'>' if low_open else '>='} {low:g}, got {v}", param=key)
    if high is not None and v > high:
        raise ApiError(f"'{key}' must be <= {high:g}, got {v}", param=key)
    return float(v)


def _integer(body: dict, key: str, default: int | None, *, low: int | None = None,
             high: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return default
    if not _is_int(v):
        raise ApiError(f"'{key}' must be an integer, got {type(v).__name__}", param=key)
    if low is not None and v < low:
        raise ApiError(f"'{key}' must be >= {low}, got {v}", param=key)
    if high is not None and v > high:
        raise ApiError(f"'{key}' must be <= {high}, got {v}", param=key)
    return v


def check_body(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    return body


def check_model(body: dict, served: str) -> None:
    model = body.get("model")
    if model is None:
        raise ApiError("'model' is required", param="model")
    if not isinstance(model, str):
        raise ApiError(f"'model' must be a string, got {type(model).__name__}", param="model")
    if model != served:
        raise ApiError(f"the model '{model}' does not exist; this server serves '{served}'", param="model",
                       code="model_not_found")


def generation_params(body: dict, *, max_tokens_key: tuple[str, ...] = ("max_tokens",)) -> GenerationParams:
    """Sampling settings, limits and streaming flags shared by completions and chat completions."""
    max_tokens = None
    for key in max_tokens_key:
        max_tokens = _integer(body, key, max_tokens, low=1)
    temperature = _number(body, "temperature", 1.0, low=0.0)
    top_p = _number(body, "top_p", 1.0, low=0.0, low_open=True, high=1.0)
    top_k = _integer(body, "top_k", 0, low=0)
    penalty = _number(body, "repetition_penalty", 1.0, low=0.0, low_open=True)
    n = _integer(body, "n", 1, low=1, high=MAX_N)
    seed = _integer(body, "seed", None)
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    stop = body.get("stop")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise ApiError("'stop' must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOPS:
        raise ApiError(f"'stop' takes at most {MAX_STOPS} strings, got {len(stops)}", param="stop")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(f"'stream' must be a boolean, got {type(stream).__name__}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError("'stream_options' must be an object", param="stream_options")
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=penalty,
                              seed=seed, max_new_tokens=max_tokens or 1)
    return GenerationParams(sampling, max_tokens, [s for s in stops if s], n, stream,
                            bool(options.get("include_usage", False)))


def completion_prompts(body: dict) -> list[str | list[int]]:
    """`prompt`: a string, a list of strings, a list of token ids or a list of such lists."""
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError("'prompt' is required", param="prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(_is_int(t) for t in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [list(p) for p in prompt]
    raise ApiError("'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists",
                   param="prompt")


def chat_messages(body: dict) -> list[dict[str, str]]:
    """`messages` as [{role, content: str}]; content given as a list of text parts is joined; 'developer' is
    'system'."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list of {role, content} objects", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(f"messages[{i}] must be an object with 'role' and 'content'", param=f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role == "developer":
            role = "system"
        if isinstance(content, list):
            parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
                raise ApiError(f"messages[{i}].content: only text parts are supported",
                               param=f"messages[{i}].content")
            content = "".join(parts)
        if not isinstance(role, str) or not isinstance(content, str):
            raise ApiError(f"messages[{i}] needs a string 'role' and a string 'content'", param=f"messages[{i}]")
        out.append({"role": role, "content": content})
    return out
