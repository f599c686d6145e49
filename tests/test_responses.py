"""The Responses API against the official openai client and the openai-agents SDK (random:tiny,
output forced through the server's test hook)."""
import asyncio
import json

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from gptoss import chat  # noqa: E402
from test_server import WEATHER, force, openai_client, running_server  # noqa: E402

ANSWER = ("<|channel|>analysis<|message|>The user greets me.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>Hello there!<|return|>")
CALL = ('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant'
        '<|channel|>commentary to=functions.get_weather <|constrain|>json'
        '<|message|>{"location": "Paris"}<|call|>')
FN = {"type": "function", "name": "get_weather", "description": "Current weather.",
      "parameters": WEATHER["function"]["parameters"]}


@pytest.fixture(scope="module")
def server(tiny_hf):
    with running_server(tiny_hf, "--max-context", "4096") as base:
        yield base


@pytest.fixture
def client(server):
    return openai_client(server)


def ntok(text):
    return len(chat.get_tokenizer().encode(text, allowed_special="all"))


def test_create_non_streaming(server, client):
    force(server, ANSWER)
    r = client.responses.create(model="tiny", input="Hi", instructions="Be brief.",
                                reasoning={"effort": "low"})
    assert r.status == "completed" and r.output_text == "Hello there!"
    kinds = [o.type for o in r.output]
    assert kinds == ["reasoning", "message"]
    assert r.output[0].content[0].text == "The user greets me."
    want = chat.render([{"role": "developer", "content": "Be brief."},
                        {"role": "user", "content": "Hi"}], reasoning_effort="low")
    assert r.usage.input_tokens == len(want)
    assert r.usage.output_tokens == ntok(ANSWER)
    # the analysis message, its header and <|end|> included
    assert r.usage.output_tokens_details.reasoning_tokens == ntok(
        "<|channel|>analysis<|message|>The user greets me.<|end|>")
    assert r.usage.input_tokens_details.cached_tokens == 0
    # stored: retrievable by id
    got = client.responses.retrieve(r.id)
    assert got.output_text == "Hello there!"
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_streaming_events_in_order(server, client):
    force(server, ANSWER)
    events = list(client.responses.create(model="tiny", input="Hi", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    compact = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    assert compact == ["response.created", "response.in_progress",
                       "response.output_item.added", "response.content_part.added",
                       "response.reasoning_text.delta", "response.reasoning_text.done",
                       "response.content_part.done", "response.output_item.done",
                       "response.output_item.added", "response.content_part.added",
                       "response.output_text.delta", "response.output_text.done",
                       "response.content_part.done", "response.output_item.done",
                       "response.completed"]
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert text == "Hello there!" and reasoning == "The user greets me."
    final = events[-1].response
    assert final.output_text == "Hello there!"
    assert final.usage.output_tokens == ntok(ANSWER)


def test_function_call_streaming_and_round_trip(server, client):
    force(server, CALL)
    events = list(client.responses.create(model="tiny", input="Weather in Paris?", tools=[FN],
                                          stream=True))
    args = "".join(e.delta for e in events
                   if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(args) == {"location": "Paris"} and done[0].arguments == args
    final = events[-1].response
    (call,) = [o for o in final.output if o.type == "function_call"]
    assert call.name == "get_weather"
    # the caller answers through previous_response_id
    force(server, "<|channel|>final<|message|>It is 21 C.<|return|>")
    r2 = client.responses.create(model="tiny", previous_response_id=final.id, tools=[FN],
                                 input=[{"type": "function_call_output",
                                         "call_id": call.call_id,
                                         "output": '{"temp_c": 21}'}])
    assert r2.output_text == "It is 21 C."
    want = chat.render([{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "reasoning": "Need weather.",
                         "tool_calls": [{"id": "c1", "type": "function",
                                         "function": {"name": "get_weather",
                                                      "arguments": '{"location": "Paris"}'}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": '{"temp_c": 21}'}],
                       tools=[WEATHER])
    assert r2.usage.input_tokens == len(want)


def test_input_items_and_store_false(server, client):
    force(server, "<|channel|>final<|message|>ok<|return|>")
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text",
                                                              "text": "Hi"}]},
             {"type": "message", "role": "assistant",
              "content": [{"type": "output_text", "text": "Hello."}]},
             {"role": "user", "content": "Again"}]
    r = client.responses.create(model="tiny", input=items, store=False)
    assert r.output_text == "ok"
    want = chat.render([{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Again"}])
    assert r.usage.input_tokens == len(want)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="tiny", input="x", previous_response_id=r.id)


def test_max_output_tokens_gives_incomplete(client):
    r = client.responses.create(model="tiny", input="Hi", max_output_tokens=4, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4


def test_structured_text_format(server, client):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                     "maximum": 9}}, "required": ["n"]}
    force(server, "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant")
    r = client.responses.create(model="tiny", input="x", max_output_tokens=100, text={
        "format": {"type": "json_schema", "name": "n", "schema": schema, "strict": True}})
    v = json.loads(r.output_text)
    assert isinstance(v["n"], int) and 1 <= v["n"] <= 9 and set(v) == {"n"}


@pytest.mark.parametrize("payload,param", [
    ({"input": "x", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
     "tools"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
    ({"input": "x", "frobnicate": 1}, "frobnicate"),
    ({"input": "x", "reasoning": {"effort": "max"}}, "reasoning.effort"),
    ({"input": "x", "reasoning": {"summary": "auto"}}, "reasoning.summary"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "include": ["reasoning.encrypted_content"]}, "include"),
    ({"input": [{"type": "image", "url": "x"}]}, "input"),
    ({"input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "s", "schema": {
        "type": "object", "dependentRequired": {"a": ["b"]}}}}}, "text.format"),
    ({"input": "x", "temperature": 5}, "temperature"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
])
def test_bad_requests_name_the_field(server, payload, param):
    r = httpx.post(server + "/v1/responses", json={"model": "tiny", **payload}, timeout=60)
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"], err
    if payload.get("tools"):
        assert payload["tools"][0]["type"] in err["message"]


def test_agents_sdk_runs_a_function_tool(server):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)     # no trace export: nothing leaves the machine
    calls = []

    @agents.function_tool
    def get_weather(location: str) -> str:
        """Current weather."""
        calls.append(location)
        # what the model says next, once the SDK sends the tool's answer back
        force(server, "<|channel|>final<|message|>It is 21 C in Paris.<|return|>")
        return json.dumps({"temp_c": 21})

    client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="x", max_retries=0)
    agent = agents.Agent(name="weather", instructions="Answer weather questions.",
                         tools=[get_weather],
                         model=agents.OpenAIResponsesModel(model="tiny", openai_client=client))
    force(server, CALL)
    res = asyncio.run(agents.Runner.run(agent, "Weather in Paris?"))
    assert calls == ["Paris"]
    assert res.final_output == "It is 21 C in Paris."
    # the second request carried the call and its output, rendered as Harmony renders them
    tool = {"type": "function", "function": {"name": "get_weather",
                                             "description": "Current weather.",
                                             "parameters": get_weather.params_json_schema}}
    want = chat.render([{"role": "developer", "content": "Answer weather questions."},
                        {"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "reasoning": "Need weather.",
                         "tool_calls": [{"id": "c", "type": "function", "function": {
                             "name": "get_weather", "arguments": '{"location": "Paris"}'}}]},
                        {"role": "tool", "tool_call_id": "c", "content": '{"temp_c": 21}'}],
                       tools=[tool])
    assert res.raw_responses[-1].usage.input_tokens == len(want)


