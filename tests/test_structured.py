"""Structured outputs on random:tiny, whose unconstrained output is noise: every constrained
answer must parse and validate against its schema (jsonschema is the judge)."""
import json

import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from gptoss import Model  # noqa: E402
from gptoss.structured import SchemaError, grammar_for_format  # noqa: E402

# the reasoning is forced (the random model would reason until max_tokens); from the answer's
# header on, every token is the random model's, under the mask
REASONING = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant"

SCHEMAS = [
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 70},
                                      "b": {"type": "string", "maxLength": 6}},
     "required": ["a", "b"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "ok": {"type": "boolean"}},
     "required": ["color", "ok"]},
    {"type": "object", "properties": {
        "user": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 5},
            "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"]},
        "tags": {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1,
                 "maxItems": 3}},
     "required": ["user", "tags"]},
    {"type": "object", "properties": {
        "score": {"type": "number", "minimum": -2, "maximum": 3.5, "multipleOf": 0.25},
        "level": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 15}},
     "required": ["score", "level"]},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
     "minItems": 2, "maxItems": 4},
    {"type": "object", "properties": {
        "points": {"type": "array", "maxItems": 2, "items": {
            "type": "object", "properties": {"x": {"type": "integer", "minimum": 0,
                                                   "maximum": 9},
                                             "y": {"type": "integer", "minimum": 0,
                                                   "maximum": 9}},
            "required": ["x", "y"]}},
        "label": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]}},
     "required": ["points", "label"]},
    {"type": "object", "properties": {"kind": {"const": "circle"},
                                      "r": {"type": "integer", "minimum": 1, "maximum": 9}},
     "required": ["kind", "r"]},
]


@pytest.fixture(scope="module")
def model(tiny_hf):
    return Model.from_pretrained(tiny_hf)


def fmt(schema):
    return {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}


@pytest.mark.parametrize("k", range(len(SCHEMAS)))
def test_model_chat_answers_follow_the_schema(model, k):
    schema = SCHEMAS[k]
    pre = model.tokenizer.encode(REASONING, allowed_special="all")
    for seed in range(2):
        r = model.chat([{"role": "user", "content": "Answer in JSON."}], response_format=fmt(schema),
                       forced_tokens=pre, seed=seed + 10 * k, max_tokens=300, stream=False,
                       reasoning_effort="low")
        assert r.stop_reason == "stop", (r.stop_reason, r.content)
        jsonschema.validate(json.loads(r.content), schema)
        assert r.reasoning == "Think."


def test_json_object_and_free_header(model):
    """json_object; the answer's header is the model's own choice among the allowed ones."""
    pre = model.tokenizer.encode(REASONING, allowed_special="all")
    r = model.chat([{"role": "user", "content": "x"}], response_format={"type": "json_object"},
                   forced_tokens=pre, seed=3, temperature=0, max_tokens=300, stream=False)
    if r.stop_reason == "stop":
        assert isinstance(json.loads(r.content), dict)
    else:                # an object whose free string values ran past max_tokens
        assert r.stop_reason == "length" and r.content.startswith("{")


def test_unconstrained_answer_is_noise(model):
    """The control: the same request without the format does not give JSON."""
    pre = model.tokenizer.encode(REASONING + "<|channel|>final<|message|>", allowed_special="all")
    r = model.chat([{"role": "user", "content": "x"}], forced_tokens=pre, seed=1,
                   max_tokens=20, stream=False)
    with pytest.raises(ValueError):
        jsonschema.validate(json.loads(r.content), SCHEMAS[0])


def test_strict_tool_arguments_follow_the_schema(model):
    params = SCHEMAS[2]
    tool = {"type": "function", "function": {"name": "save", "parameters": params,
                                             "strict": True}}
    for seed in range(3):
        r = model.chat([{"role": "user", "content": "x"}], tools=[tool],
                       tool_choice={"type": "function", "function": {"name": "save"}},
                       seed=seed, max_tokens=300, stream=False)
        assert r.stop_reason == "tool_calls", r
        (call,) = r.tool_calls
        jsonschema.validate(json.loads(call.arguments), params)


def test_same_seed_same_constrained_answer(model):
    pre = model.tokenizer.encode(REASONING, allowed_special="all")
    kw = dict(response_format=fmt(SCHEMAS[1]), forced_tokens=pre, seed=7, max_tokens=200,
              stream=False)
    a = model.chat([{"role": "user", "content": "x"}], **kw)
    b = model.chat([{"role": "user", "content": "x"}], **kw)
    assert a.content == b.content


@pytest.mark.parametrize("bad,word", [
    ({"type": "json_schema", "json_schema": {"schema": {
        "type": "object", "dependentRequired": {"a": ["b"]}}}}, "dependentRequired"),
    ({"type": "json_schema", "json_schema": {"schema": {"$ref": "#/nowhere"}}}, "nowhere"),
    ({"type": "yaml"}, "yaml"),
    ({"type": "json_schema", "json_schema": {"schema": "not a schema"}}, "schema"),
])
def test_unsupported_schemas_are_named(bad, word):
    with pytest.raises(SchemaError) as e:
        grammar_for_format(bad, "response_format")
    assert word in str(e.value) and "response_format" in str(e.value)


def test_missing_extra_is_named(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(ImportError) as e:
        grammar_for_format({"type": "json_object"}, "response_format")
    assert "gptoss[structured]" in str(e.value)


def test_a_constraint_that_gives_up_is_an_error_not_an_answer(model):
    """Tokens the grammar forbids (forced here) end the constraint; the chat then raises
    SteeringError instead of returning the text as if it followed the schema."""
    from gptoss.steering import SteeringError
    pre = model.tokenizer.encode(REASONING + "<|channel|>final<|message|>not json",
                                 allowed_special="all")
    with pytest.raises(SteeringError, match="constraints could not be applied"):
        model.chat([{"role": "user", "content": "x"}], response_format=fmt(SCHEMAS[0]),
                   forced_tokens=pre, seed=1, max_tokens=40, stream=False)
