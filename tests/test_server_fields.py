"""Chat/completions fields beyond the basics: response_format, logprobs (against the NumPy
engine's own logits), logit_bias and penalties, include_usage, and fields refused by name."""
import json

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from gptoss import Model, chat  # noqa: E402
from test_server import force, openai_client, running_server  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_hf):
    with running_server(tiny_hf, "--max-context", "4096") as base:
        yield base


@pytest.fixture
def client(server):
    return openai_client(server)


@pytest.fixture(scope="module")
def reference(tiny_hf):
    return Model.from_pretrained(tiny_hf, backend="numpy")


def log_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    return row - (m + np.log(np.exp(row - m).sum()))


def test_chat_logprobs_match_the_reference_engine(server, client, reference):
    final = "Hello there!"
    head = "<|channel|>final<|message|>"
    force(server, head + final + "<|return|>")
    msgs = [{"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, logprobs=True,
                                       top_logprobs=3)
    items = r.choices[0].logprobs.content
    enc = reference.tokenizer
    prompt = chat.render(msgs)
    out = enc.encode(head + final, allowed_special="all")
    n_head = len(enc.encode(head, allowed_special="all"))
    logits = reference.forward(prompt + out)
    assert "".join(i.token for i in items) == final and len(items) == len(out) - n_head
    for k, item in enumerate(items):
        pos = len(prompt) + n_head + k          # the token at this position...
        lp = log_softmax(logits[pos - 1])       # ...was drawn from the row before it
        assert item.logprob == pytest.approx(lp[out[n_head + k]], abs=2e-3)
        top = np.argsort(-lp)[:3]
        assert [t.logprob for t in item.top_logprobs] == pytest.approx(list(lp[top]),
                                                                        abs=2e-3)
        assert bytes(item.bytes).decode() == item.token


def test_streaming_logprobs_and_include_usage(server, client):
    force(server, "<|channel|>final<|message|>Hi you<|return|>")
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], stream=True, logprobs=True,
        stream_options={"include_usage": True}))
    toks = [i.token for c in chunks if c.choices and c.choices[0].logprobs
            for i in c.choices[0].logprobs.content]
    assert "".join(toks) == "Hi you"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    # without include_usage no usage is sent
    force(server, "<|channel|>final<|message|>Hi<|return|>")
    chunks = list(client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None for c in chunks)


def test_completion_logprobs(client, reference):
    r = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    enc = reference.tokenizer
    prompt = enc.encode("Once upon")
    out = enc.encode(r.choices[0].text, allowed_special="all")
    assert len(lp.tokens) == 4 and "".join(lp.tokens) == r.choices[0].text
    logits = reference.forward(prompt + out)
    for k in range(len(out)):
        ref = log_softmax(logits[len(prompt) + k - 1])
        assert lp.token_logprobs[k] == pytest.approx(ref[out[k]], abs=2e-3)
        # greedy: the sampled token is the likeliest
        assert max(lp.top_logprobs[k].values()) == pytest.approx(lp.token_logprobs[k],
                                                                  abs=1e-6)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:k]) for k in range(4)]


def test_logit_bias_is_honoured(client, reference):
    plain = client.completions.create(model="tiny", prompt="Go", max_tokens=3, temperature=0)
    greedy = reference.tokenizer.encode(plain.choices[0].text, allowed_special="all")
    # banning the greedy first token changes the first token
    r = client.completions.create(model="tiny", prompt="Go", max_tokens=1, temperature=0,
                                  logit_bias={str(greedy[0]): -100})
    assert reference.tokenizer.encode(r.choices[0].text, allowed_special="all")[0] != greedy[0]
    # a strong bias picks a token
    want = reference.tokenizer.encode(" banana")[0]
    r = client.completions.create(model="tiny", prompt="Go", max_tokens=3, temperature=1.0,
                                  seed=1, logit_bias={str(want): 100})
    assert r.choices[0].text == reference.tokenizer.decode([want] * 3)


