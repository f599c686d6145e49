"""The Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) on the server.

A request's `input` (a string, or items: messages, `function_call`, `function_call_output`,
`reasoning`), `instructions` and function `tools` become a chat conversation that chat.render
turns into Harmony; what the model writes back is split into output items as it is parsed:
an `analysis` message is a `reasoning` item, a `final` message (or a commentary preamble) a
`message` item, a message to `functions.NAME` a `function_call` item. Streaming sends OpenAI's
events in OpenAI's order (response.created, response.in_progress, then for each item
output_item.added, content_part.added, *.delta..., *.done, content_part.done,
output_item.done, and last response.completed or response.incomplete).

Built-in tools (run by the server, not the caller) plug in through `BUILTIN_TOOLS`: a
`BuiltinTool` names the Responses tool type it serves (e.g. "code_interpreter"), the Harmony
recipient namespace the model addresses (e.g. "python"), the system-message section that
describes it, and `run(message)` which executes one call and returns the output items to report
and the Harmony messages (the tool's answer) to append before generation goes on. `drive()`
hands every parsed message addressed to a recipient other than a user function to
`run_builtin()`, which finds the tool for that recipient; the call itself is not reported as
an item (the tool's items are), the call and the tool's answer are appended to the prompt and the
model goes on within the same response and `max_output_tokens`. The tools' sections go into the
system message's `# Tools` part. A request naming a tool type no registered tool serves gets a
400 naming it.
"""

import collections
import dataclasses
import json
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from . import chat as harmony
from .tokenizer import CALL, RETURN, START, get_tokenizer


class ResponsesError(ValueError):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


# ------------------------------------------------------------------------------ built-in tools
@dataclasses.dataclass
class BuiltinOutcome:
    items: List[Dict[str, Any]]                 # output items to report (e.g. a web_search_call)
    messages: List[harmony.HarmonyMessage]      # the tool's answer, appended to the prompt


class BuiltinTool:
    """What a server-side tool provides (see the module docstring). Subclass and register with
    `register_builtin(tool_type, factory)`; `factory(tool_spec)` builds one per request."""
    tool_type: str = ""
    namespace: str = ""

    def system_section(self) -> str:
        raise NotImplementedError

    def run(self, message: harmony.ParsedMessage) -> BuiltinOutcome:
        raise NotImplementedError


BUILTIN_TOOLS: Dict[str, Callable[[Dict[str, Any]], BuiltinTool]] = {}


def register_builtin(tool_type: str, factory: Callable[[Dict[str, Any]], BuiltinTool]) -> None:
    BUILTIN_TOOLS[tool_type] = factory


def run_builtin(message: harmony.ParsedMessage, tools: Sequence[BuiltinTool]
                ) -> Optional[BuiltinOutcome]:
    """The seam: a parsed message addressed to `message.recipient` (not functions.*) goes to
    the built-in tool of that namespace, if the request has one; None if none serves it."""
    ns = (message.recipient or "").split(".", 1)[0]
    for t in tools:
        if t.namespace == ns:
            return t.run(message)
    return None


# ------------------------------------------------------------------------------ request -> chat
FUNCTION_KEYS = {"type", "name", "description", "parameters", "strict"}
KNOWN_FIELDS = {"model", "input", "instructions", "tools", "tool_choice", "reasoning",
                "max_output_tokens", "temperature", "top_p", "stream", "store", "metadata",
                "previous_response_id", "text", "parallel_tool_calls", "user", "truncation",
                "include", "seed", "stream_options", "background", "service_tier",
                "top_logprobs", "max_tool_calls", "prompt", "conversation",
                "prompt_cache_key", "safety_identifier"}
# fields accepted only with these values (anything else is refused by name)
ONLY = {"background": (None, False), "service_tier": (None, "auto", "default"),
        "truncation": (None, "disabled"), "top_logprobs": (None, 0), "prompt": (None,),
        "conversation": (None,), "max_tool_calls": (None,)}


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if isinstance(p, dict) and p.get("type") in ("input_text", "output_text", "text",
                                                         "reasoning_text", "summary_text") \
                    and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                kind = p.get("type") if isinstance(p, dict) else type(p).__name__
                raise ResponsesError(f"{where}.content[{i}]: content of type {kind!r} is not "
                                     "supported (text only)", "input")
        return "".join(parts)
    raise ResponsesError(f"{where}.content: must be a string or a list of parts", "input")


