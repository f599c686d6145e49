"""gptoss on Ray Serve: two replicas of random:tiny behind the ingress, on a local Ray cluster this
module starts on 127.0.0.1 (no dashboard, no usage reporting) and stops.

One cluster and one application serve every test here (starting Ray takes most of the time);
the test that kills a replica runs last. Requests go through the official openai client and
httpx; which replica served a request is the `x-gptoss-replica` header the replica sets.
"""
import concurrent.futures as cf
import json
import os
import signal
import socket
import time

import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'gptoss[ray]')")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from gptoss import ray_serve  # noqa: E402
from gptoss.serve_ops import Limits  # noqa: E402
from gptoss.testing import write_random_checkpoint  # noqa: E402

try:
    from gptoss import _C  # noqa: F401
    HAVE_NATIVE = True
except ImportError:
    HAVE_NATIVE = False

pytestmark = pytest.mark.skipif(not HAVE_NATIVE, reason="needs the native CPU engine "
                                "(gptoss._C) for batching and the prefix cache")

SYSTEM = " ".join(f"Rule {i}: answer briefly and stay on topic." for i in range(60))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    ckpt = write_random_checkpoint(str(tmp_path_factory.mktemp("ray_tiny")), "tiny",
                                   layout="hf", seed=3)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    here = os.path.dirname(os.path.dirname(os.path.abspath(ray_serve.__file__)))
    ray.init(address="local", num_cpus=3, num_gpus=0, include_dashboard=False,
             log_to_driver=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": here, "RAY_USAGE_STATS_ENABLED": "0"}})
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = ray_serve.build_app(ckpt, replicas=2, backend="cpu", cpus_per_replica=1,
                                  model_kwargs={"max_context": 2048, "prefix_cache_gb": 0.25},
                                  server_kwargs={"model_name": "tiny",
                                                 "limits": Limits(prefill_chunk=128)})
        serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        yield base
    finally:
        serve.shutdown()
        ray.shutdown()


def _health(base):
    return httpx.get(base + "/health", timeout=30).json()


def _chat(base, messages, **kw):
    r = httpx.post(base + "/v1/chat/completions", timeout=120,
                   json={"model": "tiny", "messages": messages, "max_tokens": 8,
                         "temperature": 0, **kw})
    return r


def test_two_replicas_both_serve_and_errors_pass_through(cluster):
    prompts = [f"Tell me about topic number {i}." for i in range(8)]
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda p: _chat(cluster, [{"role": "user", "content": p}],
                                         max_tokens=24), prompts))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
    served = {r.headers["x-gptoss-replica"] for r in rs}
    assert served == {"gptoss-replica-0", "gptoss-replica-1"}
    for r in rs:
        assert r.json()["object"] == "chat.completion"

    # the single-process server's validation answers through the ingress, unchanged
    bad = httpx.post(cluster + "/v1/chat/completions", json={"messages": []}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
    bad = httpx.post(cluster + "/v1/completions", content=b"{not json", timeout=60)
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]

    # the official client: completions and a chat stream
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="unused", max_retries=0)
    c = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                  temperature=0)
    from gptoss.tokenizer import get_tokenizer
    assert c.usage.prompt_tokens == len(get_tokenizer().encode("Once upon a time"))
    assert 1 <= c.usage.completion_tokens <= 6 and c.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert [m.id for m in client.models.list().data] == ["tiny"]

    m = httpx.get(cluster + "/metrics", timeout=60)
    if m.status_code == 200:       # the server has /metrics: one text, a label per replica
        assert 'replica="gptoss-replica-0"' in m.text and 'replica="gptoss-replica-1"' in m.text
    else:                          # it has not (yet): its own 404, passed through
        assert m.status_code == 404 and "error" in m.json()

    h = _health(cluster)
    assert h["status"] == "ok" and [r["up"] for r in h["replicas"]] == [True, True]
    assert all(r["served"] >= 1 for r in h["replicas"])


def test_multi_turn_conversation_stays_on_one_replica_and_hits_the_cache(cluster):
    before = {r["name"]: r["prefix_cache"]["hit_tokens"] for r in _health(cluster)["replicas"]}
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "What is the first rule?"}]
    served = []
    for turn in range(4):
        r = _chat(cluster, messages)
        assert r.status_code == 200, r.text
        body = r.json()
        served.append(r.headers["x-gptoss-replica"])
        assert body["usage"]["prompt_tokens"] > 2 * ray_serve.PAGE_TOKENS
        messages = messages + [
            {"role": "assistant", "content": body["choices"][0]["message"]["content"] or "ok"},
            {"role": "user", "content": f"And rule {turn + 2}?"}]
    assert len(set(served)) == 1, served
    home = served[0]
    after = {r["name"]: r["prefix_cache"]["hit_tokens"] for r in _health(cluster)["replicas"]}
    # turns 2..4 each start from at least the system prompt's two full pages on `home`
    assert after[home] - before[home] >= 3 * 2 * ray_serve.PAGE_TOKENS
    other = next(n for n in after if n != home)
    assert after[other] == before[other]


