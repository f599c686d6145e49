"""Operating the server: /metrics, limits, the access log, errors after a stream started, clean
shutdown on SIGTERM/SIGINT, a bounded soak with clients leaving mid-stream, and chunked prefill
inside the running batch. Real `gptoss serve` subprocesses on a tiny random checkpoint, except
where a failure has to be provoked inside the process (the app is then driven in-process)."""
import json
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
prom_parser = pytest.importorskip("prometheus_client.parser")

from test_server import start_server  # noqa: E402


def start(ckpt, *extra, log_level="warning"):
    return start_server(ckpt, "--max-context", "4096", *extra, log_level=log_level,
                        test_hooks=False)


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read()


def metrics(base):
    text = httpx.get(base + "/metrics", timeout=10).text
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m, name, **labels):
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def sse_events(lines):
    """data payloads of an SSE stream: dicts, and the string '[DONE]'."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            d = line[6:]
            out.append(d if d == "[DONE]" else json.loads(d))
    return out


LONG = {"model": "tiny", "prompt": "Go on forever", "max_tokens": 4000, "stream": True,
        "temperature": 1.0}


@pytest.fixture(scope="module")
def server(tiny_hf):
    proc, base = start(tiny_hf)
    yield base
    stop(proc)


def test_metrics_count_requests_tokens_and_latencies(server):
    before = metrics(server)
    usage = []
    r = httpx.post(server + "/v1/completions", timeout=120,
                   json={"model": "tiny", "prompt": "Hello there", "max_tokens": 5})
    assert r.status_code == 200
    usage.append(r.json()["usage"])
    with httpx.stream("POST", server + "/v1/completions", timeout=120,
                      json={"model": "tiny", "prompt": "One two", "max_tokens": 4,
                            "stream": True, "stream_options": {"include_usage": True}}) as resp:
        evs = sse_events(resp.iter_lines())
    assert evs[-1] == "[DONE]"
    usage.append(evs[-2]["usage"])
    bad = httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": ""})
    assert bad.status_code == 400
    m = metrics(server)

    def delta(name, **labels):
        return value(m, name, **labels) - value(before, name, **labels)
    assert delta("gptoss_requests_total", endpoint="/v1/completions", status="200") == 2
    assert delta("gptoss_requests_total", endpoint="/v1/completions", status="400") == 1
    n_out = sum(u["completion_tokens"] for u in usage)
    assert delta("gptoss_completion_tokens_total") == n_out
    assert delta("gptoss_prompt_tokens_total") == sum(u["prompt_tokens"] for u in usage)
    assert delta("gptoss_time_to_first_token_seconds_count") == 2
    assert delta("gptoss_inter_token_latency_seconds_count") == n_out - 2
    assert delta("gptoss_inter_token_latency_seconds_sum") > 0
    assert delta("gptoss_generations_finished_total", reason="max_new_tokens") == 2
    for g in ("gptoss_running_sequences", "gptoss_waiting_requests", "gptoss_kv_cache_tokens",
              "gptoss_prefilling_sequences", "gptoss_in_flight_requests"):
        assert (g, ()) in m, g
        assert value(m, g) == 0             # nothing runs between requests
    assert value(m, "gptoss_max_batch") >= 1


def test_prompt_past_context_is_400(server):
    r = httpx.post(server + "/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": "<|endoftext|>" * 4100, "max_tokens": 1})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "prompt"


def test_gauges_while_streaming(server):
    with httpx.stream("POST", server + "/v1/completions", json=LONG, timeout=120) as resp:
        it = resp.iter_lines()
        n = 0
        for line in it:
            n += bool(line)
            if n >= 3:
                break
        m = metrics(server)
    assert value(m, "gptoss_in_flight_requests") == 1
    assert value(m, "gptoss_running_sequences") == 1
    # the prompt and at least the tokens streamed so far are cached
    assert value(m, "gptoss_kv_cache_tokens") >= 3


def test_limits(tiny_hf):
    proc, base = start(tiny_hf, "--max-batch", "1", "--max-waiting", "1", "--max-body-bytes",
                       "3000", "--request-timeout", "4")
    try:
        # body size: declared, and sent in chunks without a length
        big = {"model": "tiny", "prompt": "x" * 4000, "max_tokens": 1}
        r = httpx.post(base + "/v1/completions", json=big, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():
            for _ in range(8):
                yield b" " * 500
        r = httpx.post(base + "/v1/completions", content=chunks(), timeout=30,
                       headers={"content-type": "application/json"})
        assert r.status_code == 413 and "3000 bytes" in r.json()["error"]["message"]
        # queue: one running, one waiting, the third is refused with Retry-After
        results = {}

        def stream(name):
            t = time.time()
            with httpx.stream("POST", base + "/v1/completions", json=LONG, timeout=120) as resp:
                results[name] = (resp.status_code, sse_events(resp.iter_lines()), time.time() - t)
        ts = [threading.Thread(target=stream, args=(k,)) for k in ("a", "b")]
        for t in ts:
            t.start()
            time.sleep(0.5)
        deadline = time.time() + 3
        while time.time() < deadline and value(metrics(base), "gptoss_in_flight_requests") < 2:
            time.sleep(0.05)
        r = httpx.post(base + "/v1/completions", json={**LONG, "stream": False}, timeout=30)
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "rate_limit_error"
        for t in ts:
            t.join(60)
        # the request timeout ended both streams cleanly: an error event, then [DONE]
        for name in ("a", "b"):
            status, evs, took = results[name]
            assert status == 200 and evs[-1] == "[DONE]"
            assert evs[-2]["error"]["code"] == "request_timeout", evs[-2]
            assert took < 4 * 2 + 5
        # not streaming: 408
        r = httpx.post(base + "/v1/completions", json={**LONG, "stream": False}, timeout=60)
        assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"
        m = metrics(base)
        assert value(m, "gptoss_requests_rejected_total", limit="queue") == 1
        assert value(m, "gptoss_requests_rejected_total", limit="body_size") >= 2
        assert value(m, "gptoss_generations_finished_total", reason="timeout") == 3
        assert value(m, "gptoss_requests_total", endpoint="/v1/completions", status="429") == 1
        assert value(m, "gptoss_requests_total", endpoint="/v1/completions", status="408") == 1
    finally:
        stop(proc)


def test_bad_limits_are_refused(tiny_hf):
    r = subprocess.run([sys.executable, "-m", "gptoss", "serve", "--model", tiny_hf,
                        "--max-batch", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "max_batch=0" in r.stderr and "Traceback" not in r.stderr


def test_access_log_one_line_per_request(tiny_hf):
    proc, base = start(tiny_hf, log_level="info")
    try:
        httpx.get(base + "/v1/models")
        httpx.get(base + "/v1/nothing-here")
        httpx.post(base + "/v1/completions", json={"model": "tiny", "prompt": ""})
        with httpx.stream("POST", base + "/v1/completions", timeout=60, json={
                "model": "tiny", "prompt": "Hi", "max_tokens": 3, "stream": True}) as resp:
            list(resp.iter_lines())
    finally:
        out = stop(proc)
    lines = [ln for ln in out.splitlines() if re.search(r'"(GET|POST) /v1/', ln)]
    want = [("GET /v1/models", "200"), ("GET /v1/nothing-here", "404"),
            ("POST /v1/completions", "400"), ("POST /v1/completions", "200")]
    assert len(lines) == len(want), out
    for ln, (req, status) in zip(lines, want):
        assert req in ln and f'" {status} ' in ln and re.search(r"\d+\.\dms$", ln), ln


@pytest.mark.parametrize("sig,backend", [(signal.SIGTERM, "auto"), (signal.SIGINT, "auto"),
                                         (signal.SIGTERM, "numpy")])
def test_signal_ends_streams_cleanly_and_exits_0(tiny_hf, sig, backend):
    grace = 3.0
    proc, base = start(tiny_hf, "--shutdown-grace", str(grace), "--backend", backend)
    batching = httpx.get(base + "/health").json()["batching"]
    results = {}
    try:
        def stream(name, body):
            with httpx.stream("POST", base + "/v1/completions", json=body, timeout=60) as resp:
                results[name] = sse_events(resp.iter_lines())
        long = threading.Thread(target=stream, args=("long", LONG))
        long.start()
        wait_for(lambda: value(metrics(base), "gptoss_completion_tokens_total") >= 1,
                 "the long stream's first token")
        short = threading.Thread(target=stream, args=("short", {**LONG, "max_tokens": 3}))
        short.start()
        # both in flight; on a fast engine the 3-token stream may already have finished between
        # two polls, which the assertions below accept (it ended normally)
        wait_for(lambda: value(metrics(base), "gptoss_in_flight_requests") >= 2
                 or not short.is_alive(), "the short stream in flight")
        t = time.time()
        proc.send_signal(sig)
        time.sleep(0.5)
        # no new requests: the socket is closed (or, racing it, a 503)
        try:
            r = httpx.post(base + "/v1/completions", json={**LONG, "stream": False}, timeout=5)
            assert r.status_code == 503
        except httpx.TransportError:
            pass
        rc = proc.wait(timeout=grace + 10)
        took = time.time() - t
        long.join(10)
        short.join(10)
    finally:
        out = stop(proc)
    assert rc == 0, out
    assert took < grace + 3, took
    # the short stream finished normally inside the grace (on the NumPy engine it waited for
    # the long one, and its turn came after the grace); the long one was ended cleanly
    assert results["short"][-1] == "[DONE]"
    if batching:
        assert results["short"][-2]["choices"][0]["finish_reason"] == "length"
    else:
        assert results["short"][-2]["error"]["code"] == "server_shutdown"
    assert results["long"][-1] == "[DONE]"
    assert results["long"][-2]["error"]["code"] == "server_shutdown"
    assert "Traceback" not in out


def wait_for(cond, what, timeout=60.0):
    """Polls cond() until it holds; fails naming what it waited for after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.05)


