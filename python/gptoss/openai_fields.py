"""Every field of OpenAI's chat-completions and completions requests: honoured, or refused by name.

server.py calls `check_chat(body)` / `check_completion(body)` before anything runs. A field we
do not know, or one we know but cannot honour with the value given, is a 400 naming it; a field
accepted here does what OpenAI documents. The fields that carry no behaviour by definition
(`user`, `safety_identifier`: end-user identifiers; `prompt_cache_key`: a cache routing hint;
`service_tier` auto/default) are accepted after their type is checked.
`parallel_tool_calls`: gpt-oss makes at most one call per turn, which satisfies true and false.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from .steering import MAX_TOP_LOGPROBS, Steer


def json_object(raw: bytes, error=ValueError) -> Dict[str, Any]:
    """A request body as a JSON object; anything else raises `error` (the endpoint's 400)."""
    import json
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise error(f"request body is not valid JSON: {e}")
    if not isinstance(body, dict):
        raise error("request body must be a JSON object")
    return body

CHAT_FIELDS = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "seed", "stop", "stream", "stream_options", "tools", "tool_choice",
               "reasoning_effort", "response_format", "logprobs", "top_logprobs", "n", "user",
               "parallel_tool_calls", "presence_penalty", "frequency_penalty", "logit_bias",
               "safety_identifier", "prompt_cache_key", "service_tier", "store", "metadata",
               "modalities"}
COMPLETION_FIELDS = {"prompt", "model", "max_tokens", "temperature", "top_p", "seed", "stop",
                     "stream", "stream_options", "logprobs", "n", "user", "presence_penalty",
                     "frequency_penalty", "logit_bias", "best_of", "echo", "suffix",
                     "safety_identifier", "prompt_cache_key", "service_tier"}
MAX_COMPLETION_LOGPROBS = 5


class FieldError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param, self.status, self.code = param, 400, None


def _unknown(body, known):
    extra = sorted(set(body) - known)
    if extra:
        raise FieldError(f"unsupported field(s): {', '.join(extra)}", extra[0])


def _string(body, k):
    if body.get(k) is not None and not isinstance(body[k], str):
        raise FieldError(f"'{k}' must be a string", k)


def _bool(body, k):
    if body.get(k) is not None and not isinstance(body[k], bool):
        raise FieldError(f"'{k}' must be a boolean", k)


def _common(body) -> None:
    for k in ("user", "safety_identifier", "prompt_cache_key"):
        _string(body, k)
    _bool(body, "stream")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise FieldError(f"service_tier={body['service_tier']!r}: only 'auto' and 'default'",
                         "service_tier")
    so = body.get("stream_options")
    if so is not None:
        if not body.get("stream"):
            raise FieldError("'stream_options' needs stream: true", "stream_options")
        if not isinstance(so, dict) or set(so) - {"include_usage", "include_obfuscation"} or \
                so.get("include_obfuscation"):
            raise FieldError("stream_options: only include_usage is supported", "stream_options")
        if not isinstance(so.get("include_usage", False), bool):
            raise FieldError("stream_options.include_usage must be a boolean",
                             "stream_options.include_usage")
    for k in ("presence_penalty", "frequency_penalty"):
        v = body.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not -2 <= v <= 2):
            raise FieldError(f"'{k}' must be a number between -2 and 2", k)
    lb = body.get("logit_bias")
    if lb is not None:
        if not isinstance(lb, dict):
            raise FieldError("'logit_bias' must map token ids to numbers", "logit_bias")
        for t, v in lb.items():
            try:
                tid = int(t)
            except (TypeError, ValueError):
                tid = -1
            if not 0 <= tid < 201088 or isinstance(v, bool) or not isinstance(v, (int, float)) \
                    or not -100 <= v <= 100:
                raise FieldError(f"logit_bias[{t!r}]: keys must be token ids and values "
                                 "numbers between -100 and 100", "logit_bias")


def include_usage(body) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def check_chat(body: Dict[str, Any]) -> None:
    _unknown(body, CHAT_FIELDS)
    _common(body)
    _bool(body, "parallel_tool_calls")
    _bool(body, "logprobs")
    tl = body.get("top_logprobs")
    if tl is not None:
        if isinstance(tl, bool) or not isinstance(tl, int) or not 0 <= tl <= MAX_TOP_LOGPROBS:
            raise FieldError(f"'top_logprobs' must be an integer in [0, {MAX_TOP_LOGPROBS}]",
                             "top_logprobs")
        if not body.get("logprobs"):
            raise FieldError("'top_logprobs' needs logprobs: true", "top_logprobs")
    if body.get("store"):
        raise FieldError("store: true is not supported (chat completions are not stored)",
                         "store")
    if body.get("metadata"):
        raise FieldError("'metadata' is only kept with store: true, which is not supported",
                         "metadata")
    if body.get("modalities") not in (None, ["text"]):
        raise FieldError("modalities: only ['text']", "modalities")


def check_completion(body: Dict[str, Any]) -> None:
    _unknown(body, COMPLETION_FIELDS)
    _common(body)
    lp = body.get("logprobs")
    if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int)
                           or not 0 <= lp <= MAX_COMPLETION_LOGPROBS):
        raise FieldError(f"'logprobs' must be an integer in [0, {MAX_COMPLETION_LOGPROBS}]",
                         "logprobs")
    if body.get("best_of") not in (None, 1):
        raise FieldError("only best_of = 1 is supported", "best_of")
    if body.get("echo"):
        raise FieldError("echo: true is not supported", "echo")
    if body.get("suffix"):
        raise FieldError("'suffix' (insertion) is not supported", "suffix")


def penalties(body) -> Dict[str, Any]:
    return {"presence_penalty": float(body.get("presence_penalty") or 0.0),
            "frequency_penalty": float(body.get("frequency_penalty") or 0.0),
            "logit_bias": {int(k): float(v) for k, v in (body.get("logit_bias") or {}).items()}}


def completion_steer(body) -> Optional[Steer]:
    p = penalties(body)
    lp = body.get("logprobs")
    if lp is None and not (p["presence_penalty"] or p["frequency_penalty"] or p["logit_bias"]):
        return None
    return Steer(None, lp, **p)


def chat_steer(body, tools, tool_choice) -> Optional[Steer]:
    """The Steer of a chat request (response_format, strict tools, logprobs, penalties)."""
    from .chat_events import make_steer
    lp = (body.get("top_logprobs") or 0) if body.get("logprobs") else None
    s = make_steer(body.get("response_format"), tools, tool_choice, lp)
    p = penalties(body)
    if not (p["presence_penalty"] or p["frequency_penalty"] or p["logit_bias"]):
        return s
    return Steer(s.constraint if s else None, lp, **p)
