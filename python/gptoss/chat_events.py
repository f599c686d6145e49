"""`Model.chat`: Harmony prompt in, typed events out.

Channels map onto OpenAI's shapes: `analysis` is reasoning, `final` (and a `commentary` preamble
with no recipient) is the answer's text, and a `commentary` message addressed to
`functions.NAME` is a tool call whose content is the JSON arguments.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence

from . import chat as harmony
from .tokenizer import CALL, END, RETURN, get_tokenizer


@dataclasses.dataclass
class ReasoningDelta:
    text: str


@dataclasses.dataclass
class TextDelta:
    text: str
    # (token id, steering.token_logprobs entry) of the tokens behind this text, when asked for
    logprobs: Optional[List[Any]] = None


@dataclasses.dataclass
class ToolCall:
    id: str
    name: str
    arguments: str                   # the model's JSON text, as OpenAI passes it


@dataclasses.dataclass
class Done:
    stop_reason: str                 # "stop", "tool_calls", "length" or "context_limit"
    usage: Dict[str, int]
    malformed: List[str] = dataclasses.field(default_factory=list)
    # with built-in tools (gptoss.tools.loop): the messages this turn added, to extend the
    # conversation with (assistant messages, built-in calls and their results)
    messages: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ChatResult:
    reasoning: str
    content: str
    tool_calls: List[ToolCall]
    stop_reason: str
    usage: Dict[str, int]
    malformed: List[str]
    messages: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    builtin_results: List[Any] = dataclasses.field(default_factory=list)  # tools.loop events


def forced_prefix(tool_choice, tools) -> List[int]:
    """Tokens that begin the answer for tool_choice 'required' or a named function."""
    if tool_choice in (None, "auto", "none"):
        return []
    enc = get_tokenizer()
    if tool_choice == "required":
        text = "<|channel|>commentary to=functions."
    elif isinstance(tool_choice, dict) and isinstance(tool_choice.get("function"), dict) \
            and isinstance(tool_choice["function"].get("name"), str):
        name = tool_choice["function"]["name"]
        if not any((t.get("function") or {}).get("name") == name for t in tools or []):
            raise harmony.ChatFormatError(f"tool_choice names function {name!r}, which is not "
                                          "among the tools")
        text = f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>"
    else:
        raise harmony.ChatFormatError("tool_choice: must be 'none', 'auto', 'required' or "
                                      "{'type': 'function', 'function': {'name': ...}}")
    return enc.encode(text, allowed_special="all")


def make_steer(response_format=None, tools=None, tool_choice=None, logprobs=None,
               where: str = "response_format"):
    """The steering.Steer of a chat request, or None: the final answer constrained to
    `response_format` (OpenAI's json_schema / json_object), strict tools' arguments to their
    schemas, and `logprobs` top alternatives per token. Raises structured.SchemaError (a
    ValueError naming the field) for a schema that cannot be enforced."""
    use_tools = None if tool_choice == "none" else tools
    if isinstance(response_format, dict) and response_format.get("type") == "text" and \
            set(response_format) == {"type"}:
        response_format = None                 # plain text: nothing to enforce
    constraint = None
    final = None
    strict = {}
    if response_format is not None or any(
            isinstance(t, dict) and (t.get("function") if isinstance(t.get("function"), dict)
                                     else t).get("strict") is True for t in use_tools or []):
        from . import structured
        final = structured.grammar_for_format(response_format, where)
        strict = structured.strict_tool_grammars(use_tools)
        names = [(t.get("function") if isinstance(t.get("function"), dict) else t).get("name")
                 for t in use_tools or [] if isinstance(t, dict)]
        constraint = structured.make_constraint(final, strict,
                                                [n for n in names if isinstance(n, str)])
    if constraint is None and logprobs is None:
        return None
    from .steering import Steer
    return Steer(constraint, logprobs)


def run_chat(model, messages, tools=None, reasoning_effort="medium", max_tokens=1024,
             temperature=1.0, top_p=1.0, top_k=0, seed=None, current_date=None,
             stop: Optional[Sequence[str]] = None, tool_choice=None,
             forced_tokens: Optional[Sequence[int]] = None,
             prompt: Optional[List[int]] = None, generate=None, response_format=None,
             logprobs: Optional[int] = None, steer=None) -> Iterator[Any]:
    """The events of one chat turn. `prompt`, if given, is the already rendered conversation;
    `generate` (default `model.generate`) may be a batching scheduler's. `response_format`
    and strict tools constrain the answer (structured.py); `logprobs` (top alternatives per
    token, 0..20) puts log-probabilities on the TextDeltas. `steer`, if given, is the already
    built steering.Steer of those."""
    use_tools = None if tool_choice == "none" else tools
    if steer is None:
        steer = make_steer(response_format, tools, tool_choice, logprobs)
    if prompt is None:
        prompt = harmony.render(messages, tools=use_tools, reasoning_effort=reasoning_effort,
                                current_date=current_date, response_format=response_format)
    forced = list(forced_tokens or []) or forced_prefix(tool_choice, use_tools)
    stops = [s for s in (stop or []) if s]
    extra = {"steer": steer} if steer is not None else {}
    gen = (generate or model.generate)(prompt, max_new_tokens=max_tokens,
                                       temperature=temperature, top_p=top_p, top_k=top_k,
                                       seed=seed, stop_tokens=[RETURN, CALL],
                                       forced_tokens=forced, **extra)
    try:
        for ev in _events_of(gen, prompt, stops):
            if isinstance(ev, Done) and steer is not None:
                # a constraint that gave up must not pass for a constrained answer
                from .steering import SteeringError, steering_failure
                why = steering_failure(steer)
                if why:
                    raise SteeringError("the request's output constraints could not be "
                                        f"applied: {why}")
            yield ev
    finally:
        gen.close()


def _events_of(gen, prompt, stops) -> Iterator[Any]:
    parser = harmony.HarmonyParser()
    text_so_far = ""
    hit_stop = False
    n_reasoning = 0
    n_msg = 0
    pending_lp: List[Any] = []

    def route(events):
        nonlocal text_so_far, hit_stop
        out = []
        for e in events:
            m = e.message
            if e.kind == "delta":
                if m.recipient and m.recipient != "assistant":
                    pass                      # tool-call arguments: emitted whole at the end
                elif m.channel == "analysis":
                    out.append(ReasoningDelta(e.text))
                elif not hit_stop:
                    piece = e.text
                    if stops:
                        joined = text_so_far + piece
                        cut = min((joined.find(s) for s in stops if s in joined), default=-1)
                        if cut >= 0:
                            piece = joined[len(text_so_far):cut]
                            hit_stop = True
                    text_so_far += piece
                    if piece:
                        out.append(TextDelta(piece))
            elif e.kind == "stray" and not hit_stop:
                text_so_far += e.text
                out.append(TextDelta(e.text))
            elif e.kind == "end" and m.recipient and m.recipient.startswith("functions."):
                out.append(ToolCall("call_" + uuid.uuid4().hex[:24],
                                    m.recipient[len("functions."):], m.content))
        return out

    def count(pev):
        nonlocal n_reasoning, n_msg
        n_msg += 1
        for e in pev:
            if e.kind == "end":
                if e.message.channel == "analysis":
                    n_reasoning += n_msg
                n_msg = 0
        return pev

    for tok in gen:
        cur = parser._cur
        # a token of an answer's content (not its header, not the end token): its logprobs
        # belong to the text it completes, which may come with a later token
        in_answer = parser._state == "content" and cur.channel != "analysis" and not (
            cur.recipient and cur.recipient != "assistant") and tok.id not in (END, RETURN, CALL)
        evs = route(count(parser.feed(tok.id)))
        if tok.logprob is not None and in_answer:
            texts = [ev for ev in evs if isinstance(ev, TextDelta)]
            if texts:
                texts[0].logprobs = pending_lp + [(tok.id, tok.logprob)]
                pending_lp = []
            else:
                pending_lp.append((tok.id, tok.logprob))
        for ev in evs:
            yield ev
        if hit_stop:
            break
    if gen.stop_reason == "stop_token" and gen.stop_token is not None:
        for ev in route(count(parser.feed(gen.stop_token))):
            yield ev
    for ev in route(parser.close()):
        yield ev
    n_out = len(gen.tokens) + (1 if gen.stop_reason == "stop_token" else 0)
    if parser._cur.channel == "analysis" and parser._state == "content":
        n_reasoning += n_msg                   # cut off while reasoning
    usage = {"prompt_tokens": len(prompt), "completion_tokens": n_out,
             "total_tokens": len(prompt) + n_out,
             "completion_tokens_details": {"reasoning_tokens": n_reasoning},
             "prompt_tokens_details": {"cached_tokens": int(getattr(gen, "cached_tokens", 0))}}
    if parser.done == "call" or any(m.recipient and m.recipient.startswith("functions.")
                                    and m.end == "call" for m in parser.messages):
        reason = "tool_calls"
    elif hit_stop or gen.stop_reason == "stop_token":
        reason = "stop"
    elif gen.stop_reason == "context_limit":
        reason = "context_limit"
    else:
        reason = "length"
    yield Done(reason, usage, [m.malformed for m in parser.messages if m.malformed])


def collect(events) -> ChatResult:
    reasoning, content, calls, results = [], [], [], []
    done = None
    for e in events:
        if isinstance(e, ReasoningDelta):
            reasoning.append(e.text)
        elif isinstance(e, TextDelta):
            content.append(e.text)
        elif isinstance(e, ToolCall):
            calls.append(e)
        elif isinstance(e, Done):
            done = e
        elif type(e).__name__ == "BuiltinToolResult":
            results.append(e)
    return ChatResult("".join(reasoning), "".join(content), calls, done.stop_reason, done.usage,
                      done.malformed, list(done.messages), results)