def items_to_messages(items: Any, where: str = "input") -> List[Dict[str, Any]]:
    """Responses input items -> chat-completions messages (what chat.render takes)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ResponsesError("'input' must be a string or a list of items", "input")
    out: List[Dict[str, Any]] = []
    for i, it in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(it, dict):
            raise ResponsesError(f"{w}: must be an object", "input")
        t = it.get("type", "message" if "role" in it else None)
        if t == "message":
            role = it.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise ResponsesError(f"{w}.role = {role!r}: must be user, system, developer or "
                                     "assistant", "input")
            out.append({"role": role, "content": _text(it.get("content"), w)})
        elif t == "reasoning":
            text = _text(it.get("content"), w) or "".join(
                s.get("text", "") for s in it.get("summary") or [] if isinstance(s, dict))
            if it.get("encrypted_content"):
                raise ResponsesError(f"{w}.encrypted_content: encrypted reasoning is not "
                                     "supported; send the reasoning text as content", "input")
            if text:
                out.append({"role": "assistant", "reasoning": text, "content": None})
        elif t == "function_call":
            if not isinstance(it.get("name"), str) or not isinstance(it.get("call_id"), str):
                raise ResponsesError(f"{w}: a function_call needs 'name' and 'call_id'", "input")
            args = it.get("arguments", "")
            out.append({"role": "assistant", "content": None,
                        "tool_calls": [{"id": it["call_id"], "type": "function",
                                        "function": {"name": it["name"],
                                                     "arguments": args if isinstance(args, str)
                                                     else json.dumps(args)}}]})
        elif t == "function_call_output":
            if not isinstance(it.get("call_id"), str):
                raise ResponsesError(f"{w}: a function_call_output needs 'call_id'", "input")
            o = it.get("output", "")
            out.append({"role": "tool", "tool_call_id": it["call_id"],
                        "content": o if isinstance(o, str) else _text(o, w)})
        else:
            raise ResponsesError(f"{w}.type = {t!r}: input items must be message, reasoning, "
                                 "function_call or function_call_output", "input")
    return out


def output_to_messages(output: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A stored response's output items as chat messages (for previous_response_id)."""
    return items_to_messages([o for o in output if o.get("type") in
                              ("message", "reasoning", "function_call")], "output")


def check_tools(tools: Any):
    """-> (chat-style function tools, built-in tools); 400 for tool types nobody serves."""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise ResponsesError("'tools' must be a list", "tools")
    funcs, builtins, unserved = [], [], []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("type"), str):
            raise ResponsesError(f"tools[{i}]: must be an object with a 'type'", "tools")
        if t["type"] == "function":
            if not isinstance(t.get("name"), str) or not t["name"]:
                raise ResponsesError(f"tools[{i}].name: a function tool needs a name", "tools")
            extra = set(t) - FUNCTION_KEYS
            if extra:
                raise ResponsesError(f"tools[{i}]: unsupported field(s) {sorted(extra)}", "tools")
            funcs.append({"type": "function", "function": {
                k: t[k] for k in ("name", "description", "parameters", "strict") if k in t}})
        elif t["type"] in BUILTIN_TOOLS:
            builtins.append(BUILTIN_TOOLS[t["type"]](t))
        else:
            unserved.append(t["type"])
    if unserved:
        raise ResponsesError(f"tool type(s) {', '.join(map(repr, unserved))} are not supported "
                             "by this server (function tools are)", "tools")
    return funcs, builtins


def chat_tool_choice(tc: Any, funcs):
    if tc is None or tc in ("auto", "none", "required"):
        return tc
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("name"), str):
        if not any(f["function"]["name"] == tc["name"] for f in funcs):
            raise ResponsesError(f"tool_choice names function {tc['name']!r}, which is not "
                                 "among the tools", "tool_choice")
        return {"type": "function", "function": {"name": tc["name"]}}
    raise ResponsesError("tool_choice: must be 'none', 'auto', 'required' or "
                         "{'type': 'function', 'name': ...}", "tool_choice")


