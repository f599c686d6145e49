"""Prefix caching through the server: a conversation re-sent with one more turn, on the C++ CPU
engine, reports the reused positions as OpenAI does (`usage.prompt_tokens_details.cached_tokens`
on chat completions, `usage.input_tokens_details.cached_tokens` on responses) and in /metrics;
with `--prefix-cache-gb 0` nothing is reused. The cached run's logits are the uncached run's bit
for bit (tests/test_prefix_cache.py), so here the greedy answers must agree too."""
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
C = pytest.importorskip("gptoss._C", reason="extension not built")

from test_server import start_server  # noqa: E402

SYSTEM = "You answer questions about the weather in great detail. " * 40   # ~400 tokens


def metric(base, name):
    for line in httpx.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def servers(tiny_hf):
    on = start_server(tiny_hf, "--backend", "cpu", "--max-context", "4096")
    off = start_server(tiny_hf, "--backend", "cpu", "--max-context", "4096",
                       "--prefix-cache-gb", "0")
    yield on[1], off[1]
    for proc, _ in (on, off):
        proc.terminate()
        proc.wait(timeout=20)


def chat_turns(base):
    client = openai.OpenAI(base_url=base + "/v1", api_key="x")
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Paris?"}]
    kw = dict(model="tiny", max_tokens=6, temperature=0, reasoning_effort="low")
    first = client.chat.completions.create(messages=msgs, **kw)
    msgs += [{"role": "assistant", "content": "It is sunny."},
             {"role": "user", "content": "And tomorrow?"}]
    second = client.chat.completions.create(messages=msgs, **kw)
    return first, second


def test_chat_reports_cached_tokens(servers):
    on, off = servers
    first, second = chat_turns(on)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    cached = second.usage.prompt_tokens_details.cached_tokens
    # the system prompt's full page at least, and the first turn's partial last page as far as
    # the second prompt agrees with it (through the first user message)
    assert 256 <= cached < second.usage.prompt_tokens
    assert metric(on, "gptoss_prefix_cache_hit_tokens") >= cached
    assert metric(on, "gptoss_prefix_cache_tails") >= 1   # the finished turns' partial pages
    f_off, s_off = chat_turns(off)
    assert s_off.usage.prompt_tokens_details.cached_tokens == 0
    # the same answers with and without the cache (bit-identical logits, greedy)
    assert s_off.choices[0].message.content == second.choices[0].message.content
    assert f_off.choices[0].message.content == first.choices[0].message.content


def test_responses_report_cached_tokens(servers):
    on, _ = servers
    client = openai.OpenAI(base_url=on + "/v1", api_key="x")
    kw = dict(model="tiny", instructions="Responses first. " + SYSTEM, max_output_tokens=16,
              temperature=0, reasoning={"effort": "low"})
    a = client.responses.create(input="Rome?", **kw)
    b = client.responses.create(input="Oslo?", **kw)
    assert a.usage.input_tokens_details.cached_tokens == 0
    assert b.usage.input_tokens_details.cached_tokens >= 256