def test_usage_reports_the_cached_tokens_through_the_ingress(cluster):
    messages = [{"role": "system", "content": "Usage check. " + SYSTEM},
                {"role": "user", "content": "Hello?"}]
    cached = []
    for turn in range(3):
        body = _chat(cluster, messages).json()
        cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
        messages = messages + [
            {"role": "assistant", "content": body["choices"][0]["message"]["content"] or "ok"},
            {"role": "user", "content": f"Turn {turn + 2}?"}]
    # the first turn can take only what it shares with earlier conversations on that replica (the
    # rendered header before the system prompt, from their cached partial pages); the later ones
    # at least the system prompt's two full pages
    assert cached[0] < 2 * ray_serve.PAGE_TOKENS, cached
    assert all(c >= 2 * ray_serve.PAGE_TOKENS for c in cached[1:]), cached


def test_responses_follow_previous_response_id_to_the_replica_that_stored_it(cluster):
    client = openai.OpenAI(base_url=cluster + "/v1", api_key="unused", max_retries=0)
    served, prev = [], None
    for turn in range(4):       # each turn only exists in the store of the replica that made it
        raw = client.responses.with_raw_response.create(
            model="tiny", input=f"Question {turn}: tell me more.", max_output_tokens=8,
            temperature=0, **({"previous_response_id": prev} if prev else {}))
        served.append(raw.headers["x-gptoss-replica"])
        resp = raw.parse()
        assert resp.object == "response" and resp.usage.input_tokens > 0
        prev = resp.id
    assert len(set(served)) == 1, served
    got = httpx.get(f"{cluster}/v1/responses/{prev}", timeout=60)
    assert got.status_code == 200 and got.json()["id"] == prev
    assert got.headers["x-gptoss-replica"] == served[0]
    # a stream continues the conversation on the same replica too
    with client.responses.with_streaming_response.create(
            model="tiny", input="And now?", max_output_tokens=8, stream=True,
            previous_response_id=prev) as sr:
        assert sr.headers["x-gptoss-replica"] == served[0]
        events = [json.loads(line[5:]) for line in sr.iter_lines() if line.startswith("data:")]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] in ("response.completed", "response.incomplete")  # 8 tokens
    missing = httpx.post(cluster + "/v1/responses", timeout=60,
                         json={"input": "x", "previous_response_id": "resp_nope"})
    assert missing.status_code in (400, 404)
    assert missing.json()["error"]["param"] == "previous_response_id"


def test_killing_a_replica_loses_no_request_and_ray_restarts_it(cluster):
    h = _health(cluster)
    pids = {r["name"]: r["pid"] for r in h["replicas"]}
    # a long stream: the replica it runs on is the one killed
    stream = httpx.stream("POST", cluster + "/v1/completions", timeout=120,
                          json={"prompt": "Count:", "max_tokens": 2000, "stream": True,
                                "temperature": 1.0, "seed": 1})
    resp = stream.__enter__()
    try:
        victim = resp.headers["x-gptoss-replica"]
        lines = resp.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["object"] == "text_completion"

        def one(i):
            return httpx.post(cluster + "/v1/completions", timeout=180,
                              json={"prompt": f"Request {i} says", "max_tokens": 160,
                                    "temperature": 0})
        with cf.ThreadPoolExecutor(10) as ex:
            futs = [ex.submit(one, i) for i in range(10)]
            deadline = time.monotonic() + 60      # kill it once requests besides the stream run there
            while time.monotonic() < deadline:
                loads = {r["name"]: r["in_flight"] for r in _health(cluster)["replicas"]}
                if loads[victim] >= 3:
                    break
                time.sleep(0.05)
            os.kill(pids[victim], signal.SIGKILL)
            rs = [f.result() for f in futs]
        retried = {r["name"]: r["ingress_retried"] for r in _health(cluster)["replicas"]}
        assert retried[victim] >= 1, retried      # some were in flight there when it died
        assert [r.status_code for r in rs] == [200] * 10, [r.text for r in rs if
                                                           r.status_code != 200]
        for r in rs:
            assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
        # the stream in flight ends with an error event, not a broken connection
        rest = [line for line in lines if line.startswith("data:")]
        assert rest, "the stream ended without an event"
        last = json.loads(rest[-1][5:]) if rest[-1] != "data: [DONE]" else None
        assert last is not None and last["error"]["code"] == "replica_failed", rest[-3:]
    finally:
        stream.__exit__(None, None, None)

    # Ray restarts the replica (a new process) and the ingress uses it again
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        h = _health(cluster)
        reps = {r["name"]: r for r in h["replicas"]}
        if reps[victim]["up"] and reps[victim]["pid"] != pids[victim]:
            break
        time.sleep(1)
    else:
        pytest.fail(f"{victim} was not restarted: {h}")
    prompts = [f"After the restart, question {i}" for i in range(8)]
    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda p: _chat(cluster, [{"role": "user", "content": p}],
                                         max_tokens=24), prompts))
    assert all(r.status_code == 200 for r in rs)
    assert victim in {r.headers["x-gptoss-replica"] for r in rs}
