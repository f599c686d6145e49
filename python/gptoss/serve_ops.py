"""Operating `gptoss serve`: metrics, limits, the access log and a clean shutdown.

`install(app, server, limits)` (called by server.create_app) adds:
- `GET /metrics` in the Prometheus text format (prometheus-client, in the `serve` extra):
  requests by endpoint and status, prompt and completion tokens, time to first token and
  inter-token latency histograms, generations by how they ended, running / prefilling / waiting
  sequences and the KV cache positions in use.
- Limits, each with a clear answer: a request body over `max_body_bytes` gets 413; more generation
  requests than the batch plus the waiting queue hold (`max_batch` + `max_waiting`) get 429 with
  `Retry-After`; a generation still running after `request_timeout` seconds ends (408 before the
  response started, an error event and `[DONE]` on a stream). A prompt past the context is a 400
  (server.fit_context).
- One access-log line per request (logger `gptoss.access`, at the end of the response, with its
  status, bytes and duration), and no traceback to a client: an error after a stream started
  ends the stream with an OpenAI-style `error` event and `[DONE]`.
- Shutdown (`run`): on SIGTERM or SIGINT the server stops taking requests (new ones get 503,
  the listening socket closes), lets running generations finish for `shutdown_grace` seconds,
  then ends those still running (their streams get an error event and `[DONE]`), and returns, so
  `gptoss serve` exits 0.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Dict, Optional

from .server import RequestError, _error_body

access_log = logging.getLogger("gptoss.access")
log = logging.getLogger("gptoss.serve")


@dataclasses.dataclass
class Limits:
    max_batch: int = 16                  # sequences in the batch at once (C++ engine)
    max_waiting: int = 64                # generation requests waiting for room; more get 429
    max_body_bytes: int = 8 << 20        # request bodies past this get 413
    request_timeout: Optional[float] = None   # seconds a generation may run (None: no limit)
    shutdown_grace: float = 5.0          # seconds running streams get after SIGTERM/SIGINT
    prefill_chunk: int = 256             # prompt tokens per step while others decode (0: whole)

    def check(self) -> "Limits":
        for name in ("max_batch", "max_body_bytes"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"{name}={v!r}: must be an integer >= 1")
        for name in ("max_waiting", "prefill_chunk"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"{name}={v!r}: must be an integer >= 0")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ValueError(f"request_timeout={self.request_timeout!r}: must be > 0 (or None)")
        if not self.shutdown_grace >= 0:
            raise ValueError(f"shutdown_grace={self.shutdown_grace!r}: must be >= 0")
        return self


class RequestTimeout(RequestError):
    def __init__(self, seconds: float):
        super().__init__(f"the request ran past the server's timeout of {seconds:g} s",
                         status=408, code="request_timeout")
        self.kind = "timeout"


class ServerShutdown(RequestError):
    def __init__(self):
        super().__init__("the server is shutting down", status=503, code="server_shutdown")
        self.kind = "server_error"


class BodyTooLarge(RequestError):
    def __init__(self, limit: int):
        super().__init__(f"the request body is larger than the server's limit of {limit} bytes",
                         status=413, code="request_too_large")
        self.kind = "invalid_request_error"


def error_json(e: RequestError) -> Dict[str, Any]:
    return _error_body(str(e), e.param, e.code, getattr(e, "kind", "invalid_request_error"))


# ------------------------------------------------------------------------------------ metrics
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _prometheus():
    try:
        import prometheus_client
    except ImportError as e:
        raise RuntimeError(f"gptoss serve needs prometheus-client for /metrics ({e}); install it "
                           "with pip install 'gptoss[serve]'") from None
    return prometheus_client


class Ops:
    """The server's operational state: metrics, limits, in-flight requests, shutdown."""

    def __init__(self, server, limits: Limits):
        pc = _prometheus()
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        self.server = server
        self.limits = limits
        self.app = None
        self._paths = None
        self.in_flight = 0                     # generation requests in the server (event loop)
        self.draining = False
        self.stop_at: Optional[float] = None   # time.monotonic() at which generations are ended
        self._duration = 1.0                   # moving average of a generation request's seconds
        self.registry = pc.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = pc.Counter("gptoss_requests", "HTTP requests by endpoint and status",
                                   ["endpoint", "status"], registry=r)
        self.prompt_tokens = pc.Counter("gptoss_prompt_tokens", "prompt tokens of generations",
                                        registry=r)
        self.completion_tokens = pc.Counter("gptoss_completion_tokens", "tokens generated",
                                            registry=r)
        self.finished = pc.Counter("gptoss_generations_finished",
                                   "generations by how they ended", ["reason"], registry=r)
        self.ttft = pc.Histogram("gptoss_time_to_first_token_seconds",
                                 "from the request reaching the engine to its first token",
                                 buckets=TTFT_BUCKETS, registry=r)
        self.itl = pc.Histogram("gptoss_inter_token_latency_seconds",
                                "between consecutive tokens of one generation",
                                buckets=ITL_BUCKETS, registry=r)
        self.rejected = pc.Counter("gptoss_requests_rejected",
                                   "requests refused by a limit", ["limit"], registry=r)
        ops = self

        class Live:
            def collect(self):
                for name, doc, value in ops.live():
                    yield GaugeMetricFamily(name, doc, value=value)
                for name, doc, value, counter in ops.prefix_cache():
                    yield (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc,
                                                                                  value=value)

            def describe(self):
                return []
        r.register(Live())

    # ---------------------------------------------------------------- gauges
    def prefix_cache(self):
        """The engine's prefix-cache counters, as the scheduler last read them (the scheduler
        thread owns the engine), or read here when there is no scheduler."""
        s = self.server.scheduler
        if s is not None:
            st = s.prefix_stats
        else:
            eng = self.server.model.engine
            st = eng.prefix_cache_stats() if hasattr(eng, "prefix_cache_stats") else None
        if not st:
            return []
        return [
            ("gptoss_prefix_cache_hit_tokens", "prompt positions taken from the prefix cache",
             st["hit_tokens"], True),
            ("gptoss_prefix_cache_miss_tokens", "prompt positions computed by prefills that "
             "looked in the prefix cache", st["miss_tokens"], True),
            ("gptoss_prefix_cache_evictions", "KV pages and tails dropped from the prefix cache",
             st["evictions"], True),
            ("gptoss_prefix_cache_pages", "KV pages in the prefix cache", st["cached_pages"],
             False),
            ("gptoss_prefix_cache_idle_pages", "cached KV pages no sequence holds",
             st["idle_pages"], False),
            ("gptoss_prefix_cache_tails", "cached partial last pages of finished sequences",
             st.get("tails", 0), False),
            ("gptoss_prefix_cache_bytes", "bytes of the KV pages in the prefix cache, tails "
             "included", st["bytes"], False),
        ]

    def live(self):
        s = self.server.scheduler
        lim = self.limits
        if s is not None:
            running, prefilling, waiting = s.decoding, s.prefilling, s.queued
            kv = s.kv_tokens
        else:   # one generation at a time under the server's lock
            running = 1 if self.server.lock.locked() else 0
            prefilling = 0
            waiting = max(0, self.in_flight - running)
            eng = self.server.model.engine
            kv = int(getattr(eng, "position", 0)) if running else 0
        ctx = self.server.model.max_context
        return [
            ("gptoss_running_sequences", "sequences decoding", running),
            ("gptoss_prefilling_sequences", "sequences whose prompt is being fed", prefilling),
            ("gptoss_waiting_requests", "generation requests waiting for room in the batch",
             waiting),
            ("gptoss_in_flight_requests", "generation requests in the server", self.in_flight),
            ("gptoss_kv_cache_tokens", "positions held in the KV caches of all sequences", kv),
            ("gptoss_kv_cache_capacity_tokens", "positions the batch can hold "
             "(max batch x context)", (lim.max_batch if s is not None else 1) * ctx),
            ("gptoss_max_batch", "sequences the batch holds at once",
             lim.max_batch if s is not None else 1),
            ("gptoss_draining", "1 while shutting down", 1 if self.draining else 0),
        ]

    def endpoint_of(self, path: str) -> str:
        """The metrics label of a request the router did not see: its route, or "other"."""
        if self._paths is None:
            self._paths = {getattr(r, "path", None) for r in self.app.routes} - {None}
        return path if path in self._paths else "other"

    @property
    def capacity(self) -> int:
        """Generation requests the server holds at once before answering 429."""
        batch = self.limits.max_batch if self.server.scheduler is not None else 1
        return batch + self.limits.max_waiting

    def retry_after(self) -> int:
        return max(1, math.ceil(self._duration))

    def note_duration(self, seconds: float) -> None:
        self._duration += 0.2 * (seconds - self._duration)

    # ---------------------------------------------------------------- shutdown
    def begin_shutdown(self) -> None:
        """Stop taking requests now; end running generations after the grace period."""
        if self.draining:
            return
        self.draining = True
        self.stop_at = time.monotonic() + self.limits.shutdown_grace
        if self.server.scheduler is not None:
            self.server.scheduler.shutdown_at(self.stop_at)
        # called from a signal handler: the logging lock may be held by the interrupted code
        threading.Thread(target=log.warning, daemon=True, args=(
            "shutting down: no new requests; running generations get %g s",
            self.limits.shutdown_grace)).start()

    def stopping(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    # ---------------------------------------------------------------- generations
    def wrap_generate(self, generate: Callable) -> Callable:
        """`generate` (Model's or the scheduler's) that also records the metrics of the
        generation, and ends it at the request timeout or the end of the shutdown grace."""
        ops = self
        timeout = self.limits.request_timeout

        def timed_generate(*args, **kwargs):
            if ops.stopping():
                raise ServerShutdown()
            t0 = time.monotonic()
            gen = generate(*args, **kwargs)
            deadline = None if timeout is None else t0 + timeout
            if hasattr(gen, "deadline"):         # the scheduler ends it itself, even in the queue
                gen.deadline = deadline
            ops.prompt_tokens.inc(len(gen.prompt_tokens))
            inner = gen._it

            def timed():
                last = None
                try:
                    while True:
                        if ops.stopping():
                            gen.stop_reason = "shutdown"
                            break
                        if deadline is not None and time.monotonic() >= deadline:
                            gen.stop_reason = "timeout"
                            break
                        try:
                            tok = next(inner)
                        except StopIteration:
                            break
                        now = time.monotonic()
                        if last is None:
                            ops.ttft.observe(now - t0)
                        else:
                            ops.itl.observe(now - last)
                        last = now
                        ops.completion_tokens.inc()
                        yield tok
                except GeneratorExit:     # the client went away, or a stop string matched
                    ops.finished.labels("closed").inc()
                    raise
                except Exception:
                    ops.finished.labels("error").inc()
                    raise
                finally:
                    close = getattr(inner, "close", None)
                    if close:
                        close()
                reason = gen.stop_reason or "cancelled"
                ops.finished.labels(reason).inc()
                if reason == "timeout":
                    raise RequestTimeout(timeout)
                if reason == "shutdown":
                    raise ServerShutdown()
            gen._it = timed()
            return gen
        return timed_generate


# ------------------------------------------------------------------------------------ ASGI layer
def _headers(scope) -> Dict[bytes, bytes]:
    return {k.lower(): v for k, v in scope.get("headers", [])}


async def _send_json(send, status: int, body: Dict[str, Any], extra=()):
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *extra]})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class OpsMiddleware:
    """Limits, metrics and the access log around every HTTP request (outermost of the app's own
    middleware), and a clean end to a stream that fails after it started."""

    def __init__(self, app, ops: Ops):
        self.app = app
        self.ops = ops

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ops, lim = self.ops, self.ops.limits
        t0 = time.monotonic()
        method, path = scope.get("method", ""), scope.get("path", "")
        st: Dict[str, Any] = {"status": None, "bytes": 0, "sse": False, "done": False}

        async def send_w(msg):
            if msg["type"] == "http.response.start":
                st["status"] = msg["status"]
                ctype = dict((k.lower(), v) for k, v in msg.get("headers", [])).get(
                    b"content-type", b"")
                st["sse"] = ctype.startswith(b"text/event-stream")
            elif msg["type"] == "http.response.body":
                st["bytes"] += len(msg.get("body", b""))
                if not msg.get("more_body", False):
                    if st["sse"]:
                        # a stream's end is held back until the app returns: if it raised
                        # instead (a middleware may end the body first), the end carries an
                        # error event
                        if msg.get("body"):
                            await send({**msg, "more_body": True})
                        st["final"] = True
                        return
                    st["done"] = True
            await send(msg)

        generation = method == "POST" and path.startswith("/v1/") and \
            not path.startswith("/v1/_test")
        counted = False
        try:
            headers = _headers(scope)
            refused = None
            if ops.draining and path != "/health" and path != "/metrics":
                refused = ("draining", 503, ServerShutdown(),
                           [(b"connection", b"close"), (b"retry-after", b"5")])
            elif headers.get(b"content-length", b"0").isdigit() and \
                    int(headers.get(b"content-length", b"0")) > lim.max_body_bytes:
                refused = ("body_size", 413, BodyTooLarge(lim.max_body_bytes),
                           [(b"connection", b"close")])
            elif generation and ops.in_flight >= ops.capacity:
                e = RequestError(f"the server is at capacity ({ops.capacity} generation requests "
                                 "running or waiting); retry later", status=429,
                                 code="rate_limit_exceeded")
                refused = ("queue", 429, e,
                           [(b"retry-after", str(ops.retry_after()).encode())])
            if refused:
                ops.rejected.labels(refused[0]).inc()
                body = error_json(refused[2])
                if refused[1] == 429:
                    body["error"]["type"] = "rate_limit_error"
                await _send_json(send_w, refused[1], body, refused[3])
                return
            if generation:
                ops.in_flight += 1
                counted = True
            # the body is read here, up to the limit (bodies are JSON requests, small): past it
            # a 413 before the app sees anything; the app then reads the same body
            receive_w = receive
            if method in ("POST", "PUT", "PATCH"):
                parts, size = [], 0
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        break
                    size += len(msg.get("body", b""))
                    if size > lim.max_body_bytes:
                        ops.rejected.labels("body_size").inc()
                        await _send_json(send_w, 413, error_json(BodyTooLarge(lim.max_body_bytes)),
                                         [(b"connection", b"close")])
                        return
                    parts.append(msg.get("body", b""))
                    if not msg.get("more_body", False):
                        break
                replay = [{"type": "http.request", "body": b"".join(parts), "more_body": False}]
                if msg["type"] != "http.request":
                    replay = [msg]

                async def receive_w():
                    return replay.pop(0) if replay else await receive()
            try:
                await self.app(scope, receive_w, send_w)
                if st.get("final"):
                    st["done"] = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except RequestError as e:     # a limit ended a generation (timeout, shutdown)
                if st["status"] is None:
                    await _send_json(send_w, e.status, error_json(e))
                elif not st["done"]:
                    await self._end_stream(send, st, e)
            except Exception as e:   # noqa: BLE001
                if st["status"] is None:
                    st["status"] = 500
                    raise            # not started: the app's handler answers (a JSON 500)
                if not st["done"]:
                    await self._end_stream(send, st, e)
                log.error("%s %s failed after its response started: %r", method, path, e)
        finally:
            if counted:
                ops.in_flight -= 1
                ops.note_duration(time.monotonic() - t0)
            route = scope.get("route")      # set by the router; refused requests never got there
            endpoint = getattr(route, "path", None) or ops.endpoint_of(path)
            status = st["status"] or 500
            ops.requests.labels(endpoint, str(status)).inc()
            client = scope.get("client") or ("-", 0)
            access_log.info('%s:%s "%s %s HTTP/%s" %s %dB %.1fms', client[0], client[1], method,
                            path, scope.get("http_version", "1.1"), status, st["bytes"],
                            1000 * (time.monotonic() - t0))

    @staticmethod
    async def _end_stream(send, st, e: Exception) -> None:
        """End a started response whose app failed: an SSE stream gets an error event and
        [DONE]; anything else just ends."""
        tail = b""
        if st["sse"]:
            if isinstance(e, RequestError):
                body = error_json(e)
            else:
                body = _error_body("internal error while generating", kind="server_error")
            tail = f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        st["bytes"] += len(tail)
        st["done"] = True