def test_penalties_are_honoured(client, reference, tiny_hf):
    """Greedy with presence and frequency penalties: each token is the argmax of the reference
    engine's logits minus OpenAI's penalties over the tokens generated before it; the server
    gives the same text."""
    from gptoss.steering import Steer
    pres, freq = -2.0, -2.0           # negative: a token once seen is favoured
    enc = reference.tokenizer
    prompt = enc.encode("la la la")
    gen = Model.from_pretrained(tiny_hf).generate(
        prompt, max_new_tokens=12, temperature=0, steer=Steer(None, None, pres, freq)).run()
    out = gen.tokens
    logits = reference.forward(prompt + out)
    counts = {}
    for k, t in enumerate(out):
        row = np.array(logits[len(prompt) + k - 1], dtype=np.float64)
        for u, c in counts.items():
            row[u] -= pres + freq * c
        assert row[t] >= row.max() - 2e-3, k
        counts[t] = counts.get(t, 0) + 1
    r = client.completions.create(model="tiny", prompt="la la la", max_tokens=12, temperature=0,
                                  presence_penalty=pres, frequency_penalty=freq)
    assert r.choices[0].text == gen.text
    plain = reference.generate(prompt, max_new_tokens=12, temperature=0).run()
    assert plain.tokens != out          # the penalties changed something


def test_chat_response_format(server, client):
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]},
                                               "days": {"type": "integer", "minimum": 1,
                                                        "maximum": 7}},
              "required": ["city", "days"]}
    force(server, "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant")
    rf = {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema}}
    msgs = [{"role": "user", "content": "Plan a trip."}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=100,
                                       response_format=rf)
    # the schema is in the developer message too (Harmony's "# Response Formats")
    assert r.usage.prompt_tokens == len(chat.render(msgs, response_format=rf)) > len(
        chat.render(msgs))
    v = json.loads(r.choices[0].message.content)
    assert v["city"] in ("Paris", "Rome") and 1 <= v["days"] <= 7 and set(v) == set(schema[
        "properties"])


@pytest.mark.parametrize("extra,param", [
    ({"frobnicate": True}, "frobnicate"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"audio": {"voice": "x"}}, "audio"),
    ({"store": True}, "store"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"n": 2}, "n"),
    ({"user": 5}, "user"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "dependentRequired": {"a": ["b"]}}}}}, "response_format"),
])
def test_chat_fields_refused_by_name(server, extra, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "x"}], **extra}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize("extra,param", [
    ({"echo": True}, "echo"), ({"best_of": 3}, "best_of"), ({"suffix": "x"}, "suffix"),
    ({"logprobs": 9}, "logprobs"), ({"whatever": 1}, "whatever"),
])
def test_completion_fields_refused_by_name(server, extra, param):
    r = httpx.post(server + "/v1/completions", json={"model": "tiny", "prompt": "x", **extra},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_accepted_identifiers(client, server):
    force(server, "<|channel|>final<|message|>ok<|return|>")
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       user="u1", parallel_tool_calls=False, seed=3,
                                       service_tier="auto")
    assert r.choices[0].message.content == "ok"


def test_constrained_and_free_rows_share_the_batch(server, client):
    """Free streams running next to constrained ones (which take their logits back and sample
    on the host) get the tokens they get alone: same seed, same tokens."""
    import threading
    schema = {"type": "object", "properties": {"k": {"type": "array", "maxItems": 3, "items": {
        "type": "integer", "minimum": 0, "maximum": 99}}}, "required": ["k"]}
    prompts = [f"Story {i}:" for i in range(3)]

    def free(p):
        return client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=1.0,
                                         seed=5).choices[0].text

    def constrained(i):
        # a strict tool the request names: the call's header is forced, its arguments masked
        tool = {"type": "function", "function": {"name": "keep", "parameters": schema,
                                                 "strict": True}}
        return client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"n{i}"}], max_tokens=150,
            seed=i, tools=[tool], tool_choice={"type": "function", "function": {
                "name": "keep"}}).choices[0]

    alone = [free(p) for p in prompts]
    got, answers = [None] * 3, [None] * 2

    def run_free(i):
        got[i] = free(prompts[i])

    def run_constrained(i):
        answers[i] = constrained(i)
    threads = [threading.Thread(target=run_constrained, args=(i,)) for i in range(2)] + \
        [threading.Thread(target=run_free, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert got == alone
    for a in answers:
        assert a.finish_reason == "tool_calls"
        v = json.loads(a.message.tool_calls[0].function.arguments)
        assert set(v) == {"k"} and all(0 <= x <= 99 for x in v["k"]) and len(v["k"]) <= 3
    h = httpx.get(server + "/health").json()
    if h["batching"]:
        assert h["max_batch_seen"] >= 2
