"""The Harmony chat format (as openai-harmony renders it): rendering OpenAI-style conversations to tokens,
and a streaming parser for what the model writes back.

`render()` maps chat-completions messages and tools onto Harmony the way gpt-oss servers do and
produces the same tokens as OpenAI's `openai-harmony` renderer (tests compare the two).
`HarmonyParser` splits generated tokens into messages (channel, recipient, content type) as they
arrive and never raises on malformed output: what it cannot place is kept, marked, and the stream
goes on.
"""
from __future__ import annotations

import codecs
import dataclasses
import json
from typing import Any, Dict, Iterable, List, Optional, Sequence

from .tokenizer import (CALL, CHANNEL, CONSTRAIN, END, MESSAGE, RETURN, START, get_tokenizer)

MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
REASONING_EFFORTS = ("low", "medium", "high")


class ChatFormatError(ValueError):
    """A request's messages or tools cannot be rendered (names the message and field)."""


# ------------------------------------------------------------------------------ tool schemas
def _ts_type(schema: Any, level: int) -> str:
    """A JSON schema as the TypeScript-like type Harmony's function namespace uses."""
    if not isinstance(schema, dict):
        return "any"
    if "oneOf" in schema and isinstance(schema["oneOf"], list):
        return "".join("\n | " + _ts_type(s, level) for s in schema["oneOf"]) + "\n"
    t = schema.get("type")
    if isinstance(t, list):
        return " | ".join(_ts_type({**schema, "type": x}, level) for x in t)
    if t == "string":
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return " | ".join(json.dumps(v, ensure_ascii=False) for v in enum)
        return "string"
    if t in ("number", "integer"):
        return "number"
    if t == "boolean":
        return "boolean"
    if t == "null":
        return "null"
    if t == "array":
        items = schema.get("items")
        return f"{_ts_type(items, level)}[]" if isinstance(items, dict) else "Array<any>"
    if t == "object":
        return _ts_object(schema, level + 1)
    return "any"


def _ts_object(schema: Dict[str, Any], level: int) -> str:
    pad = "    " * level
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    out = "{\n"
    for name, p in props.items():
        p = p if isinstance(p, dict) else {}
        desc = p.get("description")
        if isinstance(desc, str) and desc:
            out += f"{pad}// {desc}\n"
        opt = "" if name in required else "?"
        typ = _ts_type(p, level)
        sep = "" if typ.startswith("\n") else " "
        line = f"{pad}{name}{opt}:{sep}{typ},"
        if "default" in p:
            d = p["default"]
            is_enum = p.get("type") == "string" and isinstance(p.get("enum"), list) and p["enum"]
            line += f" // default: {d if is_enum and isinstance(d, str) else json.dumps(d)}"
        out += line + "\n"
    return out + pad + "}"


def _tool_text(tool: Dict[str, Any], index: int) -> str:
    fn = tool.get("function") if tool.get("type", "function") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ChatFormatError(f"tools[{index}]: must be {{'type': 'function', 'function': "
                              "{'name': ..., 'description': ..., 'parameters': {...}}}")
    text = ""
    desc = fn.get("description")
    if isinstance(desc, str) and desc:
        text += "".join(f"// {line}\n" for line in desc.split("\n"))
    params = fn.get("parameters")
    if params is None:
        return text + f"type {fn['name']} = () => any;\n\n"
    if not isinstance(params, dict):
        raise ChatFormatError(f"tools[{index}].function.parameters: must be a JSON schema object")
    if params.get("type", "object") == "object":
        body = _ts_object(params, 0)
    else:
        body = _ts_type(params, 0)
    return text + f"type {fn['name']} = (_: {body}) => any;\n\n"


def tools_namespace(tools: Sequence[Dict[str, Any]]) -> str:
    return ("## functions\n\nnamespace functions {\n\n"
            + "".join(_tool_text(t, i) for i, t in enumerate(tools))
            + "} // namespace functions")


