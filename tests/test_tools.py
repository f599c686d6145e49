"""Built-in tools: rendering against openai-harmony token for token, the offline browser over a
corpus made here, BuiltinTools, and the Model.chat loop end to end on random:tiny."""
import json
import os
import time

import pytest

import gptoss

from gptoss import chat
from gptoss.chat_events import Done, ReasoningDelta, TextDelta
from gptoss.tokenizer import get_tokenizer
from gptoss.tools import Browser, BuiltinTools, PythonTool, sandbox_problem
from gptoss.tools.loop import BuiltinToolCall, BuiltinToolResult

H = pytest.importorskip("openai_harmony")
PROBLEM = sandbox_problem()
needs_sandbox = pytest.mark.skipif(PROBLEM is not None, reason=f"no sandbox here: {PROBLEM}")


def enc_all(s):
    return get_tokenizer().encode(s, allowed_special="all")


# ------------------------------------------------------------------------------ rendering
def ref_system(builtin, effort="medium", date=None, python_desc=None):
    s = H.SystemContent.new().with_reasoning_effort(
        {"low": H.ReasoningEffort.LOW, "medium": H.ReasoningEffort.MEDIUM,
         "high": H.ReasoningEffort.HIGH}[effort])
    if date:
        s = s.with_conversation_start_date(date)
    if "browser" in builtin:
        s = s.with_browser_tool()
    if "python" in builtin:
        s = s.with_tools(H.ToolNamespaceConfig(name="python", description=python_desc or
                                               chat.python_description(), tools=[]))
    return H.Message.from_role_and_content(H.Role.SYSTEM, s)


def ref_render(henc, msgs, builtin=(), effort="medium", date=None, functions=None,
               python_desc=None):
    """The conversation built with openai-harmony's own types."""
    out = [ref_system(builtin, effort, date, python_desc)]
    instr = [m["content"] for m in msgs if m["role"] in ("system", "developer")]
    if instr or functions:
        dev = H.DeveloperContent.new()
        if instr:
            dev = dev.with_instructions("\n".join(instr))
        if functions:
            dev = dev.with_function_tools([H.ToolDescription.new(
                t["function"]["name"], t["function"].get("description", ""),
                parameters=t["function"].get("parameters")) for t in functions])
        out.append(H.Message.from_role_and_content(H.Role.DEVELOPER, dev))
    calls = {}
    A = H.Role.ASSISTANT
    for m in msgs:
        if m["role"] == "user":
            out.append(H.Message.from_role_and_content(H.Role.USER, m["content"]))
        elif m["role"] == "assistant":
            if m.get("reasoning"):
                out.append(H.Message.from_role_and_content(A, m["reasoning"])
                           .with_channel("analysis"))
            for tc in m.get("tool_calls") or []:
                calls[tc["id"]] = tc
                if tc["type"] == "builtin":
                    msg = H.Message.from_role_and_content(A, tc["arguments"]) \
                        .with_channel(tc.get("channel", "analysis")).with_recipient(tc["recipient"])
                    if tc.get("content_type"):
                        msg = msg.with_content_type(tc["content_type"])
                else:
                    msg = H.Message.from_role_and_content(A, tc["function"]["arguments"]) \
                        .with_channel("commentary") \
                        .with_recipient("functions." + tc["function"]["name"]) \
                        .with_content_type("<|constrain|>json")
                out.append(msg)
            if m.get("content"):
                out.append(H.Message.from_role_and_content(A, m["content"]).with_channel("final"))
        elif m["role"] == "tool":
            tc = calls[m["tool_call_id"]]
            if tc["type"] == "builtin":
                out.append(H.Message.from_author_and_content(
                    H.Author.new(H.Role.TOOL, tc["recipient"]), m["content"])
                    .with_channel(tc.get("channel", "analysis")).with_recipient("assistant"))
            else:
                out.append(H.Message.from_author_and_content(
                    H.Author.new(H.Role.TOOL, "functions." + tc["function"]["name"]),
                    m["content"]).with_channel("commentary").with_recipient("assistant"))
    return list(henc.render_conversation_for_completion(H.Conversation.from_messages(out), A))


def bcall(cid, rec, args, ctype=None, channel="analysis"):
    tc = {"id": cid, "type": "builtin", "recipient": rec, "arguments": args, "channel": channel}
    if ctype:
        tc["content_type"] = ctype
    return {"role": "assistant", "tool_calls": [tc]}


