"""The Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) on the server.

A request's `input` (a string, or items: messages, `function_call`, `function_call_output`,
`reasoning`), `instructions` and function `tools` become a chat conversation that chat.render
turns into Harmony; what the model writes back is split into output items as it is parsed:
an `analysis` message is a `reasoning` item, a `final` message (or a commentary preamble) a
`message` item, a message to `functions.NAME` a `function_call` item. Streaming sends OpenAI's
events in OpenAI's order (response.created, response.in_progress, then for each item
output_item.added, content_part.added, *.delta..., *.done, content_part.done,
output_item.done, and last response.completed or response.incomplete).

Built-in tools (run by the server, not the caller) plug in through a registry of factories,
`tool type -> factory(tool_spec) -> BuiltinTool`: `BUILTIN_TOOLS` (filled by
`register_builtin`) and the server's own (responses_tools.ToolHost: `code_interpreter`,
`web_search` / `browser_search`). A `BuiltinTool` names the Responses tool type it serves, the
Harmony recipient namespace the model addresses (`python`, `browser`), its entry for
`chat.render`'s `builtin_tools` (so its system-message section is rendered by chat.py, the one
rendering path, as openai-harmony renders it), and `run(message, output_index)`: a generator
that yields the tool's streaming events and returns a `BuiltinOutcome` (the output items and
the chat messages, call and answer, that join the conversation). `drive()` hands every parsed
message addressed to a recipient other than a user function to `run_builtin()`; the call
itself is not reported as an item (the tool's items are); the conversation so far, the call and
the tool's answer included, is rendered again and the model goes on within the same response
and `max_output_tokens`. A request naming a tool type nobody serves gets a 400 naming it.
"""

import collections
import dataclasses
import json
import threading
import time
import uuid
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional, Sequence

from . import chat as harmony
from .tokenizer import CALL, RETURN


class ResponsesError(ValueError):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


# ------------------------------------------------------------------------------ built-in tools
@dataclasses.dataclass
class BuiltinOutcome:
    items: List[Dict[str, Any]]          # output items to report (e.g. a web_search_call)
    messages: List[Dict[str, Any]]       # chat messages (chat.render's form): the call, the answer


class BuiltinTool:
    """What a server-side tool provides (see the module docstring). Subclass and register with
    `register_builtin(tool_type, factory)`; `factory(tool_spec)` builds one per request."""
    tool_type: str = ""
    namespace: str = ""

    def system_entry(self) -> Any:
        """This tool's entry of `chat.render(..., builtin_tools=...)`."""
        raise NotImplementedError

    def run(self, message: harmony.ParsedMessage, output_index: int
            ) -> Generator[Dict[str, Any], None, BuiltinOutcome]:
        """Run one call: yield its events (its items at `output_index` on), return the outcome."""
        raise NotImplementedError

    def finish(self, response: Dict[str, Any]) -> None:
        """The response is over (completed, incomplete, failed or abandoned)."""


BUILTIN_TOOLS: Dict[str, Callable[[Dict[str, Any]], BuiltinTool]] = {}


def register_builtin(tool_type: str, factory: Callable[[Dict[str, Any]], BuiltinTool]) -> None:
    BUILTIN_TOOLS[tool_type] = factory


def run_builtin(message: harmony.ParsedMessage, tools: Sequence[BuiltinTool]
                ) -> Optional[BuiltinTool]:
    """The seam: the built-in tool of the namespace `message.recipient` (not functions.*)
    addresses, if the request has one; None if none serves it."""
    ns = (message.recipient or "").split(".", 1)[0]
    for t in tools:
        if t.namespace == ns:
            return t
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
        elif t in ("code_interpreter_call", "web_search_call"):
            raise ResponsesError(f"{w}.type = {t!r}: built-in tool calls cannot be sent back as "
                                 "input (the item does not hold everything the model was "
                                 "shown); continue the conversation with previous_response_id",
                                 "input")
        else:
            raise ResponsesError(f"{w}.type = {t!r}: input items must be message, reasoning, "
                                 "function_call or function_call_output", "input")
    return out


