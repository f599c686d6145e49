"""Structured outputs: the final answer (and strict tool calls' arguments) follow a JSON schema.

The grammar work is llguidance's (the `structured` extra): it compiles a JSON schema against the
o200k_harmony vocabulary and gives, after each token, the mask of tokens that keep the text a
prefix of a valid document. What is ours is where the mask applies. The model writes Harmony:

    <|channel|>analysis<|message|>...reasoning...<|end|><|start|>assistant<|channel|>final<|message|>{...}<|return|>

`HarmonyConstraint` follows the tokens as they are emitted (chat.HarmonyParser) and is active
only where the output is fixed: the message headers, when a response format is asked for (they
must open an `analysis` message, at most one, or the `final` one, or a call of one of the
tools), and the
content of the final message, or of a call to a `strict` function, which the schema's grammar
constrains and which ends with `<|return|>` (`<|call|>` for a call) once the document is
complete. Reasoning stays free and is sampled on the engine's device as usual.

Masks are computed off the critical path: `prepare()` (called by steering.Steer.observe as soon
as a token is known) starts the next mask on a worker thread, and llguidance computes it
without the GIL while the engine runs the decode step for that token.
"""
from __future__ import annotations

import concurrent.futures
import copy
import functools
import threading
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import chat as harmony
from .tokenizer import CALL, CHANNEL, END, MESSAGE, RETURN, START, get_tokenizer

# separators of the generated JSON: compact, one space after ',' and ':', no other whitespace
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# the workers that compute next masks while the engine runs a step (llguidance drops the GIL)
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="gptoss-mask")


class SchemaError(ValueError):
    """A response format or strict tool schema that cannot be enforced; says why."""


def _llguidance():
    try:
        import llguidance  # noqa: F401
        import llguidance.tiktoken  # noqa: F401
    except ImportError as e:
        raise ImportError(f"structured outputs need llguidance ({e}); install them with "
                          "pip install 'gptoss[structured]'") from None
    return llguidance


@functools.lru_cache(maxsize=1)
def ll_tokenizer():
    """The o200k_harmony vocabulary as llguidance sees it (built once, about 2 s)."""
    llg = _llguidance()
    return llg.tiktoken.lltokenizer_from_encoding(get_tokenizer(), eos_token=RETURN)