def test_builtin_tool_seam(tiny_hf):
    """A registered built-in tool: the request may name its type, its section reaches the system
    message (rendered by chat.render), a call to its namespace goes to its runner (not to the
    caller), the runner's events and items are reported, and the conversation with the call and
    the runner's answer is rendered again before generation goes on."""
    from gptoss import Model, responses
    from gptoss.server import fit_context, sampling_args

    seen, finished = [], []

    class Echo(responses.BuiltinTool):
        tool_type, namespace = "echo_test", "python"

        def system_entry(self):
            return "python"

        def run(self, message, output_index):
            seen.append((message.recipient, message.content, output_index))
            item = {"type": "echo_call", "id": "ec_1", "input": message.content}
            yield {"type": "response.output_item.done", "output_index": output_index,
                   "item": item}
            return responses.BuiltinOutcome(items=[item], messages=[
                {"role": "assistant", "tool_calls": [{
                    "id": "ec_1", "type": "builtin", "recipient": message.recipient,
                    "arguments": message.content, "channel": message.channel}]},
                {"role": "tool", "tool_call_id": "ec_1", "content": "said: " + message.content}])

        def finish(self, response):
            finished.append(response["status"])

    responses.register_builtin("echo_test", lambda spec: Echo())
    try:
        model = Model.from_pretrained(tiny_hf)
        p = responses.prepare(
            {"input": "Say hi", "tools": [{"type": "echo_test"}], "max_output_tokens": 40,
             "temperature": 0}, model, responses.ResponseStore(), sampling_args, fit_context)
        assert p.prompt == chat.render([{"role": "user", "content": "Say hi"}],
                                       builtin_tools=["python"])
        call = model.tokenizer.encode("<|channel|>analysis to=python<|message|>hi<|call|>",
                                      allowed_special="all")
        prompts = []

        def spy(prompt, **kw):
            prompts.append(list(prompt))
            return model.generate(prompt, **kw)
        added = []
        events = list(responses.drive(spy, p.prompt, p.args, p.response, p.builtins, p.steer,
                                      call, p.render, added))
    finally:
        del responses.BUILTIN_TOOLS["echo_test"]
    assert seen == [("python", "hi", 0)] and finished == ["incomplete"]
    final = events[-1]["response"]
    assert final["output"][0] == {"type": "echo_call", "id": "ec_1", "input": "hi"}
    assert events[0] == {"type": "response.output_item.done", "output_index": 0,
                         "item": final["output"][0]}
    # the second generation's prompt: the conversation, the call and its answer, rendered
    conv = [{"role": "user", "content": "Say hi"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "builtin",
                                                  "recipient": "python", "arguments": "hi"}]},
            {"role": "tool", "tool_call_id": "c", "content": "said: hi"}]
    assert prompts[1] == chat.render(conv, builtin_tools=["python"])
    assert final["usage"]["input_tokens"] == len(p.prompt) + len(prompts[1])
    assert final["usage"]["output_tokens"] == 40
    assert added[:2] == [conv[1] | {"tool_calls": [dict(conv[1]["tool_calls"][0], id="ec_1",
                                                         channel="analysis")]},
                         dict(conv[2], tool_call_id="ec_1")]
