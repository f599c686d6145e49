"""`BuiltinTools`: the built-in tools of one conversation, as a chat loop or a server uses them.

It knows which recipients it answers (`python`, `browser.search`, `browser.open`,
`browser.find`), what the system message must say (`system_tools`, for `chat.render`'s
`builtin_tools`), and runs one parsed call, returning the Harmony tool message to append and the
structured data an API server turns into output items.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Union

from .browser import Browser, Citation
from .python_tool import PythonTool

PYTHON_RECIPIENTS = ("python",)
BROWSER_RECIPIENTS = ("browser.search", "browser.open", "browser.find")


@dataclasses.dataclass
class ToolRun:
    """One built-in tool call, run.

    author, channel, text: the Harmony tool message that answers the call
    (`<|start|>{author} to=assistant<|channel|>{channel}<|message|>{text}<|end|>`).
    kind: "code_interpreter" (python) or "web_search" (browser), or "unknown" for a recipient
    no tool answers (then text is an error the model reads).
    data: for code_interpreter, {"code": str, "outputs": [{"type": "logs", "logs": str}],
    "status": "completed" | "failed"}; for web_search, {"action": {"type": "search", "query":
    str, "sources": [{"type": "url", "url": str, "title": str}]} | {"type": "open_page",
    "url": str} | {"type": "find", "url": str, "pattern": str}, "status": "completed" |
    "failed"}.
    """
    recipient: str
    arguments: str
    author: str
    channel: str
    text: str
    kind: str
    data: Dict[str, Any]
    error: bool = False

    def message(self, call_id: str) -> Dict[str, Any]:
        """The result as a chat message for `chat.render` (answers the builtin call `call_id`)."""
        return {"role": "tool", "tool_call_id": call_id, "content": self.text}


class BuiltinTools:
    """python: a `PythonTool`, True (a default sandboxed one, made on first use), or None.
    browser: a `Browser`, a corpus folder (str), or None.

    Not thread-safe: one conversation at a time (a server makes one per request or locks).
    """

    def __init__(self, python: Union[PythonTool, bool, None] = None,
                 browser: Union[Browser, str, None] = None):
        if python is not None and not isinstance(python, (PythonTool, bool)):
            raise ValueError("python: must be a gptoss.tools.PythonTool, True or None")
        if browser is not None and not isinstance(browser, (Browser, str)):
            raise ValueError("browser: must be a gptoss.tools.Browser, a corpus folder or None")
        self._python = python if isinstance(python, PythonTool) else None
        self._own_python = python is True
        self.browser = Browser(corpus=browser) if isinstance(browser, str) else browser
        self.has_python = self._python is not None or self._own_python

    # ------------------------------------------------------------------ what it offers
    @property
    def python(self) -> Optional[PythonTool]:
        if self._python is None and self._own_python:
            self._python = PythonTool()
        return self._python

    @property
    def python_started(self) -> Optional[PythonTool]:
        """The python session, if one is given or was started (None before first use)."""
        return self._python

    @property
    def names(self) -> tuple:
        return tuple(n for n, on in (("browser", self.browser is not None),
                                     ("python", self.has_python)) if on)

    @property
    def recipients(self) -> tuple:
        out = ()
        if self.browser is not None:
            out += BROWSER_RECIPIENTS
        if self.has_python:
            out += PYTHON_RECIPIENTS
        return out

    def handles(self, recipient: Optional[str]) -> bool:
        return recipient in self.recipients

    @property
    def system_tools(self) -> List[Any]:
        """For `chat.render(..., builtin_tools=...)`: the system message's tool entries."""
        out: List[Any] = []
        if self.browser is not None:
            out.append(self.browser)
        if self.has_python:
            out.append(self._python if self._python is not None else "python")
        return out

    # ------------------------------------------------------------------ running a call
    def run(self, recipient: str, arguments: str, channel: str = "analysis") -> ToolRun:
        """Run the call the model addressed to `recipient`; never raises on the model's input."""
        channel = channel or "analysis"
        if recipient in PYTHON_RECIPIENTS and self.has_python:
            try:
                text = self.python.run(arguments)
                failed = text.startswith("[The code did not finish") or \
                    text.startswith("[The python session ended") or \
                    "Traceback (most recent" in text
            except (RuntimeError, OSError, ValueError) as e:    # e.g. the sandbox won't restart
                text, failed = f"Error: the python tool is not available: {e}", True
            return ToolRun(recipient, arguments, recipient, channel, text, "code_interpreter",
                           {"code": arguments, "outputs": [{"type": "logs", "logs": text}],
                            "status": "failed" if failed else "completed"}, failed)
        if recipient in BROWSER_RECIPIENTS and self.browser is not None:
            return self._browse(recipient, arguments, channel)
        avail = ", ".join(self.recipients) or "none"
        return ToolRun(recipient, arguments, recipient, channel,
                       f"Error: no tool named {recipient!r} is available (available: {avail})",
                       "unknown", {"status": "failed"}, True)

    def _browse(self, recipient: str, arguments: str, channel: str) -> ToolRun:
        fn = recipient.split(".", 1)[1]
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            args, text = None, f"Error: the arguments are not valid JSON ({e})"
        before = len(self.browser.pages)
        if args is not None:
            text = self.browser.call(fn, args)
        error = text.startswith("Error:")
        new = self.browser.pages[before:] if not error else []
        page = new[-1].doc if new else None
        a = args if isinstance(args, dict) else {}
        if fn == "search":
            action = {"type": "search", "query": str(a.get("query", "")),
                      "sources": [{"type": "url", "url": u, "title": t}
                                  for (u, _), t in zip(page.links, _titles(page))] if page else []}
        elif fn == "open":
            action = {"type": "open_page", "url": page.url if page else None}
        else:
            src = self.browser.pages[before - 1].doc.url if before and not error else None
            action = {"type": "find", "url": src, "pattern": str(a.get("pattern", ""))}
        return ToolRun(recipient, arguments, recipient, channel, text, "web_search",
                       {"action": action, "status": "failed" if error else "completed"}, error)

    def citations(self, text: str) -> List[Citation]:
        """The browser citations (`【cursor†Lx-Ly】`) in a final answer, resolved to files."""
        return self.browser.citations(text) if self.browser is not None else []

    def annotations(self, text: str) -> List[Dict[str, Any]]:
        """`url_citation`-style annotations of `text`: where each resolved citation sits."""
        out = []
        if self.browser is None:
            return out
        for m in self.browser.CITATION.finditer(text):
            got = self.browser.citations(m.group(0))
            if got:
                c = got[0]
                out.append({"type": "url_citation", "start_index": m.start(),
                            "end_index": m.end(), "url": c.url, "title": c.title,
                            "path": c.path, "start_line": c.start_line, "end_line": c.end_line})
        return out

    # ------------------------------------------------------------------ lifetime
    def reset(self) -> None:
        """A new conversation: browser cursors start again (the python session is kept)."""
        if self.browser is not None:
            self.browser.reset()

    def close(self) -> None:
        if self._python is not None:
            self._python.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _titles(doc) -> List[str]:
    # the titles of a search results page's links, in link order (`* 【k†title†url】`)
    import re
    out = []
    for line in doc.lines:
        m = re.match(r"\* 【\d+†(.*)†[^†】]*】$", line)
        if m:
            out.append(m.group(1))
    return out