# ------------------------------------------------------------------------------ built-in tools
# The system message's `# Tools` section for the built-in tools gpt-oss was trained with. The
# browser's text is openai-harmony's `with_browser_tool()`; the python tool's keeps its structure
# but says what gptoss.tools.PythonTool does (its timeout, and no internet: the sandbox has no
# network), where openai-harmony's `with_python_tool()` says internet access is "UNKNOWN".
BUILTIN_TOOLS = ("browser", "python")
BUILTIN_RECIPIENTS = ("python", "browser.search", "browser.open", "browser.find")
BROWSER_DESCRIPTION = (
    "Tool for browsing.\n"
    "The `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
    "Cite information from the tool using the following format:\n"
    "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
    "Do not quote more than 10 words directly from the tool output.\n"
    "sources=web (default: web)")
BROWSER_FUNCTIONS = [
    {"name": "search",
     "description": "Searches for information related to `query` and displays `topn` results.",
     "parameters": {"type": "object", "required": ["query"], "properties": {
         "query": {"type": "string"}, "topn": {"type": "number", "default": 10},
         "source": {"type": "string"}}}},
    {"name": "open",
     "description": (
         "Opens the link `id` from the page indicated by `cursor` starting at line number "
         "`loc`, showing `num_lines` lines.\n"
         "Valid link ids are displayed with the formatting: `【{id}†.*】`.\n"
         "If `cursor` is not provided, the most recent page is implied.\n"
         "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
         "If `loc` is not provided, the viewport will be positioned at the beginning of the "
         "document or centered on the most relevant passage, if available.\n"
         "Use this function without `id` to scroll to a new location of an opened page."),
     "parameters": {"type": "object", "properties": {
         "id": {"type": ["number", "string"], "default": -1},
         "cursor": {"type": "number", "default": -1},
         "loc": {"type": "number", "default": -1},
         "num_lines": {"type": "number", "default": -1},
         "view_source": {"type": "boolean", "default": False},
         "source": {"type": "string"}}}},
    {"name": "find",
     "description": "Finds exact matches of `pattern` in the current page, or the page given "
                    "by `cursor`.",
     "parameters": {"type": "object", "required": ["pattern"], "properties": {
         "pattern": {"type": "string"}, "cursor": {"type": "number", "default": -1}}}},
]


def python_description(timeout: float = 120.0) -> str:
    """The python tool's description (true of gptoss.tools.PythonTool with this timeout)."""
    return ("Use this tool to execute Python code in your chain of thought. The code will not be "
            "shown to the user. This tool should be used for internal reasoning, but not for code "
            "that is intended to be visible to the user (e.g. when creating plots, tables, or "
            "files).\n\nWhen you send a message containing Python code to python, it will be "
            "executed in a stateful Jupyter notebook environment. python will respond with the "
            f"output of the execution or time out after {float(timeout)} seconds. The drive at "
            "'/mnt/data' can be used to save and persist user files. Internet access for this "
            "session is disabled.")


def _builtin(tool: Any, index: int):
    """(name, description) of one entry of builtin_tools: "browser", "python", or an object
    with `name` and `description` (gptoss.tools.PythonTool, Browser)."""
    if isinstance(tool, str):
        name, desc = tool, None
    else:
        name, desc = getattr(tool, "name", None), getattr(tool, "description", None)
    if name not in BUILTIN_TOOLS:
        raise ChatFormatError(f"builtin_tools[{index}] = {tool!r}: must be 'browser' or 'python' "
                              "(or a tool object with that name)")
    if desc is None:
        desc = BROWSER_DESCRIPTION if name == "browser" else python_description()
    return name, desc


def builtin_tools_section(builtin_tools: Sequence[Any]) -> str:
    """The `# Tools` section of the system message (empty without built-in tools)."""
    found = {}
    for i, t in enumerate(builtin_tools or ()):
        name, desc = _builtin(t, i)
        if name in found:
            raise ChatFormatError(f"builtin_tools[{i}]: {name!r} is given twice")
        found[name] = desc
    parts = []
    for name in sorted(found):                    # openai-harmony orders them by name
        desc = found[name]
        if name == "browser":
            text = "## browser\n\n" + "".join(f"// {ln}\n" for ln in desc.split("\n"))
            text += "namespace browser {\n\n"
            text += "".join(_tool_text({"type": "function", "function": f}, k)
                            for k, f in enumerate(BROWSER_FUNCTIONS))
            parts.append(text + "} // namespace browser")
        else:
            parts.append(f"## {name}\n\n{desc}")
    return "# Tools\n\n" + "\n\n".join(parts) if parts else ""


