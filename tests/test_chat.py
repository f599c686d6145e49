"""Harmony rendering against openai-harmony (token for token), and the streaming parser on
well-formed, malformed and arbitrary token sequences."""
import json

import pytest
from hypothesis import given, settings, strategies as st

from gptoss import chat
from gptoss.tokenizer import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, RETURN, START, get_tokenizer

harmony = pytest.importorskip("openai_harmony")


H = harmony
EFFORT = {"low": H.ReasoningEffort.LOW, "medium": H.ReasoningEffort.MEDIUM,
          "high": H.ReasoningEffort.HIGH}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Gets the weather.\nUse it for forecasts too.",
    "parameters": {"type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "City, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer", "default": 3},
        "tags": {"type": "array", "items": {"type": "string"}},
        "raw": {"type": "array"},
        "flag": {"type": ["boolean", "null"]},
        "opts": {"type": "object", "properties": {
            "deep": {"type": "object", "properties": {"k": {"type": "string", "description": "kd"}},
                     "required": ["k"]}}},
        "either": {"oneOf": [{"type": "string"}, {"type": "number"}]},
        "free": {"description": "anything"},
    }}}}
NOARGS = {"type": "function", "function": {"name": "ping", "description": "Ping.",
                                           "parameters": {"type": "object", "properties": {}}}}
NOPARAMS = {"type": "function", "function": {"name": "now"}}


def harmony_render(henc, msgs, tools=None, effort="medium", date=None):
    """The same conversation built by hand with openai-harmony's own types."""
    sysc = H.SystemContent.new().with_reasoning_effort(EFFORT[effort])
    if date:
        sysc = sysc.with_conversation_start_date(date)
    out = [H.Message.from_role_and_content(H.Role.SYSTEM, sysc)]
    instr = [m["content"] for m in msgs if m["role"] in ("system", "developer")]
    if instr or tools:
        dev = H.DeveloperContent.new()
        if instr:
            dev = dev.with_instructions("\n".join(instr))
        if tools:
            dev = dev.with_function_tools([H.ToolDescription.new(
                t["function"]["name"], t["function"].get("description", ""),
                parameters=t["function"].get("parameters")) for t in tools])
        out.append(H.Message.from_role_and_content(H.Role.DEVELOPER, dev))
    names = {}
    for m in msgs:
        if m["role"] == "user":
            out.append(H.Message.from_role_and_content(H.Role.USER, m["content"]))
        elif m["role"] == "assistant":
            if m.get("reasoning"):
                out.append(H.Message.from_role_and_content(H.Role.ASSISTANT, m["reasoning"])
                           .with_channel("analysis"))
            for tc in m.get("tool_calls") or []:
                names[tc["id"]] = tc["function"]["name"]
                out.append(H.Message.from_role_and_content(H.Role.ASSISTANT, tc["function"]["arguments"])
                           .with_channel("commentary").with_recipient("functions." + tc["function"]["name"])
                           .with_content_type("<|constrain|>json"))
            if m.get("content"):
                out.append(H.Message.from_role_and_content(H.Role.ASSISTANT, m["content"])
                           .with_channel("final"))
        elif m["role"] == "tool":
            out.append(H.Message.from_author_and_content(
                H.Author.new(H.Role.TOOL, "functions." + names[m["tool_call_id"]]), m["content"])
                .with_channel("commentary").with_recipient("assistant"))
    conv = H.Conversation.from_messages(out)
    return list(henc.render_conversation_for_completion(conv, H.Role.ASSISTANT))


CALL1 = {"id": "c1", "type": "function", "function": {"name": "get_weather",
                                                     "arguments": '{"location": "Paris"}'}}