def result(cid, text):
    return {"role": "tool", "tool_call_id": cid, "content": text}


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather.", "parameters": {
        "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}
SEARCH = '{"query": "apple orchards", "topn": 3}'
CONVERSATIONS = [
    ([{"role": "user", "content": "hi"}], ("browser",), {}),
    ([{"role": "user", "content": "hi"}], ("python",), {}),
    ([{"role": "user", "content": "hi"}], ("python", "browser"), {"date": "2025-03-01",
                                                                  "effort": "high"}),
    ([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
     ("browser", "python"), {"functions": [WEATHER], "effort": "low"}),
    # a python call and its result, mid turn
    ([{"role": "user", "content": "What is 2**100?"},
      {"role": "assistant", "reasoning": "Compute it."},
      bcall("p1", "python", "print(2**100)", "code"),
      result("p1", "1267650600228229401496703205376\n")], ("python",), {}),
    # search, open, find, then python, several results in one turn
    ([{"role": "user", "content": "Tell me about apples."},
      bcall("b1", "browser.search", SEARCH, "<|constrain|>json"),
      result("b1", "[0] Search results for `apple orchards`\n**viewing lines [0 - 1] of 1**\n\n"
                   "L0: * 【0†Apples†a.md】\nL1:   Apples grow on trees."),
      {"role": "assistant", "reasoning": "Open the first."},
      bcall("b2", "browser.open", '{"id": 0}', "code"),
      result("b2", "[1] Apples (a.md)\n**viewing lines [0 - 0] of 0**\n\nL0: # Apples"),
      bcall("b3", "browser.find", '{"pattern": "tree"}'),
      result("b3", "[2] Find results\n**viewing lines [0 - 0] of 0**\n\nL0: none"),
      bcall("p1", "python", "len('apples')", "code"), result("p1", "6\n")],
     ("browser", "python"), {}),
    # multi-turn: a finished turn with tool use (dropped from the prompt), then a new turn
    ([{"role": "user", "content": "Q1"},
      {"role": "assistant", "reasoning": "use python"},
      bcall("p1", "python", "1+1", "code"), result("p1", "2\n"),
      {"role": "assistant", "content": "It is 2."},
      {"role": "user", "content": "Q2"},
      {"role": "assistant", "reasoning": "search now"},
      bcall("b1", "browser.search", '{"query": "q2"}', "<|constrain|>json"),
      result("b1", "[0] Search results for `q2`\n**viewing lines [0 - 0] of 0**\n\nL0: No results.")],
     ("browser", "python"), {}),
    # two finished turns: only the analysis before the first final answer is dropped
    ([{"role": "user", "content": "Q1"}, {"role": "assistant", "reasoning": "t1", "content": "A1"},
      {"role": "user", "content": "Q2"}, {"role": "assistant", "reasoning": "t2"},
      bcall("p1", "python", "2+2", "code"), result("p1", "4\n"),
      {"role": "assistant", "content": "A2"}, {"role": "user", "content": "Q3"}],
     ("python",), {}),
    # built-in and user function calls in one conversation
    ([{"role": "user", "content": "weather and math"},
      bcall("p1", "python", "3*3", "code"), result("p1", "9\n"),
      {"role": "assistant", "tool_calls": [{"id": "f1", "type": "function", "function": {
          "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
      {"role": "tool", "tool_call_id": "f1", "content": "cold"},
      {"role": "assistant", "content": "9, and cold."},
      {"role": "user", "content": "again?"}], ("python",), {"functions": [WEATHER]}),
    # a python call on the commentary channel, and a call to a tool that is not there
    ([{"role": "user", "content": "x"}, bcall("p1", "python", "x = 1", "code", "commentary"),
      result("p1", ""), bcall("u1", "container.exec", '{"cmd": ["ls"]}', "<|constrain|>json"),
      result("u1", "Error: no tool named 'container.exec' is available")], ("python",), {}),
]


@pytest.mark.parametrize("msgs,builtin,kw", CONVERSATIONS)
def test_render_matches_openai_harmony(henc, msgs, builtin, kw):
    mine = chat.render(msgs, tools=kw.get("functions"), reasoning_effort=kw.get("effort", "medium"),
                       current_date=kw.get("date"), builtin_tools=builtin)
    ref = ref_render(henc, msgs, builtin, kw.get("effort", "medium"), kw.get("date"),
                     kw.get("functions"))
    if mine != ref:
        enc = get_tokenizer()
        i = next(k for k, (a, b) in enumerate(zip(mine + [-1], ref + [-1])) if a != b)
        pytest.fail(f"differ at token {i}:\nmine: {enc.decode(mine[max(0, i - 30):i + 30])!r}\n"
                    f"ref:  {enc.decode(ref[max(0, i - 30):i + 30])!r}")


from hypothesis import given, settings, strategies as st

TEXT = st.lists(st.sampled_from(list("ab ,.\n{}\"é中【†】") + ["<|start|>", "42", "L3"]),
                min_size=1, max_size=12).map("".join)
STEP = st.one_of(
    st.tuples(st.just("reason"), TEXT),
    st.tuples(st.just("call"), st.sampled_from(["python", "browser.search", "browser.open",
                                                "browser.find"]),
              st.sampled_from([None, "code", "<|constrain|>json"]),
              st.sampled_from(["analysis", "commentary"]), TEXT, TEXT),
    st.tuples(st.just("fn"), TEXT, TEXT))
TURN = st.tuples(TEXT, st.lists(STEP, max_size=4), st.one_of(st.none(), TEXT))


@settings(max_examples=40, deadline=None)
@given(turns=st.lists(TURN, min_size=1, max_size=3),
       builtin=st.sampled_from([("browser",), ("python",), ("browser", "python")]),
       effort=st.sampled_from(["low", "medium", "high"]))
def test_random_tool_conversations_match_openai_harmony(henc, turns, builtin, effort):
    msgs, n = [], 0
    for user, steps, final in turns:
        msgs.append({"role": "user", "content": user})
        for step in steps:
            n += 1
            if step[0] == "reason":
                msgs.append({"role": "assistant", "reasoning": step[1]})
            elif step[0] == "call":
                _, rec, ctype, channel, args, out = step
                msgs += [bcall(f"c{n}", rec, args, ctype, channel), result(f"c{n}", out)]
            else:
                msgs += [{"role": "assistant", "tool_calls": [{
                    "id": f"c{n}", "type": "function",
                    "function": {"name": "get_weather", "arguments": step[1]}}]},
                    {"role": "tool", "tool_call_id": f"c{n}", "content": step[2]}]
        if final is not None:
            msgs.append({"role": "assistant", "content": final})
    mine = chat.render(msgs, tools=[WEATHER], reasoning_effort=effort, builtin_tools=builtin)
    assert mine == ref_render(henc, msgs, builtin, effort, functions=[WEATHER])


def test_browser_section_is_openai_harmonys_default(henc):
    ref = henc.render_conversation(H.Conversation.from_messages([H.Message.from_role_and_content(
        H.Role.SYSTEM, H.SystemContent.new().with_browser_tool())]))
    mine = chat.encode_messages([chat.HarmonyMessage("system", chat.system_text(
        builtin_tools=["browser"]))])
    assert mine == list(ref)


@needs_sandbox
def test_python_description_differs_from_harmonys_only_where_ours_is_true(henc):
    theirs = H.SystemContent.new().with_python_tool().to_dict()["tools"]["python"]["description"]
    ours = chat.python_description(120)
    assert theirs.replace("Internet access for this session is UNKNOWN. Depends on the cluster.",
                          "Internet access for this session is disabled.") == ours
    with PythonTool(timeout=7) as t:
        assert "time out after 7.0 seconds" in t.description
        mine = chat.render([{"role": "user", "content": "hi"}], builtin_tools=[t])
        assert mine == ref_render(henc, [{"role": "user", "content": "hi"}], ("python",),
                                  python_desc=t.description)


def test_tool_calls_parse_as_openai_harmony_parses_them(henc):
    texts = ["<|channel|>analysis to=python code<|message|>print(1)<|call|>",
             " to=python<|channel|>analysis code<|message|>x = 2\nx<|call|>",
             "<|channel|>analysis<|message|>look<|end|><|start|>assistant<|channel|>analysis "
             "to=browser.search <|constrain|>json<|message|>{\"query\": \"q\"}<|call|>",
             "<|channel|>commentary to=browser.open code<|message|>{\"id\": 3}<|call|>"]
    for text in texts:
        toks = enc_all(text)
        ref = henc.parse_messages_from_completion_tokens(toks, H.Role.ASSISTANT)
        p = chat.HarmonyParser()
        for t in toks:
            p.feed(t)
        p.close()
        mine = [m for m in p.messages if not m.malformed]
        assert len(mine) == len(ref)
        for a, b in zip(mine, ref):
            d = b.to_dict()
            assert (a.channel, a.recipient, a.content_type or None, a.content) == \
                (d.get("channel"), d.get("recipient"), d.get("content_type"),
                 d["content"][0]["text"])


def test_render_errors_name_the_field():
    with pytest.raises(chat.ChatFormatError, match=r"builtin_tools\[0\]"):
        chat.render([{"role": "user", "content": "a"}], builtin_tools=["shell"])
    with pytest.raises(chat.ChatFormatError, match=r"builtin_tools\[1\].*twice"):
        chat.render([{"role": "user", "content": "a"}], builtin_tools=["python", "python"])
    with pytest.raises(chat.ChatFormatError, match=r"messages\[1\].tool_calls\[0\].recipient"):
        chat.render([{"role": "user", "content": "a"}, bcall("x", "functions.f", "{}")])


# ------------------------------------------------------------------------------ the browser
@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "corpus"
    (d / "fruit").mkdir(parents=True)
    (d / "apples.md").write_text(
        "# Apples\n\nApples grow on trees in orchards.\nSee [bananas](fruit/bananas.html) and "
        "[the web](https://example.com/apples).\n\nThe orchard harvest is in autumn.\n"
        "Apple orchards need pollinators such as bees.\n")
    (d / "fruit" / "bananas.html").write_text(
        "<html><head><title>All about bananas</title><script>var x = 'orchard';</script></head>\n"
        "<body>\n<h1>Bananas</h1>\n<p>Bananas are yellow and\ngrow in bunches.</p>\n"
        "<p>Unlike <a href=\"../apples.md\">apples</a>, they grow on plants.</p>\n"
        "<pre>line one\nline two</pre>\n</body></html>\n")
    (d / "notes.txt").write_text("Cherries are red.\nA single mention of an orchard.\n")
    (d / "ignored.bin").write_bytes(b"orchard orchard orchard")
    return d


def test_search_ranks_the_document_holding_the_query_words_first(corpus):
    b = Browser(corpus=str(corpus))
    out = b.search("apple orchards pollinators")
    assert out.startswith("[0] Search results for `apple orchards pollinators`")
    lines = [ln for ln in out.split("\n") if "】" in ln]
    assert "apples.md" in lines[0] and "L0: * 【0†Apples†apples.md】" in out
    out = b.search("yellow bunches")
    first = [ln for ln in out.split("\n") if "】" in ln][0]
    assert "fruit/bananas.html" in first and "All about bananas" in first
    assert "ignored.bin" not in b.search("orchard")
    assert "No results" in b.search("zzzzqqq")
    assert os.path.exists(corpus / ".gptoss-index.sqlite3")      # kept beside the corpus


def test_index_is_refreshed_when_files_change(corpus):
    b = Browser(corpus=str(corpus))
    assert "No results" in b.search("kumquat")
    (corpus / "kumquat.md").write_text("# Kumquats\n\nKumquats are small.\n")
    (corpus / "notes.txt").unlink()
    b.backend.refresh(force=True)
    assert "kumquat.md" in b.search("kumquat")
    assert "notes.txt" not in b.search("cherries")
    # a new Browser over the same folder reuses the index on disk
    b2 = Browser(corpus=str(corpus))
    assert b2.backend.refresh(force=True) == 0
    assert "kumquat.md" in b2.search("kumquat")


def test_open_scroll_find_and_cursors(corpus):
    b = Browser(corpus=str(corpus), view_lines=3)
    b.search("apples orchards")                                  # [0]
    page = b.open(id=0)                                          # [1] apples.md
    assert page.startswith("[1] Apples (apples.md)\n**viewing lines [0 - 2] of 6**\n\nL0: # Apples")
    assert "L3:" not in page
    page = b.open(cursor=1, loc=3, num_lines=2)                  # [2] scrolled
    assert "**viewing lines [3 - 4] of 6**" in page
    assert "L3: See 【0†bananas】 and the web (https://example.com/apples)." in page
    page = b.open(id=0, cursor=2)                                # follow the link on [2]
    assert page.startswith("[3] All about bananas (fruit/bananas.html)")
    assert "L0: # Bananas" in page and "L1: Bananas are yellow and grow in bunches." in page
    assert "var x" not in page
    page = b.open(id="apples.md", loc=5)                          # by path
    assert page.startswith("[4] Apples (apples.md)") and "L5: The orchard harvest" in page
    found = b.find("ORCHARD", cursor=1)                           # [5]
    assert found.startswith("[5] Find results for `ORCHARD` in `Apples`")
    assert "【0†match at L2】" in found and "【1†match at L5】" in found and "L6" in found
    page = b.open(id=1)                                          # a find result: that line
    assert page.startswith("[6] Apples") and "viewing lines [5 - 6] of 6" in page
    page = b.open(id="fruit/bananas.html", view_source=True, num_lines=1)
    assert page.startswith("[7] All about bananas (source) (fruit/bananas.html)")
    assert "L0: <html><head><title>All about bananas</title>" in page
    assert b.open(id="0", cursor=0).startswith("[8] Apples (apples.md)")   # id as a string


def test_citations_resolve_to_file_and_lines(corpus):
    b = Browser(corpus=str(corpus))
    b.open(id="apples.md")                                       # [0]
    b.open(id="fruit/bananas.html")                              # [1]
    c = b.resolve_citation(0, 2, 3)
    assert (c.url, c.start_line, c.end_line) == ("apples.md", 3, 4)
    assert c.path == str(corpus / "apples.md") and c.text.startswith("Apples grow on trees")
    lines = (corpus / "apples.md").read_text().split("\n")
    assert lines[c.start_line - 1] == "Apples grow on trees in orchards."
    c = b.resolve_citation(1, 1)                                  # HTML: the <p>'s line
    html_lines = (corpus / "fruit" / "bananas.html").read_text().split("\n")
    assert "Bananas are yellow" in html_lines[c.start_line - 1]
    c = b.resolve_citation(1, 4)
    assert "line two" in html_lines[c.start_line - 1]
    cs = b.citations("Apples grow on trees 【0†L2-L3】, bananas 【1†L1】, bad 【9†L1】 【0†L99】.")
    assert [(x.url, x.start_line, x.end_line) for x in cs] == [("apples.md", 3, 4),
                                                               ("fruit/bananas.html", 4, 4)]


def test_bad_calls_come_back_as_text(corpus):
    b = Browser(corpus=str(corpus))
    assert b.call("open", {"id": 0}).startswith("Error: no page is open yet")
    b.search("apples")
    for fn, args, want in [
            ("open", {"id": 42}, "link id 42 is not on page [0]"),
            ("open", {"cursor": 7}, "cursor 7 names no page"),
            ("open", {"id": "../../etc/passwd"}, "is not a page of the local corpus"),
            ("open", {"id": "https://example.com"}, "is not a page of the local corpus"),
            ("open", {"id": "apples.md", "loc": 500}, "past the end"),
            ("open", {"id": True}, "must be a link number"),
            ("find", {"pattern": ""}, "non-empty `pattern`"),
            ("search", {"query": ""}, "non-empty `query`"),
            ("search", {"q": "x"}, "bad arguments for browser.search"),
            ("close", {}, "no function 'close'"),
            ("open", [1], "must be a JSON object")]:
        out = b.call(fn, args)
        assert out.startswith("Error:") and want in out, (fn, args, out)
    assert not Browser(corpus=str(corpus)).citations("【0†L1】")


# ------------------------------------------------------------------------------ BuiltinTools
@needs_sandbox
def test_builtin_tools_run_and_describe_calls(corpus):
    with PythonTool(timeout=5) as py:
        bt = BuiltinTools(python=py, browser=str(corpus))
        assert bt.recipients == ("browser.search", "browser.open", "browser.find", "python")
        assert bt.handles("python") and not bt.handles("functions.get_weather")
        assert bt.system_tools == [bt.browser, py]
        r = bt.run("python", "x = 6\nx * 7")
        assert (r.author, r.channel, r.text, r.kind) == ("python", "analysis", "42\n",
                                                         "code_interpreter")
        assert r.data == {"code": "x = 6\nx * 7", "outputs": [{"type": "logs", "logs": "42\n"}],
                          "status": "completed"}
        r = bt.run("browser.search", '{"query": "bananas yellow"}', "commentary")
        assert r.kind == "web_search" and r.channel == "commentary" and r.text.startswith("[0]")
        assert r.data["action"]["type"] == "search" and r.data["action"]["query"] == "bananas yellow"
        assert r.data["action"]["sources"][0] == {"type": "url", "url": "fruit/bananas.html",
                                                  "title": "All about bananas"}
        r = bt.run("browser.open", '{"id": 0}')
        assert r.data == {"action": {"type": "open_page", "url": "fruit/bananas.html"},
                          "status": "completed"}
        r = bt.run("browser.find", '{"pattern": "yellow"}')
        assert r.data["action"] == {"type": "find", "url": "fruit/bananas.html",
                                    "pattern": "yellow"}
        r = bt.run("browser.open", "{not json")
        assert r.error and r.text.startswith("Error: the arguments are not valid JSON")
        r = bt.run("container.exec", "{}")
        assert r.error and r.kind == "unknown" and "no tool named 'container.exec'" in r.text
        ann = bt.annotations("Yellow 【1†L1】.")
        assert ann == [{"type": "url_citation", "start_index": 7, "end_index": 13,
                        "url": "fruit/bananas.html", "title": "All about bananas",
                        "path": str(corpus / "fruit" / "bananas.html"), "start_line": 4,
                        "end_line": 4}]


# ------------------------------------------------------------------------------ the chat loop
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """random:tiny cut to one layer (the output is forced; only the prompts' length costs)."""
    from gptoss.testing import write_random_checkpoint
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny1")), "tiny", layout="hf",
                                   seed=3, num_layers=1)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    from gptoss import Model
    return Model.from_pretrained(tiny_path, backend="auto")


@needs_sandbox
def test_chat_loop_runs_python_and_browser_end_to_end(tiny, corpus, henc):
    """The model's output is forced down a path (python call, search, open, final answer); the
    tools run for real; each prompt is openai-harmony's rendering of the conversation so far."""
    rounds = [
        enc_all("<|channel|>analysis<|message|>Let me compute.<|end|><|start|>assistant"
                "<|channel|>analysis to=python code<|message|>n = 21\nn * 2<|call|>"),
        enc_all("<|channel|>analysis to=browser.search <|constrain|>json<|message|>"
                '{"query": "yellow bunches", "topn": 2}<|call|>'),
        enc_all("<|channel|>analysis to=browser.open <|constrain|>json<|message|>"
                '{"id": 0}<|call|>'),
        enc_all("<|channel|>final<|message|>42, and bananas are yellow 【1†L1】.<|return|>"),
    ]
    prompts = []

    def spy(prompt, **kw):
        prompts.append(list(prompt))
        return tiny.generate(prompt, **kw)
    from gptoss.tools.loop import run_chat_with_tools
    msgs = [{"role": "user", "content": "What is 21*2, and what colour are bananas?"}]
    with PythonTool(timeout=10) as py:
        bt = BuiltinTools(python=py, browser=Browser(corpus=str(corpus)))
        events = list(run_chat_with_tools(tiny, msgs, bt, forced_tokens=rounds, temperature=0,
                                          generate=spy, max_tokens=400))
    calls = [e for e in events if isinstance(e, BuiltinToolCall)]
    results = [e for e in events if isinstance(e, BuiltinToolResult)]
    done = events[-1]
    assert isinstance(done, Done) and done.stop_reason == "stop"
    assert [c.recipient for c in calls] == ["python", "browser.search", "browser.open"]
    assert calls[0].arguments == "n = 21\nn * 2"
    assert results[0].content == "42\n"                           # python really ran
    assert results[1].content.startswith("[0] Search results for `yellow bunches`")
    assert "【0†All about bananas†fruit/bananas.html】" in results[1].content
    assert results[2].content.startswith("[1] All about bananas (fruit/bananas.html)")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == \
        "42, and bananas are yellow 【1†L1】."
    assert "Let me compute." in "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert "n = 21" not in "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert [c.url for c in bt.citations("bananas are yellow 【1†L1】")] == ["fruit/bananas.html"]

    # each prompt, and the conversation the turn returns, is openai-harmony's rendering
    assert len(prompts) == 4
    ids = [c.id for c in calls]
    conv = msgs + [{"role": "assistant", "reasoning": "Let me compute."},
                   bcall(ids[0], "python", "n = 21\nn * 2", "code"),
                   result(ids[0], results[0].content),
                   bcall(ids[1], "browser.search", '{"query": "yellow bunches", "topn": 2}',
                         "<|constrain|>json"),
                   result(ids[1], results[1].content),
                   bcall(ids[2], "browser.open", '{"id": 0}', "<|constrain|>json"),
                   result(ids[2], results[2].content)]
    cuts = [1, 4, 6, 8]
    for k, (prompt, cut) in enumerate(zip(prompts, cuts)):
        assert prompt == ref_render(henc, conv[:cut], ("browser", "python"),
                                    python_desc=chat.python_description(10)), f"prompt {k}"
    final = conv + [{"role": "assistant", "content": "42, and bananas are yellow 【1†L1】."}]
    assert done.messages == final[1:]
    nxt = final + [{"role": "user", "content": "thanks"}]
    assert chat.render(nxt, builtin_tools=[bt.browser, py]) == \
        ref_render(henc, nxt, ("browser", "python"), python_desc=chat.python_description(10))
    assert done.usage["prompt_tokens"] == sum(len(p) for p in prompts)
    assert done.usage["completion_tokens"] == sum(len(r) for r in rounds)


@needs_sandbox
def test_model_chat_with_builtin_tools_and_limits(tiny, corpus):
    call = enc_all("<|channel|>analysis to=python code<|message|>1 + 1<|call|>")
    # max_tool_calls: the third call is not run
    with PythonTool(timeout=10) as py:
        res = tiny.chat([{"role": "user", "content": "go"}], builtin_tools=["python"],
                        python_tool=py, forced_tokens=[call, call, call], max_tool_calls=2,
                        stream=False, temperature=0)
    assert res.stop_reason == "max_tool_calls"
    assert [r.content for r in res.builtin_results] == ["2\n", "2\n"]
    assert len([m for m in res.messages if m["role"] == "tool"]) == 2
    # a user function call still comes back to the caller
    fn = enc_all("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
                 '{"city": "Oslo"}<|call|>')
    with PythonTool(timeout=10) as py:
        res = tiny.chat([{"role": "user", "content": "weather"}], tools=[WEATHER],
                        python_tool=py, forced_tokens=[fn], stream=False)
    assert res.stop_reason == "tool_calls" and res.tool_calls[0].name == "get_weather"
    assert res.messages[-1]["tool_calls"][0]["id"] == res.tool_calls[0].id
    # a call to a tool that is off is answered with an error the model reads
    off = enc_all("<|channel|>analysis to=browser.search <|constrain|>json<|message|>"
                  '{"query": "x"}<|call|>')
    fin = enc_all("<|channel|>final<|message|>ok<|return|>")
    with PythonTool(timeout=10) as py:
        res = tiny.chat([{"role": "user", "content": "x"}], python_tool=py,
                        forced_tokens=[off, fin], stream=False)
    assert res.content == "ok" and res.stop_reason == "stop"
    assert res.builtin_results[0].content.startswith("Error: no tool named 'browser.search'")
    with pytest.raises(ValueError, match="builtin_tools"):
        tiny.chat([{"role": "user", "content": "x"}], builtin_tools=["shell"])
    with pytest.raises(ValueError, match="browser="):
        tiny.chat([{"role": "user", "content": "x"}], builtin_tools=["browser"])
    with pytest.raises(ValueError, match="max_tool_calls"):
        list(tiny.chat([{"role": "user", "content": "x"}], browser=str(corpus),
                       max_tool_calls=-1))


@needs_sandbox
def test_cli_chat_with_python_and_browser(tiny_path, corpus):
    import subprocess
    import sys
    rounds = [enc_all("<|channel|>analysis to=python code<|message|>print(6 * 7)<|call|>"),
              enc_all("<|channel|>analysis to=browser.search <|constrain|>json<|message|>"
                      '{"query": "yellow bunches"}<|call|>'),
              enc_all("<|channel|>final<|message|>It is 42.<|return|>")]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(gptoss.__file__)))
    r = subprocess.run([sys.executable, "-m", "gptoss", "chat", "--model", tiny_path,
                        "--python", "--python-timeout", "10", "--browser-corpus", str(corpus),
                        "--max-tokens", "64", "-t", "0", "-v",
                        "--test-forced-tokens", json.dumps(rounds)],
                       input="what is 6*7?\nand again?\n", capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "[python] print(6 * 7)\n[python result]\n  | 42\n" in out
    assert '[browser.search] {"query": "yellow bunches"}' in out
    assert "  | [0] Search results for `yellow bunches`" in out
    assert "It is 42." in out
    # two turns answered; the first ended with the forced final answer
    done_lines = [ln for ln in r.stderr.split("\n") if ln.startswith("[") and "tokens" in ln]
    assert len(done_lines) == 2 and done_lines[0].startswith("[stop;"), r.stderr