# ------------------------------------------------------------------------------ rendering
@dataclasses.dataclass
class HarmonyMessage:
    role: str                        # system, developer, user, assistant, or a tool name
    content: str
    channel: Optional[str] = None
    recipient: Optional[str] = None
    content_type: Optional[str] = None   # e.g. "<|constrain|>json"
    end: int = END                   # END, or CALL for a tool call


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, p in enumerate(content):
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and p.get("type") in ("text", "input_text", "output_text") \
                    and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise ChatFormatError(f"{where}.content[{i}]: only text parts are supported")
        return "".join(parts)
    raise ChatFormatError(f"{where}.content: must be a string or a list of text parts")


def system_text(reasoning_effort: str = "medium", current_date: Optional[str] = None,
                with_functions: bool = False, builtin_tools: Sequence[Any] = ()) -> str:
    if reasoning_effort not in REASONING_EFFORTS:
        raise ChatFormatError(f"reasoning_effort={reasoning_effort!r}: must be one of "
                              f"{', '.join(REASONING_EFFORTS)}")
    s = f"{MODEL_IDENTITY}\nKnowledge cutoff: {KNOWLEDGE_CUTOFF}\n"
    if current_date:
        s += f"Current date: {current_date}\n"
    s += f"\nReasoning: {reasoning_effort}\n\n"
    section = builtin_tools_section(builtin_tools)
    if section:
        s += section + "\n\n"
    s += "# Valid channels: analysis, commentary, final. Channel must be included for every message."
    if with_functions:
        s += "\nCalls to these tools must go to the commentary channel: 'functions'."
    return s


