"""The built-in tools on the Responses API: `code_interpreter` (the sandboxed python tool) and
`web_search` / `browser_search` (the browser over a local corpus), run by the server.

`gptoss serve --python-tool {sandbox,off} --browser-corpus DIR` makes a `ToolHost`, which
`responses.install` asks, per request, for the factories of the tool types it offers
(`for_request`). A call the model addresses to `python` or `browser.*` runs through
`gptoss.tools.BuiltinTools` and comes back as a `code_interpreter_call` or `web_search_call`
output item, with the streaming events OpenAI's reference server sends:

    code_interpreter: output_item.added, code_interpreter_call.in_progress,
        code_interpreter_call_code.delta, code_interpreter_call_code.done,
        code_interpreter_call.interpreting, (the code runs), code_interpreter_call.completed,
        output_item.done
    web_search: output_item.added, web_search_call.in_progress, web_search_call.searching,
        (the browser runs), web_search_call.completed, output_item.done

State across turns: the tools of one response chain (a response and the ones continuing it
through `previous_response_id`) are one `BuiltinTools`: one python session (variables, files in
/mnt/data) and one browser (its page cursors, which the model's citations name). A stored
response hands them to the response that continues it; a response that is not stored, fails or
is abandoned closes them. A chain continued twice (a fork) gives its tools to the first
continuation; the others start fresh. At most `max_sessions` chains keep their tools (the
oldest are closed), and `DELETE /v1/responses/{id}` closes that response's.
"""
from __future__ import annotations

import collections
import threading
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import chat as harmony
from .responses import BuiltinOutcome, BuiltinTool
from .tools import Browser, BuiltinTools, sandbox_problem
from .tools.browser import CorpusBackend

PYTHON_TYPES = ("code_interpreter",)
BROWSER_TYPES = ("web_search", "browser_search", "web_search_preview", "web_search_2025_08_26")
PYTHON_MODES = ("sandbox", "off")


class _LockedBackend:
    """One corpus index shared by every request's browser (the SQLite connection is used
    under a lock)."""

    def __init__(self, backend: CorpusBackend):
        self._b = backend
        self._lock = threading.Lock()

    def search(self, *a, **k):
        with self._lock:
            return self._b.search(*a, **k)

    def fetch(self, *a, **k):
        with self._lock:
            return self._b.fetch(*a, **k)

    def fetch_source(self, *a, **k):
        with self._lock:
            return self._b.fetch_source(*a, **k)


class _Session:
    """The tools of one response chain."""

    def __init__(self):
        self.python = None            # a PythonTool once one was started
        self.browser: Optional[Browser] = None
        self.container_id = f"cntr_{uuid.uuid4().hex}"

    def close(self) -> None:
        if self.python is not None:
            self.python.close()
            self.python = None


class ToolHost:
    """What built-in tools a server offers (python: "sandbox" or "off"; browser_corpus: a
    folder, or None) and the tools of the response chains in flight or stored."""

    def __init__(self, python: str = "off", browser_corpus: Optional[str] = None,
                 max_sessions: int = 64):
        if python not in PYTHON_MODES:
            raise ValueError(f"python tool = {python!r}: must be one of {', '.join(PYTHON_MODES)}")
        if python == "sandbox":
            problem = sandbox_problem()
            if problem is not None:
                raise RuntimeError(f"--python-tool sandbox: the python tool's sandbox cannot "
                                   f"start here: {problem} (or serve with --python-tool off)")
        self.python = python
        self.backend = None
        if browser_corpus is not None:
            self.backend = _LockedBackend(CorpusBackend(browser_corpus))
        self.max_sessions = max_sessions
        self._kept: "collections.OrderedDict[str, _Session]" = collections.OrderedDict()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what is offered
    @property
    def offered(self) -> Tuple[str, ...]:
        out: Tuple[str, ...] = ()
        if self.python == "sandbox":
            out += PYTHON_TYPES
        if self.backend is not None:
            out += BROWSER_TYPES
        return out

    def off(self) -> Dict[str, str]:
        out = {}
        if self.python != "sandbox":
            out.update({t: "the python tool is off: start gptoss serve with --python-tool "
                           "sandbox" for t in PYTHON_TYPES})
        if self.backend is None:
            out.update({t: "no browser corpus: start gptoss serve with --browser-corpus DIR"
                        for t in BROWSER_TYPES})
        return out

    def for_request(self, previous_response_id: Any
                    ) -> Tuple[Dict[str, Callable[[Dict[str, Any]], BuiltinTool]], Dict[str, str]]:
        """-> (factories of the offered tool types, bound to this request; the types that are
        off, with why)."""
        req = _RequestTools(self, previous_response_id if isinstance(previous_response_id, str)
                            else None)
        served: Dict[str, Callable[[Dict[str, Any]], BuiltinTool]] = {}
        if self.python == "sandbox":
            served["code_interpreter"] = lambda spec: _CodeInterpreter(req, spec)
        if self.backend is not None:
            for t in BROWSER_TYPES:
                served[t] = lambda spec: _WebSearch(req, spec)
        return served, self.off()

    # ------------------------------------------------------------------ chains
    def take(self, rid: Optional[str]) -> _Session:
        with self._lock:
            s = self._kept.pop(rid, None) if rid else None
        return s if s is not None else _Session()

    def keep(self, rid: str, session: _Session) -> None:
        with self._lock:
            self._kept[rid] = session
            evicted = []
            while len(self._kept) > self.max_sessions:
                evicted.append(self._kept.popitem(last=False)[1])
        for s in evicted:
            s.close()

    def move(self, old: Optional[str], new: str) -> None:
        """A stored response that continued `old` without built-in tools: the chain's tools
        move on to it."""
        if not old:
            return
        with self._lock:
            s = self._kept.pop(old, None)
        if s is not None:
            self.keep(new, s)

    def drop(self, rid: str) -> None:
        with self._lock:
            s = self._kept.pop(rid, None)
        if s is not None:
            s.close()

    def close(self) -> None:
        with self._lock:
            kept, self._kept = list(self._kept.values()), collections.OrderedDict()
        for s in kept:
            s.close()