def install(app, server, limits: Optional[Limits] = None) -> Ops:
    """Add /metrics, the limits, the access log and the shutdown state to `app` (a FastAPI app
    made by server.create_app for `server`)."""
    from fastapi.responses import Response
    limits = (limits or Limits()).check()
    ops = Ops(server, limits)
    ops.app = app
    if server.scheduler is not None:
        server.scheduler.max_batch = limits.max_batch
        server.scheduler.prefill_chunk = limits.prefill_chunk
    server.generate = ops.wrap_generate(server.generate)
    server.ops = ops
    app.state.ops = ops

    pc = _prometheus()

    @app.get("/metrics")
    async def metrics():
        return Response(pc.generate_latest(ops.registry), media_type=pc.CONTENT_TYPE_LATEST)

    app.add_middleware(OpsMiddleware, ops=ops)
    return ops


# ------------------------------------------------------------------------------------ running
def run(app, host: str, port: int, log_level: str = "info") -> None:
    """uvicorn with our shutdown: SIGTERM/SIGINT stop new requests at once, running ones get
    the grace period, then the process returns normally (exit 0). A second SIGINT forces it."""
    import uvicorn
    ops: Ops = app.state.ops
    grace = ops.limits.shutdown_grace

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            ops.begin_shutdown()
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn's re-raises the signal after shutting down (the process would then die of
            # it); ours only handles it, so that a requested shutdown returns normally
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            sigs = (signal.SIGINT, signal.SIGTERM)
            old = {s: signal.signal(s, self.handle_exit) for s in sigs}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    _configure_access_log(log_level)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=grace + 2.0)
    server = GracefulServer(config)
    try:
        server.run()
    finally:
        sched = ops.server.scheduler
        if sched is not None:
            sched.close()


def _configure_access_log(log_level: str) -> None:
    level = logging.getLevelName(log_level.upper()) if isinstance(log_level, str) else log_level
    if not isinstance(level, int):
        level = logging.INFO
    for lg in (access_log, log):
        lg.setLevel(level)
        if not lg.handlers:
            h = logging.StreamHandler()
            h.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
            lg.addHandler(h)
        lg.propagate = False