def _rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_soak_with_clients_leaving_mid_stream(tiny_hf):
    """200 requests at concurrency 16 (after 16 to warm up); every third client leaves after
    two events; every fifth does not stream."""
    proc, base = start(tiny_hf)
    statuses, ends, errors = [], [], []
    lock = threading.Lock()
    try:
        def one(i, client):
            body = {"model": "tiny", "prompt": f"Request {i}", "max_tokens": 4 + i % 5,
                    "stream": i % 5 != 0, "temperature": 0.0 if i % 2 else 1.0, "seed": i}
            try:
                if not body["stream"]:
                    r = client.post(base + "/v1/completions", json=body)
                    with lock:
                        statuses.append(r.status_code)
                        ends.append("json" if "choices" in r.json() else "bad")
                    return
                with client.stream("POST", base + "/v1/completions", json=body) as resp:
                    evs = []
                    for line in resp.iter_lines():
                        if line.startswith("data: "):
                            evs.append(line[6:])
                        if i % 3 == 0 and len(evs) >= 2:
                            break               # leave mid-stream
                    with lock:
                        statuses.append(resp.status_code)
                        ends.append("left" if i % 3 == 0 and evs[-1] != "[DONE]"
                                    else evs[-1])
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(repr(e))

        def worker(ids):
            with httpx.Client(timeout=120) as client:
                for i in ids:
                    one(i, client)
        warm = [threading.Thread(target=worker, args=(range(k, 16, 16),)) for k in range(16)]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        rss0 = _rss_kb(proc.pid)
        t0 = time.time()
        n = 200
        ts = [threading.Thread(target=worker, args=(range(16 + k, 16 + n, 16),))
              for k in range(16)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.time() - t0
        time.sleep(0.5)
        rss1 = _rss_kb(proc.pid)
        m = metrics(base)
        h = httpx.get(base + "/health").json()
    finally:
        stop(proc)
    print(f"\nsoak: {n} requests at concurrency 16 in {took:.1f} s; server RSS "
          f"{rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MB ({(rss1 - rss0) / 1024:+.1f} MB)")
    assert not errors, errors[:3]
    assert len(statuses) == n + 16
    assert all(s == 200 for s in statuses), sorted(set(statuses))
    assert all(e in ("[DONE]", "left", "json") for e in ends), set(ends)
    assert not [k for k in m if k[0] == "gptoss_requests_total" and k[1][1][1].startswith("5")]
    assert value(m, "gptoss_running_sequences") == 0 and value(m, "gptoss_kv_cache_tokens") == 0
    if h["batching"]:
        assert h["max_batch_seen"] >= 8
    assert rss1 - rss0 < 100 * 1024, "server memory grew by more than 100 MB over the soak"


# ------------------------------------------------------------------ in-process: provoked failures
@pytest.fixture(scope="module")
def app_client(tiny_hf):
    from fastapi.testclient import TestClient

    from gptoss import Model
    from gptoss.server import create_app
    model = Model.from_pretrained(tiny_hf, backend="numpy", max_context=512)
    app = create_app(model, "tiny", api_key="k\u00e9y")
    srv = app.state.server
    real = srv.generate

    def failing(*a, **k):          # fails after two tokens, with internals in the message
        gen = real(*a, **k)
        inner = gen._it

        def it():
            for i, tok in enumerate(inner):
                if i == 2:
                    raise RuntimeError("secret internal detail at /srv/engine.cpp:42")
                yield tok
        gen._it = it()
        return gen
    srv.generate = failing
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


AUTH = {"authorization": "Bearer k\u00e9y".encode("utf-8")}


def test_api_key_non_ascii_and_wrong(app_client):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 1}
    assert app_client.post("/v1/completions", json=body, headers={
        "authorization": "Bearer k\u00e9z".encode("utf-8")}).status_code == 401
    assert app_client.post("/v1/completions", json=body, headers={
        "authorization": "Bearer \u20ac".encode("utf-8")}).status_code == 401
    assert app_client.post("/v1/completions", json=body, headers=AUTH).status_code == 200