# ------------------------------------------------------------------------------ the store
class ResponseStore:
    """The last `capacity` stored responses (store: true), for previous_response_id and GET."""

    def __init__(self, capacity: int = 1000):
        self.capacity = capacity
        self._d: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, rid: str, entry: Dict[str, Any]) -> None:
        with self._lock:
            self._d[rid] = entry
            self._d.move_to_end(rid)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)

    def get(self, rid: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            return self._d.get(rid)

    def delete(self, rid: str) -> bool:
        with self._lock:
            return self._d.pop(rid, None) is not None


# ------------------------------------------------------------------------------ generation
def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Emitter:
    """Builds the output items and the event stream of one response."""

    def __init__(self, response: Dict[str, Any]):
        self.response = response
        self.output: List[Dict[str, Any]] = response["output"]
        self.item: Optional[Dict[str, Any]] = None
        self.text: List[str] = []

    def open(self, item: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        self.item = item
        self.text = []
        if item["type"] == "_builtin":          # a built-in tool call: its tool reports it
            return
        self.output.append(item)
        idx = len(self.output) - 1
        yield {"type": "response.output_item.added", "output_index": idx,
               "item": _in_progress(item)}
        if item["type"] in ("message", "reasoning"):
            yield {"type": "response.content_part.added", "item_id": item["id"],
                   "output_index": idx, "content_index": 0, "part": _part(item["type"], "")}

    def delta(self, text: str) -> Iterator[Dict[str, Any]]:
        if not text or self.item is None or self.item["type"] == "_builtin":
            return
        self.text.append(text)
        idx = len(self.output) - 1
        t = self.item["type"]
        base = {"item_id": self.item["id"], "output_index": idx}
        if t == "message":
            yield {"type": "response.output_text.delta", **base, "content_index": 0,
                   "delta": text, "logprobs": []}
        elif t == "reasoning":
            yield {"type": "response.reasoning_text.delta", **base, "content_index": 0,
                   "delta": text}
        elif t == "function_call":
            yield {"type": "response.function_call_arguments.delta", **base, "delta": text}

    def close(self, status: str = "completed") -> Iterator[Dict[str, Any]]:
        item, self.item = self.item, None
        if item is None or item["type"] == "_builtin":
            return
        text = "".join(self.text)
        idx = len(self.output) - 1
        base = {"item_id": item["id"], "output_index": idx}
        t = item["type"]
        if t == "message":
            part = _part("message", text)
            item["content"] = [part]
            yield {"type": "response.output_text.done", **base, "content_index": 0, "text": text,
                   "logprobs": []}
            yield {"type": "response.content_part.done", **base, "content_index": 0,
                   "part": part}
        elif t == "reasoning":
            part = _part("reasoning", text)
            item["content"] = [part]
            yield {"type": "response.reasoning_text.done", **base, "content_index": 0,
                   "text": text}
            yield {"type": "response.content_part.done", **base, "content_index": 0,
                   "part": part}
        elif t == "function_call":
            item["arguments"] = text
            yield {"type": "response.function_call_arguments.done", **base, "name": item["name"],
                   "arguments": text}
        item["status"] = status
        yield {"type": "response.output_item.done", "output_index": idx, "item": item}


def _part(kind: str, text: str) -> Dict[str, Any]:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _in_progress(item: Dict[str, Any]) -> Dict[str, Any]:
    d = dict(item, status="in_progress")
    if d["type"] in ("message", "reasoning"):
        d["content"] = []
    if d["type"] == "function_call":
        d["arguments"] = ""
    return d


def drive(generate, prompt: List[int], gen_args: Dict[str, Any], response: Dict[str, Any],
          builtins: Sequence[BuiltinTool] = (), steer=None, forced=None
          ) -> Iterator[Dict[str, Any]]:
    """The events of one response (without sequence numbers), the last one
    response.completed / response.incomplete carrying the finished response."""
    em = _Emitter(response)
    budget = gen_args["max_tokens"]
    n_out = n_reasoning = 0
    n_in = 0
    n_cached = 0
    incomplete = None
    first = True
    while True:
        extra = {"steer": steer} if steer is not None else {}
        gen = generate(prompt, max_new_tokens=budget, temperature=gen_args["temperature"],
                       top_p=gen_args["top_p"], seed=gen_args.get("seed"),
                       stop_tokens=[RETURN, CALL], forced_tokens=(forced if first else None),
                       **extra)
        first = False
        n_in += len(prompt)
        parser = harmony.HarmonyParser()
        n_msg = 0
        last_call = None
        try:
            def feed(tok):
                nonlocal n_msg, n_reasoning, last_call
                n_msg += 1
                for e in parser.feed(tok):
                    m = e.message
                    if e.kind == "start":
                        yield from em.open(_item_for(m, builtins))
                    elif e.kind == "delta":
                        if em.item is None:        # content of a header that never finished
                            yield from em.open(_item_for(m, builtins))
                        yield from em.delta(e.text)
                    elif e.kind == "stray":
                        if em.item is None or em.item["type"] != "message":
                            yield from em.close()
                            yield from em.open({"type": "message", "id": _id("msg"),
                                                "role": "assistant", "content": []})
                        yield from em.delta(e.text)
                    elif e.kind == "end":
                        if m.channel == "analysis":
                            n_reasoning += n_msg
                        n_msg = 0
                        if em.item is None and m.content:
                            yield from em.open(_item_for(m, builtins))
                            yield from em.delta(m.content)
                        yield from em.close("completed" if m.end else "incomplete")
                        if m.end == "call" and m.recipient and \
                                not m.recipient.startswith("functions."):
                            last_call = m
            for t in gen:
                yield from feed(t.id)
            if gen.stop_reason == "stop_token" and gen.stop_token is not None:
                yield from feed(gen.stop_token)
            for e in parser.close():
                if e.kind == "delta":
                    yield from em.delta(e.text)
                elif e.kind == "end":
                    if e.message.channel == "analysis":
                        n_reasoning += n_msg
            yield from em.close("incomplete")
        finally:
            gen.close()
        used = len(gen.tokens) + (1 if gen.stop_reason == "stop_token" else 0)
        n_cached += int(getattr(gen, "cached_tokens", 0))   # known once the prompt was fed
        n_out += used
        budget -= used
        if gen.stop_reason in ("max_new_tokens", "context_limit"):
            incomplete = "max_output_tokens"
            break
        if last_call is None:
            break
        outcome = run_builtin(last_call, builtins)
        if outcome is None or budget <= 0:
            break
        for item in outcome.items:
            yield from em.open(item)
            yield from em.close()
        # the call and the tool's answer join the conversation; the model goes on
        prompt = prompt + list(gen.tokens) + [CALL] + harmony.encode_messages(
            outcome.messages) + [START] + get_tokenizer().encode("assistant")
    response["usage"] = {"input_tokens": n_in, "input_tokens_details": {"cached_tokens": n_cached},
                         "output_tokens": n_out,
                         "output_tokens_details": {"reasoning_tokens": n_reasoning},
                         "total_tokens": n_in + n_out}
    if incomplete:
        response["status"] = "incomplete"
        response["incomplete_details"] = {"reason": incomplete}
        yield {"type": "response.incomplete", "response": response}
    else:
        response["status"] = "completed"
        response["completed_at"] = int(time.time())
        yield {"type": "response.completed", "response": response}


def _item_for(m: harmony.ParsedMessage, builtins: Sequence[BuiltinTool] = ()
              ) -> Dict[str, Any]:
    rec = m.recipient if m.recipient and m.recipient != "assistant" else None
    if rec and any(t.namespace == rec.split(".", 1)[0] for t in builtins):
        return {"type": "_builtin", "id": ""}
    if rec and rec.startswith("functions."):
        return {"type": "function_call", "id": _id("fc"), "call_id": _id("call"),
                "name": rec[len("functions."):], "arguments": ""}
    if m.channel == "analysis" and not rec:
        return {"type": "reasoning", "id": _id("rs"), "summary": [], "content": []}
    # the final answer, a commentary preamble, or (with no built-in tool to run it) a message to
    # another recipient: kept as text, never dropped
    return {"type": "message", "id": _id("msg"), "role": "assistant", "content": []}


# ------------------------------------------------------------------------------ the endpoint
def prepare(body: Dict[str, Any], model, store: ResponseStore, sampling_args, fit_context):
    """Validate a request; -> (prompt tokens, generation args, response skeleton, context for
    storing, steer, builtins). Raises ResponsesError naming the field."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise ResponsesError(f"unsupported field(s): {', '.join(unknown)}", unknown[0])
    for k, allowed in ONLY.items():
        if body.get(k) not in allowed:
            raise ResponsesError(f"'{k}' = {body.get(k)!r} is not supported (accepted: "
                                 f"{', '.join(repr(a) for a in allowed if a is not None)} "
                                 "or absent)".replace("( or", "(absent only; or"), k)
    include = body.get("include") or []
    if not isinstance(include, list) or include:
        raise ResponsesError(f"'include' = {include!r}: no extra output is available "
                             "(reasoning text is always in the output)", "include")
    if "input" not in body:
        raise ResponsesError("'input' is required", "input")
    msgs = items_to_messages(body["input"])
    if not msgs and not body.get("previous_response_id"):
        raise ResponsesError("'input' is empty", "input")
    prev_id = body.get("previous_response_id")
    history: List[Dict[str, Any]] = []
    if prev_id is not None:
        prev = store.get(prev_id) if isinstance(prev_id, str) else None
        if prev is None:
            raise ResponsesError(f"previous_response_id {prev_id!r} is not found (responses "
                                 "are kept in memory, the last "
                                 f"{store.capacity} stored)", "previous_response_id",
                                 status=404 if isinstance(prev_id, str) else 400)
        history = prev["conversation"]
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ResponsesError("'instructions' must be a string", "instructions")
    funcs, builtins = check_tools(body.get("tools"))
    tool_choice = chat_tool_choice(body.get("tool_choice"), funcs)
    reasoning = body.get("reasoning") or {}
    if not isinstance(reasoning, dict):
        raise ResponsesError("'reasoning' must be an object", "reasoning")
    extra = set(reasoning) - {"effort", "summary", "generate_summary"}
    if extra:
        raise ResponsesError(f"reasoning: unsupported field(s) {sorted(extra)}", "reasoning")
    if reasoning.get("summary") or reasoning.get("generate_summary"):
        raise ResponsesError("reasoning.summary is not supported (the reasoning text itself is "
                             "returned in reasoning items)", "reasoning.summary")
    effort = reasoning.get("effort") or "medium"
    if effort not in harmony.REASONING_EFFORTS:
        raise ResponsesError(f"reasoning.effort = {effort!r}: must be low, medium or high",
                             "reasoning.effort")
    text_cfg = body.get("text") or {}
    if not isinstance(text_cfg, dict) or set(text_cfg) - {"format", "verbosity"}:
        raise ResponsesError("'text' must be an object with 'format'", "text")
    if text_cfg.get("verbosity") not in (None, "medium"):
        raise ResponsesError("text.verbosity is not supported", "text.verbosity")
    for k in ("store", "stream", "parallel_tool_calls"):
        if body.get(k) is not None and not isinstance(body[k], bool):
            raise ResponsesError(f"'{k}' must be a boolean", k)
    meta = body.get("metadata")
    if meta is not None and not (isinstance(meta, dict) and len(meta) <= 16 and all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items())):
        raise ResponsesError("'metadata' must map up to 16 string keys to strings", "metadata")
    for k in ("user", "safety_identifier", "prompt_cache_key"):
        if body.get(k) is not None and not isinstance(body[k], str):
            raise ResponsesError(f"'{k}' must be a string", k)
    if body.get("stream_options") is not None and not body.get("stream"):
        raise ResponsesError("'stream_options' needs stream: true", "stream_options")
    so = body.get("stream_options") or {}
    if not isinstance(so, dict) or set(so) - {"include_obfuscation"} or so.get(
            "include_obfuscation"):
        raise ResponsesError("stream_options: only include_obfuscation: false is supported",
                             "stream_options")
    mt = body.get("max_output_tokens")
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or
                           not 1 <= mt <= model.max_context):
        raise ResponsesError(f"'max_output_tokens' must be an integer between 1 and "
                             f"{model.max_context}", "max_output_tokens")
    args = sampling_args({"max_tokens": mt if mt is not None else 4096,
                          "temperature": body.get("temperature"), "top_p": body.get("top_p"),
                          "seed": body.get("seed")}, model)
    conversation = history + msgs
    chat_msgs = ([{"role": "developer", "content": instructions}] if instructions else []) + \
        conversation
    try:
        hm = harmony.to_harmony(chat_msgs, tools=None if tool_choice == "none" else funcs,
                                reasoning_effort=effort, response_format=text_cfg.get("format"))
        if builtins:      # their sections go in the system message, before the channels line
            sections = "\n\n".join(t.system_section() for t in builtins)
            hm[0].content = hm[0].content.replace(
                "# Valid channels", f"# Tools\n\n{sections}\n\n# Valid channels", 1)
        prompt = harmony.encode_messages(hm) + [START] + get_tokenizer().encode("assistant")
    except harmony.ChatFormatError as e:
        raise ResponsesError(str(e), "input") from None
    try:
        fit_context(len(prompt), args, model.max_context, "input")
    except ValueError as e:
        raise ResponsesError(str(e), "input", code=getattr(e, "code", None)) from None
    from .chat_events import forced_prefix, make_steer
    try:
        forced = forced_prefix(tool_choice, funcs)
        steer = make_steer(text_cfg.get("format"), funcs, tool_choice, None,
                           where="text.format")
    except harmony.ChatFormatError as e:
        raise ResponsesError(str(e), "tool_choice") from None
    except ValueError as e:
        raise ResponsesError(str(e), "text.format") from None
    except ImportError as e:
        raise ResponsesError(str(e), "text.format", status=501) from None
    response = {
        "id": _id("resp"), "object": "response", "created_at": int(time.time()),
        "status": "in_progress", "error": None, "incomplete_details": None,
        "instructions": instructions, "max_output_tokens": mt,
        "model": body.get("model") or "gpt-oss", "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": prev_id,
        "reasoning": {"effort": effort, "summary": None},
        "store": body.get("store", True), "temperature": args["temperature"],
        "text": {"format": text_cfg.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "top_p": args["top_p"], "truncation": "disabled", "usage": None,
        "user": body.get("user"), "metadata": meta or {}}
    return prompt, args, response, conversation, steer, builtins, forced


def install(app, srv, sampling_args, fit_context, error_response):
    """Add the Responses routes to the FastAPI app of server.create_app."""
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    store = ResponseStore()
    srv.responses = store

    @app.post("/v1/responses")
    async def responses(request: Request):
        try:
            raw = await request.body()
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise ResponsesError(f"request body is not valid JSON: {e}")
            if not isinstance(body, dict):
                raise ResponsesError("request body must be a JSON object")
            prompt, args, response, conversation, steer, builtins, forced = prepare(
                body, srv.model, store, sampling_args, fit_context)
        except ResponsesError as e:
            return error_response(str(e), e.param, e.code, e.status)
        except ValueError as e:           # server.RequestError from sampling_args
            return error_response(str(e), getattr(e, "param", None), getattr(e, "code", None),
                                  getattr(e, "status", 400))
        response["model"] = srv.model_name
        hook = srv.take_forced()
        forced = hook or forced or None

        def make_iter():
            return drive(srv.generate, prompt, args, response, builtins, steer, forced)

        def finish(resp):
            if resp.get("store"):
                store.put(resp["id"], {"response": resp,
                                       "conversation": conversation +
                                       output_to_messages(resp["output"])})

        if body.get("stream"):
            async def sse():
                seq = 0

                def ev(d):
                    nonlocal seq
                    d["sequence_number"] = seq
                    seq += 1
                    return f"event: {d['type']}\ndata: {json.dumps(d)}\n\n"
                skeleton = json.loads(json.dumps(response))
                yield ev({"type": "response.created", "response": skeleton})
                yield ev({"type": "response.in_progress", "response": skeleton})
                try:
                    async for d in srv._events(request, make_iter):
                        if d["type"] in ("response.completed", "response.incomplete"):
                            finish(d["response"])
                        yield ev(d)
                except Exception as e:   # noqa: BLE001 - the stream ends with OpenAI's failure
                    response["status"] = "failed"
                    response["error"] = {"code": "server_error", "message": str(e)}
                    yield ev({"type": "response.failed", "response": response})
            return StreamingResponse(sse(), media_type="text/event-stream")

        final = None
        async for d in srv._events(request, make_iter):
            if d["type"] in ("response.completed", "response.incomplete"):
                final = d["response"]
        if final is None:
            return error_response("client disconnected", None, None, 499)
        finish(final)
        return final

    @app.delete("/v1/responses/{rid}")
    async def delete_response(rid: str):
        if not store.delete(rid):
            return error_response(f"response {rid!r} is not found (not stored, or evicted)",
                                  "response_id", None, 404)
        return {"id": rid, "object": "response.deleted", "deleted": True}

    @app.get("/v1/responses/{rid}")
    async def get_response(rid: str):
        e = store.get(rid)
        if e is None:
            return error_response(f"response {rid!r} is not found (not stored, or evicted)",
                                  "response_id", None, 404)
        return e["response"]
