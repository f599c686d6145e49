"""The real server on localhost (a `gptoss serve` subprocess on a tiny random checkpoint), driven
by the official `openai` client. The random model cannot be trusted to call a tool, so a test hook
of the server (enabled by a hidden flag) forces the next generation's first tokens; the model
still runs on them, and everything after the server's HTTP layer is the real path."""
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from gptoss import chat  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(ckpt, *extra, log_level="warning", test_hooks=True):
    """A `gptoss serve` subprocess on ckpt, once /health answers: (process, base URL)."""
    port = free_port()
    hooks = ["--enable-test-hooks"] if test_hooks else []
    proc = subprocess.Popen([sys.executable, "-m", "gptoss", "serve", "--model", ckpt, "--port",
                             str(port), *hooks, "--log-level", log_level,
                             "--model-name", "tiny", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("server died: " + proc.stdout.read())
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


@contextlib.contextmanager
def running_server(ckpt, *extra, **kw):
    """start_server for the length of a with-block (a module fixture's life)."""
    proc, base = start_server(ckpt, *extra, **kw)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def openai_client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def server(tiny_hf):
    with running_server(tiny_hf, "--max-context", "4096") as base:
        yield base


@pytest.fixture
def client(server):
    return openai_client(server)


def force(server, text):
    r = httpx.post(server + "/v1/_test/force", json={"text": text}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["forced"]


ANSWER = ("<|channel|>analysis<|message|>The user greets me.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>Hello there!<|return|>")


def test_health_and_models(server, client):
    h = httpx.get(server + "/health").json()
    assert h["status"] == "ok" and h["backend"] in ("cpu", "numpy")
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny"]


def test_chat_non_streaming(server, client):
    n = force(server, ANSWER)
    msgs = [{"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, reasoning_effort="low")
    choice = r.choices[0]
    assert choice.message.content == "Hello there!"
    assert choice.message.model_extra["reasoning_content"] == "The user greets me."
    assert choice.finish_reason == "stop"
    assert r.usage.completion_tokens == n
    assert r.usage.prompt_tokens == len(chat.render(msgs, reasoning_effort="low"))


def test_chat_streaming(server, client):
    force(server, ANSWER)
    stream = client.chat.completions.create(model="tiny", stream=True,
                                            messages=[{"role": "user", "content": "Hi"}])
    content, reasoning, finish = "", "", None
    chunks = 0
    for ch in stream:
        chunks += 1
        d = ch.choices[0].delta
        content += d.content or ""
        reasoning += (d.model_extra or {}).get("reasoning_content") or ""
        finish = ch.choices[0].finish_reason or finish
    assert content == "Hello there!" and reasoning == "The user greets me."
    assert finish == "stop" and chunks > 5


def test_tool_call_round_trip(server, client):
    force(server, '<|channel|>commentary to=functions.get_weather <|constrain|>json'
                  '<|message|>{"location": "Paris"}<|call|>')
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER])
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    (call,) = c.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}
    # the caller runs the tool and sends the result back
    msgs += [{"role": "assistant", "content": None,
              "tool_calls": [{"id": call.id, "type": "function",
                              "function": {"name": "get_weather",
                                           "arguments": call.function.arguments}}]},
             {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    force(server, "<|channel|>final<|message|>It is 21 C in Paris.<|return|>")
    r2 = client.chat.completions.create(model="tiny", messages=msgs, tools=[WEATHER])
    assert r2.choices[0].message.content == "It is 21 C in Paris."
    # the tool result reached the prompt exactly as Harmony renders it
    assert r2.usage.prompt_tokens == len(chat.render(msgs, tools=[WEATHER]))


def test_named_tool_choice_forces_the_call(server, client):
    r = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, max_tokens=8,
        temperature=0)
    msg = r.choices[0].message
    # the random model writes arbitrary arguments, but the call itself is guaranteed
    assert msg.tool_calls is None or msg.tool_calls[0].function.name == "get_weather"
    assert r.usage.completion_tokens == 8 or r.choices[0].finish_reason == "tool_calls"


def test_unforced_generation_and_length(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=5, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5


def test_completions_endpoint(server, client):
    a = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                  temperature=0)
    b = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                  temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 6
    force(server, " the end. STOP here")
    c = client.completions.create(model="tiny", prompt="x", max_tokens=20, stop=["STOP"])
    assert c.choices[0].text == " the end. " and c.choices[0].finish_reason == "stop"


def sequential_and_concurrent(client, prompts, max_tokens):
    """Greedy completions of `prompts` one after another, then all at once."""
    def one(p):
        return client.completions.create(model="tiny", prompt=p, max_tokens=max_tokens,
                                         temperature=0).choices[0].text
    want = [one(p) for p in prompts]
    got = [None] * len(prompts)

    def run(i):
        got[i] = one(prompts[i])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return want, got


def test_concurrent_requests_do_not_interleave(client):
    want, got = sequential_and_concurrent(client, [f"Story number {i}:" for i in range(4)], 8)
    assert got == want
    # on the C++ engine the requests really ran together (continuous batching)
    h = httpx.get(str(client.base_url).replace("/v1/", "/health").rstrip("/")).json()
    if h["batching"]:
        assert h["max_batch_seen"] >= 2


def test_disconnect_mid_stream_stops_generation(server, client):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Go on forever"}],
            "stream": True, "max_tokens": 3000, "temperature": 1.0}
    with httpx.Client(timeout=60) as h:
        with h.stream("POST", server + "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = 0
            for line in resp.iter_lines():
                lines += bool(line)
                if lines >= 5:
                    break            # leave mid-stream: the connection closes here
    # the abandoned generation (3000 tokens) must not hold the model: a short request gets
    # through long before it could have finished
    t = time.time()
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=2)
    assert r.usage.completion_tokens == 2 and time.time() - t < 15


@pytest.mark.parametrize("payload,param", [
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 7}, "temperature"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "max"}, "messages"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": "nope"}, "tools"),
    ({"model": "tiny", "messages": [{"role": "user", "content": " ".join(map(str, range(5000)))}]},
     "messages"),
])
def test_bad_requests_get_openai_errors(server, payload, param):
    r = httpx.post(server + "/v1/chat/completions", json=payload, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_malformed_bodies_and_server_survives(server, client):
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/completions", json=["a list"])
    assert r.status_code == 400
    r = httpx.get(server + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="", max_tokens=3)
    assert e.value.status_code == 400
    assert client.models.list().data    # still serving


def test_api_key(tiny_hf):
    proc, base = start_server(tiny_hf, "--api-key", "sekret")
    try:
        r = httpx.get(base + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        ok = openai.OpenAI(base_url=base + "/v1", api_key="sekret", max_retries=0)
        assert ok.models.list().data[0].id == "tiny"
        assert httpx.get(base + "/health").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_chat_stop_strings_and_seed(server, client):
    force(server, "<|channel|>final<|message|>Hello STOP world<|return|>")
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       stop=["STOP"])
    assert r.choices[0].message.content == "Hello " and r.choices[0].finish_reason == "stop"
    kw = dict(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=6,
              temperature=1.0, seed=42)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert a.usage.completion_tokens == b.usage.completion_tokens == 6
    assert (a.choices[0].message.content, a.choices[0].message.model_extra.get("reasoning_content")) \
        == (b.choices[0].message.content, b.choices[0].message.model_extra.get("reasoning_content"))


def test_numpy_backend_queues_requests(tiny_hf):
    """An engine without sequences serves concurrent requests one at a time, still correctly."""
    proc, base = start_server(tiny_hf, "--backend", "numpy")
    try:
        assert httpx.get(base + "/health").json()["batching"] is False
        c = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0, timeout=120)
        want, got = sequential_and_concurrent(c, ["One", "Two", "Three"], 5)
        assert got == want
    finally:
        proc.terminate()
        proc.wait(timeout=20)