def test_no_traceback_reaches_a_client(app_client):
    body = {"model": "tiny", "prompt": "Hi", "max_tokens": 10, "temperature": 0}
    r = app_client.post("/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error" and "Traceback" not in r.text
    with app_client.stream("POST", "/v1/completions", json={**body, "stream": True},
                           headers=AUTH) as resp:
        assert resp.status_code == 200
        evs = sse_events(resp.iter_lines())
    # two tokens, then the failure as an error event (no internals), then [DONE]
    assert len([e for e in evs if isinstance(e, dict) and "choices" in e]) == 2
    assert evs[-1] == "[DONE]" and evs[-2]["error"]["type"] == "server_error"
    assert "secret" not in json.dumps(evs) and "Traceback" not in json.dumps(evs)
    reg = app_client.app.state.ops.registry
    assert reg.get_sample_value("gptoss_requests_total",
                                {"endpoint": "/v1/completions", "status": "500"}) == 1


# ------------------------------------------------------------------ chunked prefill in the batch
def test_chunked_prefill_keeps_running_streams_going(tiny_hf):
    from gptoss import Model
    from gptoss.batching import BatchScheduler
    # no prefix cache: the reference run would leave the prompt's pages for the batched one
    model = Model.from_pretrained(tiny_hf, max_context=4096, prefix_cache_gb=0)
    if not hasattr(model.engine, "decode_batch"):
        pytest.skip("continuous batching needs the C++ engine")
    prompt = [(7919 * i) % 200000 + 10 for i in range(700)]
    ref_long = model.generate(prompt, max_new_tokens=6, temperature=1.0, seed=3).run().tokens
    ref_short = model.generate([5, 6, 7], max_new_tokens=60, temperature=0).run().tokens
    for chunk in (0, 64):
        s = BatchScheduler(model, prefill_chunk=chunk)
        try:
            short = s.generate([5, 6, 7], max_new_tokens=60, temperature=0)
            next(short)
            joined = s.steps
            g = s.generate(prompt, max_new_tokens=6, temperature=1.0, seed=3).run()
            short.run()
        finally:
            s.close()
        # the same tokens as one sequence alone (the reference path), chunked or not
        assert g.tokens == ref_long and short.tokens == ref_short
        during = [st for st in short.steps if joined < st < g.steps[0]]
        if chunk:
            # the prompt took ceil(700 / 64) = 11 steps, and the running stream got a token in
            # each of them
            assert g.steps[0] - joined >= 11
            assert len(during) >= 10 and during == list(range(during[0], during[0] + len(during)))
        else:
            assert len(during) <= 2      # the whole prompt in one step: the stream waited