class _RequestTools:
    """The built-in tools of one request: the chain's session, taken on first use (so a request
    refused with a 400 leaves the chain's tools where they are), and handed on when the
    response is stored."""

    def __init__(self, host: ToolHost, prev_id: Optional[str]):
        self.host, self.prev_id = host, prev_id
        self.session: Optional[_Session] = None
        self.tools: Optional[BuiltinTools] = None
        self.finished = False
        self.wants_python = self.wants_browser = False

    def get(self) -> BuiltinTools:
        if self.session is None:
            self.session = self.host.take(self.prev_id)
        s = self.session
        if self.tools is None:
            if self.wants_browser and s.browser is None:
                s.browser = Browser(backend=self.host.backend)
            self.tools = BuiltinTools(python=s.python if s.python is not None
                                      else (True if self.wants_python else None),
                                      browser=s.browser if self.wants_browser else None)
        return self.tools

    def done(self, response: Dict[str, Any]) -> None:
        if self.finished:
            return
        self.finished = True
        if self.tools is not None and self.session is not None:
            started = self.tools.python_started
            if started is not None:
                self.session.python = started
        if self.session is None:
            # no call this time: the chain's tools move on to this response untouched
            if response.get("store") and response.get("status") in ("completed", "incomplete"):
                self.host.move(self.prev_id, response["id"])
            return
        if response.get("store") and response.get("status") in ("completed", "incomplete"):
            self.host.keep(response["id"], self.session)
        else:
            self.session.close()


def _spec_check(spec: Dict[str, Any], allowed: Dict[str, Tuple[Any, ...]]) -> None:
    """Fields other than `allowed` (field -> accepted values; None: any) are refused by name,
    unless null."""
    extra = sorted(k for k, v in spec.items() if k != "type" and v is not None and (
        k not in allowed or (allowed[k] is not None and v not in allowed[k])))
    if extra:
        raise ValueError(f"unsupported field(s) {', '.join(f'{k}={spec[k]!r}' for k in extra)}"
                         " (a local tool: the server's own sandboxed python session, the "
                         "browser over the server's corpus)")


def _call_messages(m: harmony.ParsedMessage, call_id: str, channel: str, text: str
                   ) -> List[Dict[str, Any]]:
    """The call as the model wrote it and the tool's answer, as chat messages (chat.render)."""
    return [{"role": "assistant", "tool_calls": [{
        "id": call_id, "type": "builtin", "recipient": m.recipient, "arguments": m.content,
        "channel": channel, "content_type": m.content_type}]},
        {"role": "tool", "tool_call_id": call_id, "content": text}]