def response_format_text(fmt: Any) -> str:
    """The developer message's `# Response Formats` section for an OpenAI json_schema response
    format (chat's nested or responses' flat shape); "" for anything else. It tells the model
    the schema; structured.py is what enforces it."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return ""
    spec = fmt.get("json_schema", fmt)
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        return ""
    name = spec.get("name") if isinstance(spec.get("name"), str) else "response"
    desc = spec.get("description")
    text = f"# Response Formats\n\n## {name}\n\n"
    if isinstance(desc, str) and desc:
        text += "".join(f"// {line}\n" for line in desc.split("\n"))
    return text + json.dumps(spec["schema"], separators=(",", ":"), ensure_ascii=False)


def to_harmony(messages: Sequence[Dict[str, Any]], tools: Optional[Sequence[Dict]] = None,
               reasoning_effort: str = "medium",
               current_date: Optional[str] = None,
               builtin_tools: Sequence[Any] = (),
               response_format: Any = None) -> List[HarmonyMessage]:
    """OpenAI chat-completions messages -> Harmony messages (as openai-harmony renders it).
    A json_schema `response_format` adds its schema to the developer message.

    Besides OpenAI's shapes, an assistant message's `tool_calls` may hold built-in tool calls,
    `{"id": ..., "type": "builtin", "recipient": "python" | "browser.search" | ...,
    "arguments": str, "channel": "analysis", "content_type": "code"}` (channel and content_type
    as the model wrote them; defaults "analysis" and none), and a `{"role": "tool",
    "tool_call_id": ...}` message answering one renders as that tool's message
    (`<|start|>python to=assistant<|channel|>analysis<|message|>...`).
    """
    if not isinstance(messages, (list, tuple)):
        raise ChatFormatError("messages: must be a list")
    tools = list(tools or [])
    out = [HarmonyMessage("system", system_text(reasoning_effort, current_date, bool(tools),
                                                builtin_tools))]
    instructions: List[str] = []
    body: List[HarmonyMessage] = []
    call_names: Dict[str, str] = {}
    builtin_calls: Dict[str, HarmonyMessage] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m:
            raise ChatFormatError(f"{where}: must be an object with a 'role'")
        role = m["role"]
        if role in ("system", "developer"):
            instructions.append(_text_of(m.get("content"), where))
        elif role == "user":
            body.append(HarmonyMessage("user", _text_of(m.get("content"), where)))
        elif role == "assistant":
            reasoning = m.get("reasoning") if m.get("reasoning") is not None \
                else m.get("reasoning_content")
            if reasoning:
                body.append(HarmonyMessage("assistant", _text_of(reasoning, where + ".reasoning"),
                                           channel="analysis"))
            for j, tc in enumerate(m.get("tool_calls") or []):
                if isinstance(tc, dict) and tc.get("type") == "builtin":
                    h = _builtin_call(tc, f"{where}.tool_calls[{j}]")
                    if tc.get("id"):
                        builtin_calls[tc["id"]] = h
                    body.append(h)
                    continue
                fn = tc.get("function") if isinstance(tc, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ChatFormatError(f"{where}.tool_calls[{j}]: needs function.name")
                args = fn.get("arguments", "")
                if not isinstance(args, str):
                    args = json.dumps(args)
                if tc.get("id"):
                    call_names[tc["id"]] = fn["name"]
                body.append(HarmonyMessage("assistant", args, channel="commentary",
                                           recipient=f"functions.{fn['name']}",
                                           content_type="<|constrain|>json", end=CALL))
            content = _text_of(m.get("content"), where)
            if content:
                body.append(HarmonyMessage("assistant", content, channel="final"))
        elif role == "tool" and m.get("tool_call_id") in builtin_calls:
            call = builtin_calls[m["tool_call_id"]]
            body.append(HarmonyMessage(call.recipient, _text_of(m.get("content"), where),
                                       channel=call.channel, recipient="assistant"))
        elif role == "tool":
            name = m.get("name") or call_names.get(m.get("tool_call_id", ""))
            if not name:
                raise ChatFormatError(f"{where}: tool_call_id {m.get('tool_call_id')!r} answers "
                                      "no earlier tool call (and no 'name' is given)")
            body.append(HarmonyMessage(f"functions.{name}", _text_of(m.get("content"), where),
                                       channel="commentary", recipient="assistant"))
        else:
            raise ChatFormatError(f"{where}.role = {role!r}: must be system, developer, user, "
                                  "assistant or tool")
    formats = response_format_text(response_format)
    if instructions or tools or formats:
        dev = ""
        if instructions:
            dev = "# Instructions\n\n" + "\n".join(instructions)
        if tools:
            dev += ("\n\n" if dev else "") + "# Tools\n\n" + tools_namespace(tools)
        if formats:
            dev += ("\n\n" if dev else "") + formats
        out.append(HarmonyMessage("developer", dev))
    # openai-harmony's rule: when the conversation's last assistant message is a final answer,
    # the analysis-channel messages (built-in tool calls and results on it too) before the
    # *first* final answer are dropped; later ones stay
    last = max((k for k, h in enumerate(body) if h.role == "assistant"), default=-1)
    if last >= 0 and body[last].channel == "final":
        first = next(k for k, h in enumerate(body) if h.channel == "final")
        body = [h for k, h in enumerate(body) if not (h.channel == "analysis" and k < first)]
    return out + body


def _builtin_call(tc: Dict[str, Any], where: str) -> HarmonyMessage:
    rec = tc.get("recipient")
    # the model may address a tool that is not there; its call and the error answering it
    # still render, so any recipient but a function's is accepted
    if not isinstance(rec, str) or not rec or rec.split() != [rec] or rec.startswith("functions.") \
            or rec == "assistant":
        raise ChatFormatError(f"{where}.recipient = {rec!r}: must name a built-in tool, e.g. "
                              f"{', '.join(BUILTIN_RECIPIENTS)}")
    args = tc.get("arguments", "")
    if not isinstance(args, str):
        args = json.dumps(args)
    channel = tc.get("channel") or "analysis"
    ctype = tc.get("content_type")
    if channel not in ("analysis", "commentary") or (ctype is not None and
                                                     not isinstance(ctype, str)):
        raise ChatFormatError(f"{where}: channel must be analysis or commentary, content_type "
                              "a string")
    return HarmonyMessage("assistant", args, channel=channel, recipient=rec,
                          content_type=ctype or None, end=CALL)


def encode_messages(msgs: Iterable[HarmonyMessage]) -> List[int]:
    enc = get_tokenizer()
    text = lambda s: enc.encode(s, disallowed_special=()) if s else []
    toks: List[int] = []
    for m in msgs:
        header = m.role + (f" to={m.recipient}" if m.recipient else "")
        toks += [START] + text(header)
        if m.channel:
            toks += [CHANNEL] + text(m.channel)
        if m.content_type:
            if m.content_type.startswith("<|constrain|>"):
                toks += text(" ") + [CONSTRAIN] + text(m.content_type[len("<|constrain|>"):])
            else:
                toks += text(" " + m.content_type)
        toks += [MESSAGE] + text(m.content) + [m.end]
    return toks


def render(messages: Sequence[Dict[str, Any]], tools: Optional[Sequence[Dict]] = None,
           reasoning_effort: str = "medium", current_date: Optional[str] = None,
           builtin_tools: Sequence[Any] = (), response_format: Any = None) -> List[int]:
    """Token ids of the conversation, ending with `<|start|>assistant` for the model to continue.

    builtin_tools: any of "browser" and "python" (or the tool objects of gptoss.tools), put in
    the system message as openai-harmony's SystemContent puts them. response_format: a
    json_schema format's schema goes into the developer message.
    """
    enc = get_tokenizer()
    return encode_messages(to_harmony(messages, tools, reasoning_effort, current_date,
                                      builtin_tools, response_format)) + [START] + enc.encode("assistant")


# ------------------------------------------------------------------------------ parsing
@dataclasses.dataclass
class ParsedMessage:
    role: str = "assistant"
    channel: Optional[str] = None
    recipient: Optional[str] = None
    content_type: Optional[str] = None
    content: str = ""
    end: Optional[str] = None        # "end", "return", "call", or None if cut off
    malformed: Optional[str] = None  # why, when the message was not well formed


@dataclasses.dataclass
class ParserEvent:
    kind: str                        # "start", "delta", "end", "stray"
    message: ParsedMessage
    text: str = ""


MAX_HEADER_TOKENS = 64


class HarmonyParser:
    """Feed generated tokens one at a time; get events. Never raises on the model's output.

    The model continues a prompt that ended in `<|start|>assistant`, so parsing starts inside an
    assistant header. Malformed output (a header that never reaches `<|message|>`, a `<|start|>`
    inside content, text between messages, a message cut off) is kept in `messages` with
    `malformed` saying what was wrong.
    """

    def __init__(self, role: str = "assistant"):
        self.enc = get_tokenizer()
        self.messages: List[ParsedMessage] = []
        self._state = "header"
        self._cur = ParsedMessage(role=role)
        self._header: List[int] = []
        self._role_known = True
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.done: Optional[str] = None     # "return" or "call" once the model has finished

    def _bytes(self, t: int) -> bytes:
        try:
            return self.enc.decode_single_token_bytes(t)
        except KeyError:
            return b""

    def _parse_header(self) -> None:
        raw = b"".join(self._bytes(t) if t not in (CHANNEL, CONSTRAIN) else
                       {CHANNEL: b"\x00C", CONSTRAIN: b"\x00K"}[t] for t in self._header)
        s = raw.decode("utf-8", errors="replace")
        m = self._cur
        # split "<role> to=X\0Cchannel to=Y \0Kjson" into words, keeping the markers apart
        s = s.replace("\x00C", " \x00C ").replace("\x00K", " \x00K ")
        words = s.split()
        i = 0
        if not self._role_known and words and not words[0].startswith("\x00"):
            m.role = words[0]
            i = 1
        while i < len(words):
            w = words[i]
            if w == "\x00C":
                if i + 1 < len(words) and not words[i + 1].startswith("\x00"):
                    m.channel = words[i + 1]
                    i += 1
                else:
                    m.malformed = "empty channel name"
            elif w == "\x00K":
                if i + 1 < len(words) and not words[i + 1].startswith("\x00"):
                    m.content_type = "<|constrain|>" + words[i + 1]
                    i += 1
            elif w.startswith("to="):
                m.recipient = w[3:] or None
            elif m.content_type is None and m.channel is not None:
                m.content_type = w
            else:
                m.malformed = f"unexpected header text {w!r}"
            i += 1

    def _finish(self, end: Optional[str], events: List[ParserEvent], why: Optional[str] = None):
        m = self._cur
        tail = self._dec.decode(b"", final=True)
        if tail:
            m.content += tail
            events.append(ParserEvent("delta", m, tail))
        m.end = end
        if why and not m.malformed:
            m.malformed = why
        self.messages.append(m)
        events.append(ParserEvent("end", m))
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token: int) -> List[ParserEvent]:
        ev: List[ParserEvent] = []
        st = self._state
        if st == "header":
            if token == MESSAGE:
                self._parse_header()
                self._header = []
                self._state = "content"
                ev.append(ParserEvent("start", self._cur))
            elif token in (END, RETURN, CALL, START):
                self._header_as_content(ev)
                self._finish({END: "end", RETURN: "return", CALL: "call"}.get(token), ev,
                             "header ended without <|message|>")
                self._after_end(token, ev)
            elif len(self._header) >= MAX_HEADER_TOKENS:
                # not a header after all: keep everything as content of an unlabelled message
                self._header.append(token)
                self._cur.malformed = "header too long; kept as content"
                self._state = "content"
                ev.append(ParserEvent("start", self._cur))
                pending, self._header = self._header, []
                for t in pending:
                    ev += self._content(t)
            else:
                self._header.append(token)
        elif st == "content":
            if token in (END, RETURN, CALL):
                self._finish({END: "end", RETURN: "return", CALL: "call"}[token], ev)
                self._after_end(token, ev)
            elif token == START:
                self._finish(None, ev, "message cut off by <|start|>")
                self._begin_header(ev)
            else:
                ev += self._content(token)
        else:  # between messages
            if token == START:
                self._begin_header(ev)
            else:
                stray = ParsedMessage(role="", malformed="text outside a message",
                                      content=self._bytes(token).decode("utf-8", "replace"))
                self.messages.append(stray)
                ev.append(ParserEvent("stray", stray, stray.content))
        return ev

    def _header_as_content(self, ev: List[ParserEvent]) -> None:
        """A header that never reached <|message|>: parse what it can, keep its text as content."""
        self._parse_header()
        text = b"".join(self._bytes(t) for t in self._header).decode("utf-8", "replace")
        self._header = []
        if text:
            self._cur.content += text
            ev.append(ParserEvent("delta", self._cur, text))

    def _content(self, token: int) -> List[ParserEvent]:
        text = self._dec.decode(self._bytes(token))
        if not text:
            return []
        self._cur.content += text
        return [ParserEvent("delta", self._cur, text)]

    def _begin_header(self, ev):
        self._cur = ParsedMessage(role="")
        self._role_known = False
        self._header = []
        self._state = "header"

    def _after_end(self, token: int, ev):
        if token == START:
            self._begin_header(ev)
            return
        if token in (RETURN, CALL):
            self.done = "return" if token == RETURN else "call"
        self._state = "between"

    def close(self) -> List[ParserEvent]:
        """End of generation: a message still open is kept, marked as cut off."""
        ev: List[ParserEvent] = []
        if self._state == "header" and self._header:
            self._header_as_content(ev)
            self._finish(None, ev, "generation stopped inside a header")
        elif self._state == "content":
            self._finish(None, ev, "generation stopped before the message ended")
        self._state = "between"
        return ev