CONVERSATIONS = [
    ([{"role": "user", "content": "Hello"}], None, "medium", None),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], None, "low",
     "2025-01-31"),
    ([{"role": "system", "content": "A"}, {"role": "developer", "content": "B"},
      {"role": "user", "content": "What's up? <|start|> is just text"}], None, "high", None),
    ([{"role": "user", "content": "Weather in Paris?"}], [WEATHER, NOARGS, NOPARAMS], "medium",
     None),
    ([{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "reasoning": "Need the tool.", "tool_calls": [CALL1]},
      {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'}], [WEATHER], "medium",
     None),
    # a finished turn (final answer): its analysis is dropped from history
    ([{"role": "user", "content": "Q1"},
      {"role": "assistant", "reasoning": "think 1", "content": "A1"},
      {"role": "user", "content": "Q2"}], None, "medium", None),
    # multi-turn with tools: turn 1 ended in final, turn 2 is mid tool call
    ([{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Q1"},
      {"role": "assistant", "reasoning": "t1", "content": "A1"},
      {"role": "user", "content": "Weather?"},
      {"role": "assistant", "reasoning": "t2", "tool_calls": [CALL1]},
      {"role": "tool", "tool_call_id": "c1", "content": "sunny"}], [WEATHER], "low", None),
]


@pytest.mark.parametrize("msgs,tools,effort,date", CONVERSATIONS)
def test_render_is_token_identical_to_openai_harmony(henc, msgs, tools, effort, date):
    mine = chat.render(msgs, tools=tools, reasoning_effort=effort, current_date=date)
    ref = harmony_render(henc, msgs, tools, effort, date)
    if mine != ref:
        enc = get_tokenizer()
        i = next(k for k, (a, b) in enumerate(zip(mine + [-1], ref + [-1])) if a != b)
        pytest.fail(f"differ at token {i}:\nmine: {enc.decode(mine[max(0, i - 20):i + 20])!r}\n"
                    f"ref:  {enc.decode(ref[max(0, i - 20):i + 20])!r}")
    assert mine[-2:] == [START, get_tokenizer().encode("assistant")[0]]


def test_render_errors_name_the_field():
    with pytest.raises(chat.ChatFormatError, match=r"messages\[1\].role"):
        chat.render([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}])
    with pytest.raises(chat.ChatFormatError, match="reasoning_effort"):
        chat.render([{"role": "user", "content": "a"}], reasoning_effort="max")
    with pytest.raises(chat.ChatFormatError, match=r"messages\[0\]: tool_call_id"):
        chat.render([{"role": "tool", "tool_call_id": "zz", "content": "x"}])
    with pytest.raises(chat.ChatFormatError, match=r"tools\[0\]"):
        chat.render([{"role": "user", "content": "a"}], tools=[{"type": "function"}])
    with pytest.raises(chat.ChatFormatError, match=r"content\[0\]"):
        chat.render([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])


# ------------------------------------------------------------------------------ parser
def enc_text(s):
    return get_tokenizer().encode(s, disallowed_special=())


def parse(tokens):
    p = chat.HarmonyParser()
    events = []
    for t in tokens:
        events += p.feed(t)
    events += p.close()
    return p, events


def test_parse_analysis_then_final():
    toks = ([CHANNEL] + enc_text("analysis") + [MESSAGE] + enc_text("Let me think. 🙂") + [END]
            + [START] + enc_text("assistant") + [CHANNEL] + enc_text("final") + [MESSAGE]
            + enc_text("The answer is 4.") + [RETURN])
    p, ev = parse(toks)
    assert [(m.channel, m.content, m.end) for m in p.messages] == [
        ("analysis", "Let me think. 🙂", "end"), ("final", "The answer is 4.", "return")]
    assert p.done == "return" and not any(m.malformed for m in p.messages)
    deltas = "".join(e.text for e in ev if e.kind == "delta" and e.message.channel == "final")
    assert deltas == "The answer is 4."


@pytest.mark.parametrize("header", [
    " to=functions.get_weather<|channel|>commentary <|constrain|>json",    # openai-harmony order
    "<|channel|>commentary to=functions.get_weather <|constrain|>json",    # what the model writes
    "<|channel|>commentary to=functions.get_weather json",
])
def test_parse_tool_call_headers(header):
    toks = get_tokenizer().encode(header + "<|message|>", allowed_special="all") + \
        enc_text('{"location": "Paris"}') + [CALL]
    p, _ = parse(toks)
    (m,) = p.messages
    assert m.channel == "commentary" and m.recipient == "functions.get_weather"
    assert json.loads(m.content) == {"location": "Paris"} and m.end == "call"
    assert p.done == "call"


@pytest.mark.parametrize("tokens,why", [
    (enc_text("no header at all") * 30, "header too long"),
    ([CHANNEL] + enc_text("final") + [MESSAGE] + enc_text("cut") + [START] + enc_text("assistant")
     + [CHANNEL] + enc_text("final") + [MESSAGE] + enc_text("ok") + [RETURN], "cut off"),
    ([CHANNEL] + enc_text("final") + [END], "without <|message|>"),
    ([CHANNEL] + enc_text("final") + [MESSAGE] + enc_text("unfinished"), "before the message ended"),
    ([CHANNEL] + enc_text("final") + [MESSAGE] + enc_text("a") + [END] + enc_text("stray"),
     "outside a message"),
    ([CHANNEL, CHANNEL, MESSAGE] + enc_text("x") + [END], "empty channel"),
    ([CONSTRAIN, 200999, MESSAGE, 200010] + [END], None),
])
def test_parser_recovers_from_malformed_output(tokens, why):
    p, ev = parse(tokens)
    assert p.messages, "nothing kept"
    if why:
        assert any(m.malformed and why in m.malformed for m in p.messages), \
            [m.malformed for m in p.messages]
    # everything the model wrote as text is kept somewhere
    kept = "".join(m.content for m in p.messages)
    for piece in ("cut", "unfinished", "stray"):
        if piece in get_tokenizer().decode(tokens):
            assert piece in kept


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from([START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL,
                                           200001, 201087, 199999]),
                          st.integers(min_value=0, max_value=201087)), max_size=120))
def test_parser_never_raises(tokens):
    p = chat.HarmonyParser()
    for t in tokens:
        for e in p.feed(t):
            assert e.kind in ("start", "delta", "end", "stray")
    p.close()
    for m in p.messages:
        assert isinstance(m.content, str)