class _CodeInterpreter(BuiltinTool):
    tool_type, namespace = "code_interpreter", "python"

    def __init__(self, req: _RequestTools, spec: Dict[str, Any]):
        _spec_check(spec, {"container": None})
        c = spec.get("container")
        if c is not None and not (isinstance(c, dict) and c.get("type") == "auto" and
                                  all(v in (None, []) for k, v in c.items() if k != "type")):
            raise ValueError(f"container={c!r}: only {{'type': 'auto'}} is supported (the "
                             "python session follows the response chain: previous_response_id)")
        self.req = req
        req.wants_python = True

    def system_entry(self) -> Any:
        return "python"        # PythonTool's default description (a 120 s timeout) is true

    def run(self, m, output_index):
        tools = self.req.get()
        iid = f"ci_{uuid.uuid4().hex}"
        base = {"item_id": iid, "output_index": output_index}
        item = {"type": "code_interpreter_call", "id": iid, "status": "in_progress",
                "code": m.content, "outputs": None,
                "container_id": self.req.session.container_id}
        yield {"type": "response.output_item.added", "output_index": output_index,
               "item": dict(item)}
        yield {"type": "response.code_interpreter_call.in_progress", **base}
        if m.content:
            yield {"type": "response.code_interpreter_call_code.delta", **base,
                   "delta": m.content}
            yield {"type": "response.code_interpreter_call_code.done", **base, "code": m.content}
        item["status"] = "interpreting"
        yield {"type": "response.code_interpreter_call.interpreting", **base}
        channel = m.channel if m.channel in ("analysis", "commentary") else "analysis"
        run = tools.run(m.recipient, m.content, channel)
        item["status"] = run.data.get("status", "failed")
        item["outputs"] = run.data.get("outputs") or None
        yield {"type": "response.code_interpreter_call.completed", **base}
        yield {"type": "response.output_item.done", "output_index": output_index, "item": item}
        return BuiltinOutcome([item], _call_messages(m, iid, channel, run.text))

    def finish(self, response):
        self.req.done(response)


class _WebSearch(BuiltinTool):
    tool_type, namespace = "web_search", "browser"

    def __init__(self, req: _RequestTools, spec: Dict[str, Any]):
        # the fields OpenAI's web_search tool has that say nothing to a local corpus are
        # refused by name rather than ignored (the default context size changes nothing)
        _spec_check(spec, {"search_context_size": ("medium",)})
        self.req = req
        req.wants_browser = True

    def system_entry(self) -> Any:
        return "browser"

    def annotations(self, text: str) -> List[Dict[str, Any]]:
        # citations may name pages opened earlier in the chain, before this response
        if self.req.session is None and not Browser.CITATION.search(text):
            return []
        return self.req.get().annotations(text)

    def run(self, m, output_index):
        tools = self.req.get()
        iid = f"ws_{uuid.uuid4().hex}"
        base = {"item_id": iid, "output_index": output_index}
        fn = (m.recipient or "").split(".", 1)[-1]
        item = {"type": "web_search_call", "id": iid, "status": "in_progress",
                "action": _announced(fn, m.content)}
        yield {"type": "response.output_item.added", "output_index": output_index,
               "item": dict(item)}
        yield {"type": "response.web_search_call.in_progress", **base}
        item["status"] = "searching"
        yield {"type": "response.web_search_call.searching", **base}
        channel = m.channel if m.channel in ("analysis", "commentary") else "analysis"
        run = tools.run(m.recipient, m.content, channel)
        if run.kind == "web_search":
            action = dict(run.data["action"])
            if action["type"] == "find":          # OpenAI's name for it
                action["type"] = "find_in_page"
                action["url"] = action.get("url") or ""
            item["action"] = action
        item["status"] = run.data.get("status", "failed")
        yield {"type": "response.web_search_call.completed", **base}
        yield {"type": "response.output_item.done", "output_index": output_index, "item": item}
        return BuiltinOutcome([item], _call_messages(m, iid, channel, run.text))

    def finish(self, response):
        self.req.done(response)


def _announced(fn: str, arguments: str) -> Dict[str, Any]:
    """The action as the call states it, before it runs (output_item.added)."""
    import json
    try:
        a = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        a = {}
    a = a if isinstance(a, dict) else {}
    if fn == "search":
        return {"type": "search", "query": str(a.get("query", ""))}
    if fn == "open":
        u = a.get("id")
        return {"type": "open_page", "url": u if isinstance(u, str) else None}
    if fn == "find":
        return {"type": "find_in_page", "pattern": str(a.get("pattern", "")), "url": ""}
    return {"type": "search", "query": ""}        # a browser function that does not exist