def output_to_messages(output: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A stored response's output items as chat messages (for previous_response_id)."""
    return items_to_messages([o for o in output if o.get("type") in
                              ("message", "reasoning", "function_call")], "output")


def check_tools(tools: Any, served: Optional[Dict[str, Callable]] = None,
                off: Optional[Dict[str, str]] = None):
    """-> (chat-style function tools, built-in tools); 400 for tool types nobody serves.
    served: this server's own factories (tool type -> factory(spec)), besides BUILTIN_TOOLS;
    off: tool types this server has but was started without (-> why, for the 400)."""
    if tools is None:
        return [], []
    if not isinstance(tools, list):
        raise ResponsesError("'tools' must be a list", "tools")
    registry = {**BUILTIN_TOOLS, **(served or {})}
    funcs, builtins, unserved, disabled = [], [], [], []
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
        elif t["type"] in registry:
            try:
                tool = registry[t["type"]](t)
            except ValueError as e:          # a field of the tool's spec it cannot honour
                raise ResponsesError(f"tools[{i}] ({t['type']}): {e}", "tools") from None
            # two types may serve one namespace (web_search and browser_search): one tool
            if not any(b.namespace == tool.namespace for b in builtins):
                builtins.append(tool)
        elif off and t["type"] in off:
            disabled.append(f"{t['type']!r} ({off[t['type']]})")
        else:
            unserved.append(t["type"])
    if disabled:
        raise ResponsesError(f"tool type(s) {', '.join(disabled)} are off on this server",
                             "tools")
    if unserved:
        raise ResponsesError(f"tool type(s) {', '.join(map(repr, unserved))} are not supported "
                             "by this server (function tools are"
                             f"{', and ' + ', '.join(sorted(registry)) if registry else ''})",
                             "tools")
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

    def __init__(self, response: Dict[str, Any], annotate=None):
        self.response = response
        self.annotate = annotate        # text -> url_citation annotations (with a browser)
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
            for k, a in enumerate(self.annotate(text) if self.annotate else []):
                part["annotations"].append(a)
                yield {"type": "response.output_text.annotation.added", **base,
                       "content_index": 0, "annotation_index": k, "annotation": a}
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
          builtins: Sequence[BuiltinTool] = (), steer=None, forced=None,
          render: Optional[Callable[[List[Dict[str, Any]]], List[int]]] = None,
          added: Optional[List[Dict[str, Any]]] = None) -> Iterator[Dict[str, Any]]:
    """The events of one response (without sequence numbers), the last one
    response.completed / response.incomplete carrying the finished response.

    forced: the first generation's forced tokens (a list of ids), or one list per generation
    (a list of lists: the test hook for runs with built-in tool calls). render(added): the
    prompt of the conversation with `added` (chat messages) after it; needed with builtins.
    added: filled with the chat messages this response adds to the conversation (reasoning,
    messages, function calls, built-in calls and their answers), in order."""
    if added is None:
        added = []
    if forced and all(isinstance(f, (list, tuple)) for f in forced):
        rounds = [list(f) for f in forced]
    else:
        rounds = [forced] if forced else []
    annotate = None
    for t in builtins:
        if hasattr(t, "annotations"):
            annotate = t.annotations
    em = _Emitter(response, annotate)
    budget = gen_args["max_tokens"]
    n_out = n_reasoning = 0
    n_in = n_cached = 0
    incomplete = None
    flushed = 0                     # output items already turned into chat messages in `added`
    rnd = 0
    try:
        while True:
            extra = {"steer": steer} if steer is not None else {}
            gen = generate(prompt, max_new_tokens=budget, temperature=gen_args["temperature"],
                           top_p=gen_args["top_p"], seed=gen_args.get("seed"),
                           stop_tokens=[RETURN, CALL],
                           forced_tokens=(rounds[rnd] if rnd < len(rounds) else None), **extra)
            rnd += 1
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
            tool = run_builtin(last_call, builtins)
            if tool is None or budget <= 0 or render is None:
                break
            added += output_to_messages(em.output[flushed:])
            outcome = yield from tool.run(last_call, len(em.output))
            em.output.extend(outcome.items)
            flushed = len(em.output)
            added += outcome.messages
            # the conversation so far, the call and the tool's answer included, rendered again
            # (as openai-harmony renders it); the model goes on
            prompt = render(added)
            if gen_args.get("max_context"):
                budget = min(budget, gen_args["max_context"] - len(prompt))
                if budget <= 0:
                    incomplete = "max_output_tokens"
                    break
        added += output_to_messages(em.output[flushed:])
        from .steering import SteeringError, steering_failure
        why = steering_failure(steer)
        if why:
            raise SteeringError(f"the request's output constraints could not be applied: {why}")
        response["usage"] = {"input_tokens": n_in,
                             "input_tokens_details": {"cached_tokens": n_cached},
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
    finally:
        for t in builtins:
            t.finish(response)


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
@dataclasses.dataclass
class Prepared:
    """A validated request: what `drive` needs, and what storing the response needs."""
    prompt: List[int]
    args: Dict[str, Any]
    response: Dict[str, Any]
    conversation: List[Dict[str, Any]]       # the chat messages before this response's output
    steer: Any
    builtins: List[BuiltinTool]
    forced: Optional[List[int]]
    render: Callable[[List[Dict[str, Any]]], List[int]]


def prepare(body: Dict[str, Any], model, store: ResponseStore, sampling_args, fit_context,
            served: Optional[Dict[str, Callable]] = None,
            off: Optional[Dict[str, str]] = None) -> Prepared:
    """Validate a request; -> Prepared. Raises ResponsesError naming the field. served, off:
    the server's own built-in tool factories, and the tool types it has switched off."""
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise ResponsesError(f"unsupported field(s): {', '.join(unknown)}", unknown[0])
    for k, allowed in ONLY.items():
        if body.get(k) not in allowed:
            raise ResponsesError(f"'{k}' = {body.get(k)!r} is not supported (accepted: "
                                 f"{', '.join(repr(a) for a in allowed if a is not None)} "
                                 "or absent)".replace("( or", "(absent only; or"), k)
    include = body.get("include") or []
    # what these ask for is always in the output; anything else is not available
    always = ("code_interpreter_call.outputs", "web_search_call.action.sources")
    if not isinstance(include, list) or any(i not in always for i in include):
        raise ResponsesError(f"'include' = {include!r}: no extra output is available "
                             "(reasoning text, code_interpreter_call outputs and web_search_call "
                             "sources are always in the output)", "include")
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
    funcs, builtins = check_tools(body.get("tools"), served, off)
    tool_choice = chat_tool_choice(body.get("tool_choice"), funcs)
    if tool_choice == "none":        # no tool at all: the built-in ones are not offered either
        builtins = []
    if tool_choice == "required" and builtins and not funcs:
        raise ResponsesError("tool_choice 'required' forces a function call, and there are no "
                             "function tools (a built-in tool's call cannot be forced; use "
                             "'auto')", "tool_choice")
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
    use_funcs = None if tool_choice == "none" else funcs
    entries = [t.system_entry() for t in builtins]

    def render(added: List[Dict[str, Any]]) -> List[int]:
        # one rendering path: chat.render puts the built-in tools' sections in the system
        # message as openai-harmony does
        return harmony.render(chat_msgs + list(added), tools=use_funcs, reasoning_effort=effort,
                              builtin_tools=entries, response_format=text_cfg.get("format"))
    try:
        prompt = render([])
    except harmony.ChatFormatError as e:
        raise ResponsesError(str(e), "input") from None
    try:
        fit_context(len(prompt), args, model.max_context, "input")
    except ValueError as e:
        raise ResponsesError(str(e), "input", code=getattr(e, "code", None)) from None
    args["max_context"] = model.max_context
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
    return Prepared(prompt, args, response, conversation, steer, builtins, forced, render)


def install(app, srv, sampling_args, fit_context, error_response, tool_host=None):
    """Add the Responses routes to the FastAPI app of server.create_app. tool_host: a
    responses_tools.ToolHost (the built-in tools this server offers), or None for none."""
    from fastapi import Request
    from fastapi.responses import StreamingResponse

    store = ResponseStore()
    srv.responses = store
    srv.tool_host = tool_host
    forced_rounds: List[List[int]] = []
    seen_prompts: List[List[int]] = []

    def generate(prompt, **kw):
        # srv.generate looked up per call (serve_ops wraps it after this install)
        if srv.enable_test_hooks:
            seen_prompts.append(list(prompt))      # a test hook: GET /v1/_test/prompts
        return srv.generate(prompt, **kw)

    if srv.enable_test_hooks:
        @app.post("/v1/_test/force_rounds")
        async def force_rounds(request: Request):
            """Test hook: the next response's generations start with these (Harmony texts, one
            per generation: before and after each built-in tool call)."""
            try:
                body = json.loads(await request.body())
                rounds = [srv.model.tokenizer.encode(t, allowed_special="all")
                          for t in body["rounds"]]
            except (ValueError, KeyError, TypeError) as e:
                return error_response(f"bad force_rounds body: {e}")
            forced_rounds[:] = rounds
            return {"rounds": [len(r) for r in rounds]}

        @app.get("/v1/_test/prompts")
        async def prompts():
            """Test hook: the prompts of the generations since the last call."""
            out = list(seen_prompts)
            seen_prompts.clear()
            return {"prompts": out}

    @app.post("/v1/responses")
    async def responses(request: Request):
        try:
            from .openai_fields import json_object
            body = json_object(await request.body(), ResponsesError)
            served, off = (tool_host.for_request(body.get("previous_response_id"))
                           if tool_host is not None else (None, None))
            p = prepare(body, srv.model, store, sampling_args, fit_context, served, off)
        except ResponsesError as e:
            return error_response(str(e), e.param, e.code, e.status)
        except ValueError as e:           # server.RequestError from sampling_args
            return error_response(str(e), getattr(e, "param", None), getattr(e, "code", None),
                                  getattr(e, "status", 400))
        response = p.response
        response["model"] = srv.model_name
        hook = srv.take_forced()
        forced = hook or p.forced or None
        if forced_rounds:
            forced = list(forced_rounds)
            forced_rounds.clear()
        added: List[Dict[str, Any]] = []

        def make_iter():
            return drive(generate, p.prompt, p.args, response, p.builtins, p.steer, forced,
                         p.render, added)

        def finish(resp):
            if resp.get("store"):
                store.put(resp["id"], {"response": resp, "conversation": p.conversation + added})
                if tool_host is not None and not p.builtins:
                    tool_host.move(body.get("previous_response_id"), resp["id"])

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
        if tool_host is not None:
            tool_host.drop(rid)
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
