"""An OpenAI-compatible HTTP server on FastAPI/uvicorn: `gptoss serve --model CKPT`.

Endpoints: POST /v1/chat/completions (streaming SSE or not), POST /v1/completions, GET /v1/models,
GET /health. On the C++ engine concurrent requests are batched continuously (batching.py): each
gets a sequence and KV cache of its own and all decode together, a step at a time. Other engines
have one KV cache, so requests are served one at a time in arrival order. Either way a generation
runs off the event loop, and a client that goes away stops its generation at the next token. Bad
requests get a 400 with an OpenAI-style error body; nothing a client sends can stop the server.
"""
import asyncio
import json
import secrets
import time
import uuid
from typing import Any, Dict, List, Optional

from . import chat as harmony
from . import openai_fields as fields
from .chat_events import Done, ReasoningDelta, TextDelta, ToolCall, run_chat
from .steering import chat_logprob_item, completion_logprobs


class RequestError(ValueError):
    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _error_body(message, param=None, code=None, kind="invalid_request_error"):
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


# ------------------------------------------------------------------------------ validation
def _num(body, key, default, lo, hi, kind=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and
                                                                 int(v) != v):
        raise RequestError(f"'{key}' must be {'an integer' if kind is int else 'a number'}", key)
    if not lo <= v <= hi:
        raise RequestError(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return kind(v)


def sampling_args(body: Dict[str, Any], model) -> Dict[str, Any]:
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = _num({"max_tokens": mt}, "max_tokens", 1024, 1, model.max_context, int)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) for s in stop)):
        raise RequestError("'stop' must be a string or a list of up to 4 strings", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError("'seed' must be an integer", "seed")
    n = body.get("n", 1)
    if n != 1:
        raise RequestError("only n = 1 is supported", "n")
    return dict(max_tokens=max_tokens,
                temperature=_num(body, "temperature", 1.0, 0.0, 2.0),
                top_p=_num(body, "top_p", 1.0, 1e-9, 1.0),
                seed=seed, stop=stop)


def fit_context(n_prompt: int, args: Dict[str, Any], max_context: int, param: str) -> None:
    """Refuse a prompt that fills the context; trim max_tokens to what is left of it."""
    if n_prompt >= max_context:
        raise RequestError(f"the prompt is {n_prompt} tokens; this model's context is "
                           f"{max_context}", param, code="context_length_exceeded")
    args["max_tokens"] = min(args["max_tokens"], max_context - n_prompt)


class Server:
    def __init__(self, model, model_name: str, api_key: Optional[str] = None,
                 enable_test_hooks: bool = False):
        self.model = model
        self.model_name = model_name
        self.api_key = api_key
        self.enable_test_hooks = enable_test_hooks
        self.lock = asyncio.Lock()
        self.forced: List[int] = []
        self.created = int(time.time())
        self.scheduler = None
        if hasattr(model.engine, "decode_batch"):
            from .batching import BatchScheduler
            self.scheduler = BatchScheduler(model)
        self.generate = self.scheduler.generate if self.scheduler else model.generate

    # ---------------------------------------------------------------------- generation
    async def _events(self, request, make_iter):
        """Run a generator of events on a worker thread, one item at a time (under the lock when
        the engine cannot batch). Stops, closing the generator, when the client disconnects."""
        loop = asyncio.get_running_loop()
        async with (_Nothing() if self.scheduler else self.lock):
            it = make_iter()
            sentinel = object()
            try:
                while True:
                    item = await loop.run_in_executor(None, next, it, sentinel)
                    if item is sentinel:
                        return
                    yield item
                    if await request.is_disconnected():
                        return
            finally:
                await loop.run_in_executor(None, it.close)

    def health(self) -> Dict[str, Any]:
        h = {"status": "ok", "model": self.model_name, "backend": self.model.backend,
             "batching": self.scheduler is not None}
        if self.scheduler:
            h["max_batch_seen"] = self.scheduler.max_batch_seen
        return h

    def take_forced(self) -> List[int]:
        f, self.forced = self.forced, []
        return f


class _Nothing:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


def create_app(model, model_name: str = "gpt-oss", api_key: Optional[str] = None,
               enable_test_hooks: bool = False, limits=None, tool_host=None):
    """limits: a serve_ops.Limits (batch, queue, body size, timeout, shutdown grace).
    tool_host: a responses_tools.ToolHost (the built-in tools /v1/responses runs), or None."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    srv = Server(model, model_name, api_key, enable_test_hooks)
    app = FastAPI(title="gptoss", version="0.1.0")
    app.state.server = srv

    def err(e: RequestError):
        return JSONResponse(_error_body(str(e), e.param, e.code), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        return JSONResponse(_error_body(str(exc.detail), code=str(exc.status_code)),
                            status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        return JSONResponse(_error_body(str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def any_error(request, exc):
        return JSONResponse(_error_body(f"internal error: {exc}", kind="server_error"),
                            status_code=500)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if srv.api_key and request.url.path.startswith("/v1/"):
            got = request.headers.get("authorization", "")
            # constant time, on bytes (a str with non-ASCII characters is refused by compare_digest)
            if not secrets.compare_digest(got.encode("latin-1", "replace"),
                                          f"Bearer {srv.api_key}".encode()):
                return JSONResponse(_error_body("invalid or missing API key", code="invalid_api_key",
                                                kind="authentication_error"), status_code=401)
        return await call_next(request)

    async def json_body(request: Request) -> Dict[str, Any]:
        return fields.json_object(await request.body(), RequestError)

    @app.get("/health")
    async def health():
        return srv.health()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": srv.model_name, "object": "model",
                                            "created": srv.created, "owned_by": "gptoss"}]}

    def error_response(message, param=None, code=None, status=400):
        return JSONResponse(_error_body(message, param, code), status_code=status)

    from . import responses as responses_api
    # tool_host: the built-in tools /v1/responses runs (responses_tools.ToolHost), or None
    responses_api.install(app, srv, sampling_args, fit_context, error_response, tool_host)

    def steer_error(e: Exception, where: str) -> JSONResponse:
        if isinstance(e, ImportError):
            return err(RequestError(str(e), where, status=501))
        return err(RequestError(str(e), "tools" if str(e).startswith("tools") else where))

    if enable_test_hooks:
        @app.post("/v1/_test/force")
        async def force(request: Request):
            """Test hook: the next generation starts with these tokens (ids, or Harmony text)."""
            try:
                body = await json_body(request)
                if "text" in body:
                    toks = model.tokenizer.encode(body["text"], allowed_special="all")
                else:
                    toks = [int(t) for t in body["tokens"]]
            except (RequestError, KeyError, TypeError, ValueError) as e:
                return err(e if isinstance(e, RequestError) else RequestError(str(e)))
            srv.forced = toks
            return {"forced": len(toks)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            body = await json_body(request)
            fields.check_chat(body)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise RequestError("'messages' must be a non-empty list", "messages")
            tools = body.get("tools")
            if tools is not None and not isinstance(tools, list):
                raise RequestError("'tools' must be a list", "tools")
            effort = body.get("reasoning_effort", "medium") or "medium"
            args = sampling_args(body, model)
            tool_choice = body.get("tool_choice")
            prompt = harmony.render(messages, tools=None if tool_choice == "none" else tools,
                                    reasoning_effort=effort,
                                    response_format=body.get("response_format"))
            fit_context(len(prompt), args, model.max_context, "messages")
            from .chat_events import forced_prefix
            forced_prefix(tool_choice, tools)        # validates tool_choice
        except harmony.ChatFormatError as e:
            return err(RequestError(str(e), "messages"))
        except (RequestError, fields.FieldError) as e:
            return err(RequestError(str(e), e.param, e.status, e.code))
        try:
            steer = fields.chat_steer(body, tools, tool_choice)
        except (ValueError, ImportError) as e:
            return steer_error(e, "response_format")
        want_lp = bool(body.get("logprobs"))
        enc = model.tokenizer
        forced = srv.take_forced()
        stream = bool(body.get("stream"))
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())

        def make_iter():
            return run_chat(model, messages, tools=tools, reasoning_effort=effort,
                            tool_choice=tool_choice, forced_tokens=forced or None, prompt=prompt,
                            generate=srv.generate, steer=steer, **args)

        if stream:
            async def sse():
                def chunk(delta, finish=None, usage=None, lps=None):
                    d = {"id": cid, "object": "chat.completion.chunk", "created": created,
                         "model": srv.model_name,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    if want_lp:
                        d["choices"][0]["logprobs"] = None if lps is None else {
                            "content": [chat_logprob_item(enc, t, lp) for t, lp in lps],
                            "refusal": None}
                    if usage is not None:          # stream_options.include_usage: its own chunk
                        d["choices"], d["usage"] = [], usage
                    return f"data: {json.dumps(d)}\n\n"
                yield chunk({"role": "assistant", "content": ""})
                n_calls = 0
                async for ev in srv._events(request, make_iter):
                    if isinstance(ev, ReasoningDelta):
                        yield chunk({"reasoning_content": ev.text})
                    elif isinstance(ev, TextDelta):
                        yield chunk({"content": ev.text}, lps=ev.logprobs or [])
                    elif isinstance(ev, ToolCall):
                        yield chunk({"tool_calls": [{"index": n_calls, "id": ev.id,
                                                     "type": "function",
                                                     "function": {"name": ev.name,
                                                                  "arguments": ev.arguments}}]})
                        n_calls += 1
                    elif isinstance(ev, Done):
                        yield chunk({}, _finish(ev))
                        if fields.include_usage(body):
                            yield chunk({}, usage=ev.usage)
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")

        reasoning, content, calls, done, lps = [], [], [], None, []
        async for ev in srv._events(request, make_iter):
            if isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
            elif isinstance(ev, TextDelta):
                content.append(ev.text)
                lps += ev.logprobs or []
            elif isinstance(ev, ToolCall):
                calls.append({"id": ev.id, "type": "function",
                              "function": {"name": ev.name, "arguments": ev.arguments}})
            elif isinstance(ev, Done):
                done = ev
        if done is None:     # the client went away
            return JSONResponse(_error_body("client disconnected"), status_code=499)
        msg = {"role": "assistant", "content": "".join(content) or None,
               "reasoning_content": "".join(reasoning) or None}
        if calls:
            msg["tool_calls"] = calls
        return {"id": cid, "object": "chat.completion", "created": created,
                "model": srv.model_name,
                "choices": [{"index": 0, "message": msg, "finish_reason": _finish(done),
                             "logprobs": {"content": [chat_logprob_item(enc, t, lp)
                                                      for t, lp in lps], "refusal": None}
                             if want_lp else None}],
                "usage": done.usage}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await json_body(request)
            fields.check_completion(body)
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise RequestError("'prompt' must be a non-empty string", "prompt")
            args = sampling_args(body, model)
            toks = model.tokenizer.encode(prompt, allowed_special="all")
            fit_context(len(toks), args, model.max_context, "prompt")
            steer = fields.completion_steer(body)
        except (RequestError, fields.FieldError) as e:
            return err(RequestError(str(e), e.param, e.status, e.code))
        want_lp = body.get("logprobs") is not None
        forced = srv.take_forced()
        cid = "cmpl-" + uuid.uuid4().hex
        created = int(time.time())
        stops = args.pop("stop") or []

        def make_iter():
            gen = srv.generate(toks, max_new_tokens=args["max_tokens"],
                               temperature=args["temperature"], top_p=args["top_p"],
                               seed=args["seed"], forced_tokens=forced or None,
                               **({"steer": steer} if steer else {}))
            text = ""
            try:
                for t in gen:
                    new = text + t.text
                    cut = min((new.find(s) for s in stops if s in new), default=-1)
                    if cut >= 0:
                        yield ("text", new[len(text):cut], t)
                        yield ("done", "stop", len(gen.tokens))
                        return
                    yield ("text", t.text, t, len(text))
                    text = new
                yield ("done", "stop" if gen.stop_reason == "stop_token" else "length",
                       len(gen.tokens))
            finally:
                gen.close()

        def usage(n):
            return {"prompt_tokens": len(toks), "completion_tokens": n,
                    "total_tokens": len(toks) + n}

        def lp_of(ev):
            t = ev[2]
            if not want_lp or t.logprob is None:
                return None
            return completion_logprobs(model.tokenizer, [t.id], [t.logprob],
                                       ev[3] if len(ev) > 3 else 0)

        if body.get("stream"):
            async def sse():
                async for ev in srv._events(request, make_iter):
                    if ev[0] == "text":
                        d = {"id": cid, "object": "text_completion", "created": created,
                             "model": srv.model_name,
                             "choices": [{"index": 0, "text": ev[1], "finish_reason": None,
                                          "logprobs": lp_of(ev)}]}
                    else:
                        d = {"id": cid, "object": "text_completion", "created": created,
                             "model": srv.model_name,
                             "choices": [{"index": 0, "text": "", "finish_reason": ev[1],
                                          "logprobs": None}]}
                        if fields.include_usage(body):   # its own chunk, as OpenAI sends it
                            yield f"data: {json.dumps(d)}\n\n"
                            d = dict(d, choices=[], usage=usage(ev[2]))
                    yield f"data: {json.dumps(d)}\n\n"
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        text, finish, n, toks_out, lps = [], None, 0, [], []
        async for ev in srv._events(request, make_iter):
            if ev[0] == "text":
                text.append(ev[1])
                if want_lp and ev[2].logprob is not None:
                    toks_out.append(ev[2].id)
                    lps.append(ev[2].logprob)
            else:
                finish, n = ev[1], ev[2]
        if finish is None:
            return JSONResponse(_error_body("client disconnected"), status_code=499)
        return {"id": cid, "object": "text_completion", "created": created,
                "model": srv.model_name,
                "choices": [{"index": 0, "text": "".join(text), "finish_reason": finish,
                             "logprobs": completion_logprobs(model.tokenizer, toks_out, lps)
                             if want_lp else None}],
                "usage": usage(n)}

    from . import serve_ops
    serve_ops.install(app, srv, limits)
    return app


def _finish(done: Done) -> str:
    return {"tool_calls": "tool_calls", "stop": "stop"}.get(done.stop_reason, "length")


def serve(model, host: str = "127.0.0.1", port: int = 8000, model_name: str = "gpt-oss",
          api_key: Optional[str] = None, enable_test_hooks: bool = False,
          log_level: str = "info", limits=None, python_tool: str = "off",
          browser_corpus: Optional[str] = None) -> None:
    """python_tool ("sandbox" or "off") and browser_corpus (a folder, or None): the built-in
    tools the Responses API offers (code_interpreter; web_search / browser_search)."""
    from . import serve_ops
    from .responses_tools import ToolHost
    host_tools = ToolHost(python=python_tool, browser_corpus=browser_corpus)
    app = create_app(model, model_name, api_key, enable_test_hooks, limits,
                     tool_host=host_tools)
    try:
        serve_ops.run(app, host=host, port=port, log_level=log_level)
    finally:
        host_tools.close()
