"""The chat loop with built-in tools: generate; when the model calls `python` or `browser.*`,
run it, append the call and its result in Harmony form, and generate again.

`run_chat_with_tools` yields the events of `chat_events.run_chat` (reasoning, text, user
function calls), plus a `BuiltinToolCall` before each built-in call runs and a
`BuiltinToolResult` after, and one final `Done` whose `messages` are what the turn added to the
conversation (so a caller can extend its history and render it again token for token).
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence

from .. import chat as harmony
from .. import chat_events
from ..chat_events import Done, ToolCall
from .builtin import BuiltinTools, ToolRun


@dataclasses.dataclass
class BuiltinToolCall:
    id: str
    recipient: str                   # "python", "browser.search", ...
    arguments: str                   # the code, or the JSON arguments
    channel: str


@dataclasses.dataclass
class BuiltinToolResult:
    id: str
    recipient: str
    content: str                     # the tool message the model is shown
    run: ToolRun                     # kind and structured data (for output items)


def _history_of(parsed: List[harmony.ParsedMessage], fn_ids: List[str]) -> List[Dict[str, Any]]:
    """The messages one generation added, as chat messages `chat.render` renders back."""
    out: List[Dict[str, Any]] = []
    fn_ids = list(fn_ids)
    for m in parsed:
        if m.role != "assistant":
            continue
        if m.recipient and m.recipient.startswith("functions."):
            out.append({"role": "assistant", "tool_calls": [{
                "id": fn_ids.pop(0) if fn_ids else "call_" + uuid.uuid4().hex[:24],
                "type": "function", "function": {"name": m.recipient[len("functions."):],
                                                 "arguments": m.content}}]})
        elif m.recipient and m.recipient != "assistant":
            continue                  # a built-in call: added with its result by the loop
        elif m.channel == "analysis":
            out.append({"role": "assistant", "reasoning": m.content})
        elif m.content:
            out.append({"role": "assistant", "content": m.content})
    return out


def run_chat_with_tools(model, messages, builtin: BuiltinTools, tools=None,
                        reasoning_effort="medium", max_tokens=1024, temperature=1.0,
                        top_p=1.0, top_k=0, seed=None, current_date=None,
                        stop: Optional[Sequence[str]] = None, tool_choice=None,
                        forced_tokens=None, max_tool_calls: int = 8,
                        generate=None) -> Iterator[Any]:
    """max_tokens: the budget of generated tokens over all rounds. max_tool_calls: built-in
    calls run at most; a further call ends the turn with stop_reason "max_tool_calls".
    forced_tokens: the test hook of `Model.generate`, either one list (the first round) or a
    list of lists (one per round)."""
    if not isinstance(max_tool_calls, int) or isinstance(max_tool_calls, bool) \
            or max_tool_calls < 0:
        raise ValueError(f"max_tool_calls={max_tool_calls!r}: must be an integer >= 0")
    rounds: List[Optional[List[int]]] = []
    if forced_tokens:
        forced_tokens = list(forced_tokens)
        if all(isinstance(t, (list, tuple)) for t in forced_tokens):
            rounds = [list(r) for r in forced_tokens]
        else:
            rounds = [forced_tokens]
    base = list(messages)
    added: List[Dict[str, Any]] = []
    use_tools = None if tool_choice == "none" else tools
    used = prompt_total = calls = 0
    malformed: List[str] = []
    reason = "stop"
    rnd = 0
    while True:
        prompt = harmony.render(base + added, tools=use_tools, reasoning_effort=reasoning_effort,
                                current_date=current_date, builtin_tools=builtin.system_tools)
        if len(prompt) >= model.max_context:
            reason = "context_limit"
            break
        budget = max_tokens - used
        if budget <= 0:
            reason = "length"
            break
        held: Dict[str, Any] = {}

        def gen_fn(*a, **k):
            held["gen"] = (generate or model.generate)(*a, **k)
            return held["gen"]
        done: Optional[Done] = None
        fn_ids: List[str] = []
        for ev in chat_events.run_chat(
                model, None, tools=tools, prompt=prompt, max_tokens=budget,
                temperature=temperature, top_p=top_p, top_k=top_k,
                seed=None if seed is None else seed + rnd, stop=stop,
                tool_choice=tool_choice if rnd == 0 else None,
                forced_tokens=rounds[rnd] if rnd < len(rounds) else None, generate=gen_fn):
            if isinstance(ev, Done):
                done = ev
                continue
            if isinstance(ev, ToolCall):
                fn_ids.append(ev.id)
            yield ev
        rnd += 1
        gen = held["gen"]
        used += done.usage["completion_tokens"]
        prompt_total += done.usage["prompt_tokens"]
        malformed += done.malformed
        toks = list(gen.tokens)
        if gen.stop_reason == "stop_token" and gen.stop_token is not None:
            toks.append(gen.stop_token)
        parser = harmony.HarmonyParser()
        for t in toks:
            parser.feed(t)
        parser.close()
        added += _history_of(parser.messages, fn_ids)
        last = next((m for m in reversed(parser.messages) if m.role == "assistant"), None)
        is_builtin_call = (last is not None and last.end == "call" and last.recipient
                           and last.recipient != "assistant"
                           and not last.recipient.startswith("functions."))
        if not is_builtin_call:
            reason = done.stop_reason
            break
        if calls >= max_tool_calls:
            reason = "max_tool_calls"
            break
        calls += 1
        call_id = "bt_" + uuid.uuid4().hex[:24]
        channel = last.channel if last.channel in ("analysis", "commentary") else "analysis"
        yield BuiltinToolCall(call_id, last.recipient, last.content, channel)
        run = builtin.run(last.recipient, last.content, channel)
        added.append({"role": "assistant", "tool_calls": [{
            "id": call_id, "type": "builtin", "recipient": last.recipient,
            "arguments": last.content, "channel": channel,
            "content_type": last.content_type}]})
        added.append(run.message(call_id))
        yield BuiltinToolResult(call_id, last.recipient, run.text, run)
    usage = {"prompt_tokens": prompt_total, "completion_tokens": used,
             "total_tokens": prompt_total + used}
    yield Done(reason, usage, malformed, added)
