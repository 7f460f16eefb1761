"""The OpenAI-compatible API of `slm serve`, driven by the real `openai` client against a live server on 127.0.0.1."""

import json
import time
import urllib.request

import httpx
import pytest
import torch

openai = pytest.importorskip("openai")

from slm.generate import SamplingConfig, generate  # noqa: E402
from slm.serve import ServeOptions  # noqa: E402


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _get(live, path: str) -> str:
    with urllib.request.urlopen(live.url + path, timeout=10) as r:
        return r.read().decode()


def test_binds_loopback_by_default(live):
    assert ServeOptions().host == "127.0.0.1"
    assert live.sock.getsockname()[0] == "127.0.0.1"


def test_models_health_and_page(live, client):
    models = client.models.list().data
    assert [m.id for m in models] == [live.name]
    assert models[0].model_extra["slm"]["parameters"] > 0
    assert json.loads(_get(live, "/health"))["status"] == "ok"
    page = _get(live, "/")
    assert "<title>slm chat</title>" in page
    assert "http://" not in page and "https://" not in page  # nothing from a CDN: works offline


def test_greedy_completion_is_the_engine_output_with_usage(live, client, checkpoint):
    from slm.checkpoint import load_model, load_tokenizer_of

    model, _ = load_model(checkpoint)
    tok = load_tokenizer_of(checkpoint)
    prompt = "The king and the queen"
    ref = generate(model, [tok.encode(prompt)], SamplingConfig(temperature=0.0, max_new_tokens=12), eos_id=None)[0]
    r = client.completions.create(model=live.name, prompt=prompt, max_tokens=12, temperature=0)
    assert r.choices[0].text == tok.decode(ref, skip_special=True)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(tok.encode(prompt)), 12)


def test_chat_streaming_equals_non_streaming(live, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river."}]
    full = client.chat.completions.create(model=live.name, messages=messages, max_tokens=20, temperature=0)
    chunks = list(client.chat.completions.create(model=live.name, messages=messages, max_tokens=20, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content and text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_n_choices_with_a_seed_are_distinct_and_reproducible(live, client):
    kw = dict(model=live.name, prompt="Once", max_tokens=10, temperature=1.5, n=3, seed=7)
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    texts = [c.text for c in sorted(a.choices, key=lambda c: c.index)]
    assert [c.index for c in a.choices] == [0, 1, 2] and len(set(texts)) == 3
    assert texts == [c.text for c in sorted(b.choices, key=lambda c: c.index)]
    assert a.usage.completion_tokens == 30
    streamed = {}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert [streamed[i] for i in range(3)] == texts


def test_stop_string_cuts_the_reply_before_it(live, client):
    kw = dict(model=live.name, prompt="Over the sea", max_tokens=40, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[12:15]
    assert stop.isprintable() and len(stop) == 3
    cut = client.completions.create(**kw, stop=[stop, "\x00never"]).choices[0]
    assert cut.text == full[:full.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stop=stop, stream=True))
    assert streamed == cut.text


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "temperature": -0.5}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "n": "2"}, "n"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "stop": 3}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": 12}, "prompt"),
    ({"prompt": [1, 99999]}, "prompt"),
    ({"prompt": "x" * 200}, "prompt"),  # longer than the 128-token context
    ({"prompt": "x" * 100, "max_tokens": 50}, "prompt"),  # prompt + max_tokens > context
    ({"prompt": "x", "model": "gpt-4"}, "model"),
    ({"prompt": "x", "model": None}, "model"),
])
def test_bad_completion_requests_are_400_with_an_openai_error(live, body, param):
    body = {"model": live.name, **body}
    if body["model"] is None:
        del body["model"]
    r = httpx.post(live.url + "/v1/completions", json=body, timeout=10)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_bad_chat_requests_and_malformed_json(live, client):
    r = httpx.post(live.url + "/v1/chat/completions", content=b'{"model": "x", "messages": [', timeout=10,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(live.url + "/v1/chat/completions", content=b"[1, 2]", timeout=10)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    for messages in ([], [{"role": "robot", "content": "hi"}], [{"role": "user"}], "hi"):
        r = httpx.post(live.url + "/v1/chat/completions", json={"model": live.name, "messages": messages},
                       timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages"), messages
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=live.name, messages=[{"role": "user", "content": "x" * 300}])
    assert exc.value.body["code"] == "context_length_exceeded"
    assert httpx.get(live.url + "/v1/nothing", timeout=10).status_code == 404


def test_full_queue_is_429_with_retry_after(live, client):
    live.scheduler.max_queue = 0
    try:
        r = httpx.post(live.url + "/v1/completions", json={"model": live.name, "prompt": "x"}, timeout=10)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model=live.name, prompt="x", max_tokens=2)
    finally:
        live.scheduler.max_queue = 64
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_client_disconnect_frees_its_row(live):
    batch = live.scheduler.batch
    step = batch._step

    def slow_step(*args):
        time.sleep(0.02)
        return step(*args)

    batch._step = slow_step
    try:
        body = {"model": live.name, "prompt": "A long story", "max_tokens": 100, "stream": True}
        with httpx.stream("POST", live.url + "/v1/completions", json=body, timeout=10) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
            assert batch.active == 1
        deadline = time.monotonic() + 5
        while batch.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert batch.active == 0
    finally:
        batch._step = step
    metrics = _get(live, "/metrics")
    assert "slm_cancelled_total 1" in metrics


def test_metrics_are_prometheus_text(live, client):
    client.completions.create(model=live.name, prompt="x", max_tokens=3)
    text = _get(live, "/metrics")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['slm_requests_total{endpoint="/v1/completions",status="200"}'] >= 1
    assert samples['slm_requests_total{endpoint="/v1/completions",status="400"}'] >= 1
    assert samples["slm_completion_tokens_total"] >= 3 and "slm_tokens_per_second" in samples
    assert samples["slm_queue_depth"] == 0
    assert samples['slm_request_latency_seconds_bucket{le="+Inf"}'] == samples["slm_request_latency_seconds_count"]