def _close_objects(schema: Any) -> Any:
    """Objects that list `properties` and say nothing of `additionalProperties` get no other
    keys: the output still validates against the schema, and the model cannot wander off into
    invented keys (OpenAI's strict mode requires the same of the schemas it takes)."""
    if isinstance(schema, list):
        return [_close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (_close_objects(v) if k not in ("enum", "const", "default", "examples") else v)
           for k, v in schema.items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out \
            and "patternProperties" not in out and "unevaluatedProperties" not in out:
        out["additionalProperties"] = False
    return out


class Grammar:
    """A compiled JSON schema: `matcher()` gives a fresh llguidance matcher for one request."""

    def __init__(self, schema: Dict[str, Any], where: str):
        llg = _llguidance()
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: the schema must be a JSON object")
        self.schema = schema
        try:
            self.grammar = llg.LLMatcher.grammar_from_json_schema(
                _close_objects(copy.deepcopy(schema)), defaults=dict(JSON_OPTIONS))
        except (ValueError, TypeError) as e:
            raise SchemaError(f"{where}: {e}") from None
        is_error, msgs = llg.LLMatcher.validate_grammar_with_warnings(self.grammar,
                                                                      ll_tokenizer())
        if is_error:
            raise SchemaError(f"{where}: unsupported or invalid schema: {'; '.join(msgs)}")

    def matcher(self):
        llg = _llguidance()
        m = llg.LLMatcher(ll_tokenizer(), self.grammar, log_level=0)
        if m.is_error():
            raise SchemaError(f"schema could not be compiled: {m.get_error()}")
        return m


ANY_OBJECT = {"type": "object"}


def grammar_for_format(fmt: Any, where: str) -> Optional[Grammar]:
    """OpenAI's response_format (chat) / text.format (responses): None for plain text."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise SchemaError(f"{where}: must be an object with a 'type' (text, json_object or "
                          "json_schema)")
    t = fmt["type"]
    if t == "text":
        return None
    if t == "json_object":
        return Grammar(ANY_OBJECT, where)
    if t == "json_schema":
        # chat nests {"json_schema": {"name", "schema", "strict"}}; responses flattens it
        spec = fmt.get("json_schema", fmt)
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise SchemaError(f"{where}.json_schema.schema: must be a JSON schema object")
        return Grammar(spec.get("schema") or ANY_OBJECT, where + ".schema")
    raise SchemaError(f"{where}.type = {t!r}: must be text, json_object or json_schema")


def strict_tool_grammars(tools: Optional[Sequence[Dict[str, Any]]], where: str = "tools"
                         ) -> Dict[str, Grammar]:
    """{function name: grammar of its arguments} for the tools marked strict: true (chat's
    {"type": "function", "function": {...}} or responses' flat {"type": "function", ...})."""
    out: Dict[str, Grammar] = {}
    for i, t in enumerate(tools or []):
        if not isinstance(t, dict):
            continue
        fn = t.get("function") if isinstance(t.get("function"), dict) else t
        if fn.get("strict") is True and isinstance(fn.get("name"), str):
            params = fn.get("parameters") or {"type": "object", "properties": {}}
            out[fn["name"]] = Grammar(params, f"{where}[{i}].parameters")
    return out


def _header_tokens(text: str) -> List[int]:
    return get_tokenizer().encode(text, allowed_special="all")


class HarmonyConstraint:
    """The token constraint of one request (see the module docstring).

    final: the grammar of the final answer (None: the answer is free). tools: {name: grammar}
    for strict functions. tool_names: every function the model may call (the headers it may
    open when `final` is set).
    """

    def __init__(self, final: Optional[Grammar] = None,
                 tools: Optional[Dict[str, Grammar]] = None,
                 tool_names: Sequence[str] = ()):
        self.final = final
        self.tools = dict(tools or {})
        self.parser = harmony.HarmonyParser()
        self.failed: Optional[str] = None     # why the constraint gave up, if it did
        self.state = "header"                 # header | free | json | done
        self.matcher = None
        self.end_token = RETURN
        self._future = None
        self._lock = threading.Lock()
        # the headers allowed when the final answer is constrained, as token sequences
        self._headers: Optional[List[List[int]]] = None
        if final is not None:
            heads = ["<|channel|>analysis<|message|>", "<|channel|>final<|message|>"]
            heads += [f"<|channel|>commentary to=functions.{n} <|constrain|>json<|message|>"
                      for n in tool_names]
            self._headers = [_header_tokens(h) for h in heads]
        self._after_start = [_header_tokens("assistant")]
        self._prefix: List[int] = []          # header tokens so far

    # -- what the generation loop asks ----------------------------------------------------
    def active(self) -> bool:
        if self.failed:
            return False
        if self.state == "json":
            return True
        return self.state in ("header", "between", "start") and self._headers is not None

    def allowed(self) -> Optional[np.ndarray]:
        """Ascending token ids allowed next, or None when anything goes."""
        try:
            if self.state == "json":
                return self._json_mask()
            if self._headers is not None and self.state in ("header", "between", "start"):
                return self._header_mask()
        except Exception as e:   # noqa: BLE001 - never stops a generation; the answer is free
            self.failed = f"constraint error: {e}"
        return None

    def prepare(self) -> None:
        """Start computing the next mask (json state) on a worker thread."""
        if self.state == "json" and not self.failed and self._future is None:
            self._future = _POOL.submit(self._compute_json_mask)

    def observe(self, token: int) -> None:
        try:
            self._observe(token)
        except Exception as e:   # noqa: BLE001
            self.failed = f"constraint error: {e}"

    # -- internals --------------------------------------------------------------------------
    def _sequences(self) -> List[List[int]]:
        heads = self._headers
        if any(m.channel == "analysis" for m in self.parser.messages):
            heads = heads[1:]                 # one reasoning message, then the answer or a call
        if self.state == "between":
            return [[START] + self._after_start[0] + h for h in heads]
        if self.state == "start":
            return [self._after_start[0] + h for h in heads]
        return heads

    def _header_mask(self) -> np.ndarray:
        n = len(self._prefix)
        nxt = {s[n] for s in self._sequences() if len(s) > n and s[:n] == self._prefix}
        if not nxt:
            self.failed = "header left the allowed forms"
            return None
        return np.array(sorted(nxt), dtype=np.int64)

    def _compute_json_mask(self) -> np.ndarray:
        with self._lock:
            bits = self.matcher.compute_bitmask()
        V = get_tokenizer().n_vocab
        ok = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), bitorder="little")[:V]
        ids = np.flatnonzero(ok).astype(np.int64)
        if ok[RETURN] and self.end_token != RETURN:
            ids = np.union1d(ids[ids != RETURN], [self.end_token]).astype(np.int64)
        return ids

    def _json_mask(self) -> Optional[np.ndarray]:
        fut, self._future = self._future, None
        ids = fut.result() if fut is not None else self._compute_json_mask()
        if ids.size == 0:
            self.failed = "the grammar allows no token: " + (self.matcher.get_error() or "?")
            return None
        return ids

    def _observe(self, token: int) -> None:
        if self._future is not None:          # a mask for a position that did not need it
            self._future.result()
            self._future = None
        events = self.parser.feed(token)
        if self.state == "json":
            if token == self.end_token:
                self.state = "done"
                return
            with self._lock:
                ok = self.matcher.consume_token(token)
            if not ok:
                self.failed = "a token outside the grammar was emitted (forced?): " + \
                    self.matcher.get_error()
            return
        if self.state in ("header", "between", "start"):
            self._prefix.append(token)
            for e in events:
                if e.kind == "start":          # the header ended with <|message|>
                    self._prefix = []
                    self._open(e.message)
                    return
            if token in (END, RETURN, CALL):   # a header that never reached <|message|>
                self._prefix = []
                self.state = "done" if token != END else "between"
            elif token == START and self.state == "header" and len(self._prefix) > 1:
                self._prefix, self.state = [], "start"
            return
        # free content (reasoning, or an unconstrained message)
        if token == END:
            self.state, self._prefix = "between", []
        elif token == START:
            self.state, self._prefix = "start", []
        elif token in (RETURN, CALL):
            self.state = "done"

    def _open(self, msg) -> None:
        """A message's header is complete: decide what constrains its content."""
        rec = msg.recipient or ""
        grammar = None
        if rec.startswith("functions."):
            grammar = self.tools.get(rec[len("functions."):])
            self.end_token = CALL
        elif msg.channel == "final" and not (rec and rec != "assistant"):
            grammar = self.final
            self.end_token = RETURN
        if grammar is None:
            self.state = "free"
            return
        self.matcher = grammar.matcher()
        self.state = "json"
        self.prepare()


def make_constraint(final: Optional[Grammar], tools: Optional[Dict[str, Grammar]],
                    tool_names: Sequence[str]) -> Optional[HarmonyConstraint]:
    if final is None and not tools:
        return None
    return HarmonyConstraint(final, tools, tool_names)
