"""The built-in tools on the Responses API, end to end: a `gptoss serve --python-tool sandbox
--browser-corpus DIR` subprocess on a one-layer random:tiny, driven by the official openai client.
The model's output is forced (the server's test hook, one forced text per generation) down a
path: a python call, a browser search, an open, a final answer. The tools run for real (python in
its sandbox, the browser over a corpus made here); the items and events come back in OpenAI's
shapes; and every prompt the model saw is openai-harmony's rendering of the conversation so far
(the reference built with openai-harmony's own types, as tests/test_tools.py builds it)."""

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("openai_harmony")

from gptoss import chat  # noqa: E402
from gptoss.tools import Browser, BuiltinTools, sandbox_problem  # noqa: E402
from test_server import openai_client, running_server  # noqa: E402
from test_tools import bcall, ref_render, result  # noqa: E402

PROBLEM = sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=f"no sandbox here: {PROBLEM}")

QUESTION = "What is 21*2, and what colour are bananas?"
CODE = "n = 21\nn * 2"
SEARCH = '{"query": "yellow bunches", "topn": 2}'
FINAL = "42, and bananas are yellow 【1†L1】."
ROUNDS = [
    "<|channel|>analysis<|message|>Let me compute.<|end|><|start|>assistant"
    f"<|channel|>analysis to=python code<|message|>{CODE}<|call|>",
    f"<|channel|>analysis to=browser.search <|constrain|>json<|message|>{SEARCH}<|call|>",
    '<|channel|>analysis to=browser.open <|constrain|>json<|message|>{"id": 0}<|call|>',
    f"<|channel|>final<|message|>{FINAL}<|return|>",
]
TOOLS = [{"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "web_search"}]


def write_corpus(d):
    (d / "fruit").mkdir(parents=True)
    (d / "apples.md").write_text("# Apples\n\nApples grow on trees in orchards.\n"
                                 "The orchard harvest is in autumn.\n")
    (d / "fruit" / "bananas.html").write_text(
        "<html><head><title>All about bananas</title></head>\n<body>\n<h1>Bananas</h1>\n"
        "<p>Bananas are yellow and\ngrow in bunches.</p>\n</body></html>\n")
    (d / "notes.txt").write_text("Cherries are red.\n")
    return d


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A file outside the sandbox's scratch directory: the python tool must not see it."""
    p = tmp_path_factory.mktemp("host") / "secret.txt"
    p.write_text("host secret")
    return str(p)


@pytest.fixture(scope="module")
def server(tmp_path_factory, corpus):
    from gptoss.testing import write_random_checkpoint
    ckpt = write_random_checkpoint(str(tmp_path_factory.mktemp("tiny1")), "tiny", layout="hf",
                                   seed=3, num_layers=1)
    with running_server(ckpt, "--max-context", "8192", "--python-tool", "sandbox",
                        "--browser-corpus", str(corpus)) as base:
        yield base


@pytest.fixture
def client(server):
    return openai_client(server)


def force_rounds(server, rounds):
    r = httpx.post(server + "/v1/_test/force_rounds", json={"rounds": rounds}, timeout=10)
    assert r.status_code == 200, r.text
    httpx.get(server + "/v1/_test/prompts", timeout=10)       # forget earlier prompts


def seen_prompts(server):
    return httpx.get(server + "/v1/_test/prompts", timeout=10).json()["prompts"]


def reference_results(corpus):
    """The browser's answers, from a browser of our own over the same corpus."""
    bt = BuiltinTools(browser=Browser(corpus=str(corpus)))
    return [bt.run("browser.search", SEARCH).text, bt.run("browser.open", '{"id": 0}').text]


def conversation(ids, python_text, browser_texts, msgs=None):
    """The turn as chat messages (test_tools' shapes), for ref_render."""
    msgs = msgs or [{"role": "user", "content": QUESTION}]
    return msgs + [{"role": "assistant", "reasoning": "Let me compute."},
                   bcall(ids[0], "python", CODE, "code"), result(ids[0], python_text),
                   bcall(ids[1], "browser.search", SEARCH, "<|constrain|>json"),
                   result(ids[1], browser_texts[0]),
                   bcall(ids[2], "browser.open", '{"id": 0}', "<|constrain|>json"),
                   result(ids[2], browser_texts[1])]


def check_output(r, corpus):
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "code_interpreter_call", "web_search_call", "web_search_call",
                     "message"]
    ci, search, opened = r.output[1:4]
    assert ci.code == CODE and ci.status == "completed" and ci.container_id.startswith("cntr_")
    assert [(o.type, o.logs) for o in ci.outputs] == [("logs", "42\n")]    # python really ran
    assert search.status == "completed" and search.action.type == "search"
    assert search.action.query == "yellow bunches"
    assert "fruit/bananas.html" in [s.url for s in search.action.sources]
    assert opened.action.type == "open_page" and opened.action.url == "fruit/bananas.html"
    assert r.output_text == FINAL
    ann = r.output[4].content[0].annotations
    assert [(a.type, a.url) for a in ann] == [("url_citation", "fruit/bananas.html")]
    assert FINAL[ann[0].start_index:ann[0].end_index] == "【1†L1】"
    return [ci.id, search.id, opened.id]


def check_prompts(prompts, henc, conv):  # noqa: F811
    assert len(prompts) == 4
    for k, (prompt, cut) in enumerate(zip(prompts, [len(conv) - 7, len(conv) - 4,
                                                    len(conv) - 2, len(conv)])):
        assert prompt == ref_render(henc, conv[:cut], ("browser", "python")), f"prompt {k}"


@needs_sandbox
def test_tools_run_non_streaming(server, client, corpus, henc):  # noqa: F811
    force_rounds(server, ROUNDS)
    r = client.responses.create(model="tiny", input=QUESTION, tools=TOOLS, temperature=0,
                                max_output_tokens=600)
    assert r.status == "completed", r
    ids = check_output(r, corpus)
    conv = conversation(ids, "42\n", reference_results(corpus))
    prompts = seen_prompts(server)
    check_prompts(prompts, henc, conv)
    assert r.usage.input_tokens == sum(len(p) for p in prompts)
    assert r.usage.output_tokens == sum(len(chat.get_tokenizer().encode(
        t, allowed_special="all")) for t in ROUNDS)


@needs_sandbox
def test_tools_stream_openais_events(server, client, corpus, henc):  # noqa: F811
    force_rounds(server, ROUNDS)
    events = list(client.responses.create(model="tiny", input=QUESTION, tools=TOOLS,
                                          temperature=0, max_output_tokens=600, stream=True))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    compact = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    web = ["response.output_item.added", "response.web_search_call.in_progress",
           "response.web_search_call.searching", "response.web_search_call.completed",
           "response.output_item.done"]
    assert compact == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta", "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed", "response.output_item.done",
        *web, *web,
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.annotation.added",
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed"]
    final = events[-1].response
    ids = check_output(final, corpus)
    # the items announced and finished in the stream are the response's, at their indices
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [(e.output_index, e.item.id) for e in done] == \
        [(k, o.id) for k, o in enumerate(final.output)]
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[1].item.type == "code_interpreter_call" and added[1].item.status == \
        "in_progress" and added[1].item.code == CODE
    tool_events = [e for e in events if e.type.startswith(("response.code_interpreter_call",
                                                           "response.web_search_call"))]
    assert {(e.item_id, e.output_index) for e in tool_events} == \
        {(o.id, k) for k, o in enumerate(final.output) if k in (1, 2, 3)}
    code = "".join(e.delta for e in events
                   if e.type == "response.code_interpreter_call_code.delta")
    assert code == CODE
    conv = conversation(ids, "42\n", reference_results(corpus))
    check_prompts(seen_prompts(server), henc, conv)


@needs_sandbox
def test_chain_keeps_python_state_and_renders_history(server, client, corpus, henc,  # noqa: F811
                                                      outside):
    """previous_response_id continues the conversation, tool calls and answers included, with
    the chain's python session (its variables); the sandbox holds in the server."""
    force_rounds(server, ROUNDS)
    r1 = client.responses.create(model="tiny", input=QUESTION, tools=TOOLS, temperature=0,
                                 max_output_tokens=600)
    ids = check_output(r1, corpus)
    code2 = f"import os\nprint(n + 1)\nos.path.exists({outside!r})"
    force_rounds(server, [f"<|channel|>analysis to=python code<|message|>{code2}<|call|>",
                          "<|channel|>final<|message|>22; see 【1†L1】.<|return|>"])
    r2 = client.responses.create(model="tiny", previous_response_id=r1.id, input="And n+1?",
                                 tools=TOOLS, temperature=0, max_output_tokens=400)
    assert [o.type for o in r2.output] == ["code_interpreter_call", "message"]
    ci = r2.output[0]
    # n is still defined (the chain's session); the host's file is not there in the sandbox
    assert ci.outputs[0].logs == "22\nFalse\n"
    assert ci.container_id == r1.output[1].container_id
    # a citation of a page the chain opened in the earlier response resolves
    ann = r2.output[1].content[0].annotations
    ref = BuiltinTools(browser=Browser(corpus=str(corpus)))
    ref.run("browser.search", SEARCH)
    ref.run("browser.open", '{"id": 0}')
    (want,) = ref.citations("【1†L1】")
    assert want.url == "fruit/bananas.html"
    assert [(a.url, a.model_extra["path"], a.model_extra["start_line"],
             a.model_extra["end_line"]) for a in ann] == \
        [(want.url, want.path, want.start_line, want.end_line)]
    first = conversation(ids, "42\n", reference_results(corpus)) + \
        [{"role": "assistant", "content": FINAL}, {"role": "user", "content": "And n+1?"}]
    conv = first + [bcall(ci.id, "python", code2, "code"), result(ci.id, "22\nFalse\n")]
    p1, p2 = seen_prompts(server)
    assert p1 == ref_render(henc, first, ("browser", "python"))
    assert p2 == ref_render(henc, conv, ("browser", "python"))


@needs_sandbox
def test_store_false_and_unsupported_tool_fields(server, client):
    force_rounds(server, [f"<|channel|>analysis to=python code<|message|>{CODE}<|call|>",
                          "<|channel|>final<|message|>42<|return|>"])
    r = client.responses.create(model="tiny", input="x", tools=TOOLS[:1], store=False,
                                temperature=0, max_output_tokens=200)
    assert r.output[0].outputs[0].logs == "42\n" and r.output_text == "42"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny", input="x", previous_response_id=r.id)
    bad = httpx.post(server + "/v1/responses", timeout=30, json={
        "model": "tiny", "input": "x",
        "tools": [{"type": "web_search", "search_context_size": "low"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tools"
    assert "search_context_size" in bad.json()["error"]["message"]


def test_tools_that_are_off_get_a_400_naming_them(tmp_path):
    """A server started without a tool refuses requests for it, saying how to turn it on."""
    from gptoss import responses
    from gptoss.responses_tools import ToolHost
    host = ToolHost(python="off", browser_corpus=str(write_corpus(tmp_path / "c")))
    served, off = host.for_request(None)
    with pytest.raises(responses.ResponsesError) as e:
        responses.check_tools([{"type": "web_search"}, {"type": "code_interpreter"}], served,
                              off)
    assert e.value.param == "tools" and "'code_interpreter'" in str(e.value)
    assert "--python-tool sandbox" in str(e.value) and "web_search" not in str(e.value)
    host = ToolHost(python="off")
    served, off = host.for_request(None)
    with pytest.raises(responses.ResponsesError) as e:
        responses.check_tools([{"type": "browser_search"}], served, off)
    assert "'browser_search'" in str(e.value) and "--browser-corpus" in str(e.value)
    with pytest.raises(ValueError, match="python tool"):
        ToolHost(python="docker")


def test_serve_refuses_to_start_a_python_tool_without_its_sandbox(monkeypatch):
    from gptoss import responses_tools
    monkeypatch.setattr(responses_tools, "sandbox_problem", lambda: "util-linux unshare is "
                        "missing")
    with pytest.raises(RuntimeError, match="unshare is missing.*--python-tool off"):
        responses_tools.ToolHost(python="sandbox")


def _run(tool, code, index=0):
    """Run one python call through a request's code_interpreter tool; -> the item."""
    from gptoss.chat import ParsedMessage
    m = ParsedMessage(channel="analysis", recipient="python", content_type="code", content=code,
                      end="call")
    gen = tool.run(m, index)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value.items[0]


@needs_sandbox
def test_chains_never_share_a_python_session():
    """A response hands its session to the one continuing it; a second continuation of the
    same response (running at the same time) gets a fresh one; a response that is not stored
    closes its session; the oldest chains' sessions are closed past max_sessions."""
    from gptoss.responses_tools import ToolHost
    host = ToolHost(python="sandbox", max_sessions=2)
    spec = {"type": "code_interpreter", "container": {"type": "auto"}}

    def tool(prev):
        return host.for_request(prev)[0]["code_interpreter"](spec)
    try:
        t1 = tool(None)
        assert _run(t1, "x = 5\nx")["outputs"][0]["logs"] == "5\n"
        py1 = t1.req.tools.python_started
        t1.finish({"id": "r1", "store": True, "status": "completed"})
        a, b = tool("r1"), tool("r1")             # two continuations of r1, both in flight
        assert _run(a, "x + 1")["outputs"][0]["logs"] == "6\n"
        got = _run(b, "x")
        assert "NameError" in got["outputs"][0]["logs"] and got["status"] == "failed"
        assert a.req.tools.python_started is py1
        py_b = b.req.tools.python_started
        assert py_b is not None and py_b is not py1
        b.finish({"id": "r2b", "store": False, "status": "completed"})
        assert py_b._closed and not py1._closed
        a.finish({"id": "r2", "store": True, "status": "completed"})
        # a response continuing r2 without tools passes the session on (host.move)
        host.move("r2", "r3")
        c = tool("r3")
        assert _run(c, "x * 10")["outputs"][0]["logs"] == "50\n"
        c.finish({"id": "r4", "store": True, "status": "completed"})
        for k in range(2):                        # two newer chains: r4's session is evicted
            t = tool(None)
            _run(t, "1")
            t.finish({"id": f"n{k}", "store": True, "status": "completed"})
        assert py1._closed
        host.drop("n0")
    finally:
        host.close()


def test_tool_choice_with_builtin_tools(tiny_hf, tmp_path):
    """tool_choice 'none' offers no tool (the system message has no # Tools); 'required' with
    only built-in tools is refused by name."""
    from gptoss import Model, responses
    from gptoss.responses_tools import ToolHost
    from gptoss.server import fit_context, sampling_args
    model = Model.from_pretrained(tiny_hf)
    host = ToolHost(python="off", browser_corpus=str(write_corpus(tmp_path / "c")))
    body = {"input": "hi", "tools": [{"type": "web_search"}]}
    p = responses.prepare(dict(body), model, responses.ResponseStore(), sampling_args,
                          fit_context, *host.for_request(None))
    assert p.prompt == chat.render([{"role": "user", "content": "hi"}], builtin_tools=["browser"])
    p = responses.prepare(dict(body, tool_choice="none"), model, responses.ResponseStore(),
                          sampling_args, fit_context, *host.for_request(None))
    assert p.prompt == chat.render([{"role": "user", "content": "hi"}]) and p.builtins == []
    with pytest.raises(responses.ResponsesError) as e:
        responses.prepare(dict(body, tool_choice="required"), model, responses.ResponseStore(),
                          sampling_args, fit_context, *host.for_request(None))
    assert e.value.param == "tool_choice"
