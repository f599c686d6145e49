"""Scale-out on Ray Serve: N replicas of the engine behind one OpenAI-compatible ingress.

`gptoss serve --ray [ADDRESS] --replicas N`, or for `serve run` / KubeRay:

    serve run gptoss.ray_serve:app_builder model=CKPT replicas=2

Each replica is a deployment of its own (`gptoss-replica-I`, one Ray Serve replica each, which Ray
restarts when it dies) that loads the model and runs the single-process server's FastAPI app
(server.create_app) in-process: a request reaches that app as an ASGI call, so every endpoint,
limit and error is the single-process server's. The ingress (`gptoss-ingress`) only chooses a
replica and relays the request body to it and the response (or its event stream) back:

- affinity: a conversation goes to the replica that served its prefix before, so the engine's
  prefix cache (csrc/engine: pages of 256 tokens) holds it. The key is a hash of the prompt's
  leading tokens: for chat, the rendered prompt up to the end of the first user message (at most
  its first page, 256 tokens), which every later turn of the conversation starts with; for
  completions the prompt's first 256 tokens; for responses `previous_response_id` (the replica
  that stored that response) or else the instructions and first input item. Keys are kept in a
  bounded LRU table;
- otherwise the less loaded (requests in flight) of two replicas drawn at random;
- a replica that fails before its response has started (it died, or is restarting) is marked
  down and the request goes to another one; a stream whose replica fails after it started ends
  with an error event; a replica marked down is probed every second and used again once it
  answers.

Ray is imported only by this module; `import gptoss` never imports it.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import random
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

PAGE_TOKENS = 256          # the engine's KV page (csrc/engine/engine.h kPage)
INGRESS_NAME = "gptoss-ingress"
REPLICA_PREFIX = "gptoss-replica-"
APP_NAME = "gptoss"


def require_ray():
    """Import ray and ray.serve, or raise a RuntimeError naming the extra that provides them."""
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"serving on Ray needs Ray Serve ({e}); install it with "
                           "pip install 'gptoss[ray]'") from None
    return ray, serve


# ------------------------------------------------------------------------------ the replica
class _ASGICall:
    """One HTTP request run through an ASGI app in this process; the app's messages come out of
    `messages()`. Closing it tells the app the client went away."""

    def __init__(self, app, method: str, path: str, query: str,
                 headers: Sequence[Tuple[str, str]], body: bytes):
        self.app = app
        self.q: asyncio.Queue = asyncio.Queue()
        self.gone = asyncio.Event()
        self._body_sent = False
        self.scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": method, "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "client": ("127.0.0.1", 0), "server": ("gptoss-replica", 0), "state": {}}
        self.body = body

    async def _receive(self):
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message):
        await self.q.put(message)

    async def messages(self):
        task = asyncio.ensure_future(self.app(self.scope, self._receive, self._send))
        task.add_done_callback(lambda _t: self.q.put_nowait(None))
        try:
            while True:
                m = await self.q.get()
                if m is None:
                    task.result()       # an exception the app let out (it handles its own)
                    return
                yield m
        finally:
            self.gone.set()
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), 30)
                except Exception:  # noqa: BLE001 - the client is gone; nothing to tell
                    task.cancel()


class GptossReplica:
    """A Ray Serve deployment: one Model and the single-process server app around it."""

    def __init__(self, model: str, name: str, backend: str = "auto",
                 model_kwargs: Optional[Dict[str, Any]] = None,
                 server_kwargs: Optional[Dict[str, Any]] = None):
        from .model import Model
        from .server import create_app
        self.name = name
        self.model = Model.from_pretrained(model, backend=backend, **(model_kwargs or {}))
        self.app = create_app(self.model, **(server_kwargs or {}))
        self.started = time.time()
        self.in_flight = 0
        self.served = 0
        self._lifespan: Optional[asyncio.Future] = None

    async def _startup(self):
        """Run the app's lifespan startup once (what uvicorn would do before the first request)."""
        if self._lifespan is not None:
            return await self._lifespan
        loop = asyncio.get_running_loop()
        self._lifespan = loop.create_future()
        done = self._lifespan
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "lifespan.startup"}
            await asyncio.Event().wait()       # shutdown never comes: the process just ends

        async def send(m):
            if m["type"] == "lifespan.startup.complete" and not done.done():
                done.set_result(None)
            elif m["type"] == "lifespan.startup.failed" and not done.done():
                done.set_exception(RuntimeError(f"replica startup failed: {m.get('message')}"))

        async def run():
            try:
                await self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                               receive, send)
            except Exception as e:  # noqa: BLE001 - an app without lifespan support
                if not done.done():
                    done.set_result(None) if not sent else done.set_exception(e)
            if not done.done():
                done.set_result(None)
        self._lifespan_task = asyncio.ensure_future(run())
        return await done

    async def forward(self, method: str, path: str, query: str,
                      headers: List[Tuple[str, str]], body: bytes):
        """Run one request through the app. Yields ("full", status, headers, body) for a plain
        response, or ("start", status, headers) and then body chunks for an event stream."""
        await self._startup()
        self.in_flight += 1
        call = _ASGICall(self.app, method, path, query, headers, body)
        msgs = call.messages()
        started = False
        try:
            status, out_headers, streaming, parts = 500, [], False, []
            async for m in msgs:
                if m["type"] == "http.response.start":
                    status = int(m["status"])
                    out_headers = [(k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in m.get("headers", [])]
                    ctype = next((v for k, v in out_headers if k.lower() == "content-type"), "")
                    streaming = ctype.startswith("text/event-stream")
                    if streaming:
                        started = True
                        yield ("start", status, out_headers + [("x-gptoss-replica", self.name)])
                elif m["type"] == "http.response.body":
                    chunk = m.get("body", b"")
                    if streaming:
                        if chunk:
                            yield chunk
                    else:
                        parts.append(chunk)
                    if not m.get("more_body", False):
                        break
            if not streaming:
                started = True
                yield ("full", status, out_headers + [("x-gptoss-replica", self.name)],
                       b"".join(parts))
            self.served += 1
        except Exception as e:  # noqa: BLE001 - the app let an error out: an error body, no trace
            if started:
                raise
            yield ("full", 500, [("content-type", "application/json"),
                                 ("x-gptoss-replica", self.name)],
                   json.dumps(_error_json(f"internal error: {type(e).__name__}: {e}",
                                          "internal_error")).encode())
        finally:
            self.in_flight -= 1
            await msgs.aclose()

    def stats(self) -> Dict[str, Any]:
        srv = self.app.state.server
        eng = self.model.engine
        out = {"name": self.name, "pid": os.getpid(), "started": self.started,
               "in_flight": self.in_flight, "served": self.served, "health": srv.health()}
        if hasattr(eng, "prefix_cache_stats"):
            out["prefix_cache"] = dict(eng.prefix_cache_stats())
        return out


# ------------------------------------------------------------------------------ routing
class Router:
    """Chooses a replica: affinity on a key, else the less loaded of two random ones. Pure Python
    (no Ray), so it is tested on its own as well as inside the ingress."""

    def __init__(self, n: int, max_keys: int = 100_000, rng: Optional[random.Random] = None):
        self.n = n
        self.in_flight = [0] * n
        self.served = [0] * n
        self.retried = [0] * n        # requests that failed on replica i and went elsewhere
        self.down_until = [0.0] * n
        self.keys: "collections.OrderedDict[str, int]" = collections.OrderedDict()
        self.max_keys = max_keys
        self.rng = rng or random.Random()

    def healthy(self, now: Optional[float] = None) -> List[int]:
        now = time.monotonic() if now is None else now
        return [i for i in range(self.n) if self.down_until[i] <= now]

    def remember(self, key: Optional[str], i: int) -> None:
        if key is None:
            return
        self.keys[key] = i
        self.keys.move_to_end(key)
        while len(self.keys) > self.max_keys:
            self.keys.popitem(last=False)

    def pick(self, keys: Sequence[Optional[str]] = (), exclude: Sequence[int] = ()) -> int:
        """The replica for a request with these affinity keys (most specific first)."""
        ok = [i for i in self.healthy() if i not in exclude]
        if not ok:                 # every replica is down or tried: try one not yet tried
            ok = [i for i in range(self.n) if i not in exclude] or list(range(self.n))
        for k in keys:
            if k is not None and k in self.keys and self.keys[k] in ok:
                self.keys.move_to_end(k)
                return self.keys[k]
        if len(ok) == 1:
            return ok[0]
        a, b = self.rng.sample(ok, 2)
        return a if self.in_flight[a] <= self.in_flight[b] else b

    def mark_down(self, i: int, seconds: float = 3600.0) -> None:
        self.down_until[i] = time.monotonic() + seconds

    def mark_up(self, i: int) -> None:
        self.down_until[i] = 0.0


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, separators=(",", ":"), default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def chat_key(body: Dict[str, Any]) -> Optional[str]:
    """Hash of the chat prompt's leading tokens: through the first user message, at most one page."""
    from . import chat as harmony
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    first_user = next((i for i, m in enumerate(messages)
                       if isinstance(m, dict) and m.get("role") == "user"), len(messages) - 1)
    tools = None if body.get("tool_choice") == "none" else body.get("tools")
    effort = body.get("reasoning_effort", "medium") or "medium"
    try:
        lead = harmony.render(messages[:first_user + 1], tools=tools, reasoning_effort=effort)
    except Exception:  # noqa: BLE001 - a bad request: the replica will say what is wrong
        return None
    lead = lead[:-2]               # without the `<|start|>assistant` the prompt would end with
    return "chat:" + _digest(lead[:PAGE_TOKENS])


def completion_key(body: Dict[str, Any]) -> Optional[str]:
    from .tokenizer import get_tokenizer
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return None
    toks = get_tokenizer().encode(prompt[:PAGE_TOKENS * 16], allowed_special="all")
    return "cmpl:" + _digest(toks[:PAGE_TOKENS])


def responses_keys(body: Dict[str, Any]) -> List[Optional[str]]:
    keys: List[Optional[str]] = []
    prev = body.get("previous_response_id")
    if isinstance(prev, str):
        keys.append("resp:" + prev)
    inp = body.get("input")
    first = inp[:PAGE_TOKENS * 4] if isinstance(inp, str) else (
        inp[0] if isinstance(inp, list) and inp else None)
    if first is not None:
        keys.append("rlead:" + _digest(body.get("instructions"), body.get("tools"),
                                       body.get("reasoning"), first))
    return keys


def routing_keys(path: str, body: Any) -> List[Optional[str]]:
    """Affinity keys of a request, most specific first."""
    if path.startswith("/v1/responses/"):        # GET/DELETE /v1/responses/{id}[/...]: its store
        return ["resp:" + path.split("/")[3]]
    if not isinstance(body, dict):
        return []
    keys: List[Optional[str]] = []
    if isinstance(body.get("prompt_cache_key"), str):      # the client's own grouping hint
        keys.append("pck:" + body["prompt_cache_key"])
    if path == "/v1/chat/completions":
        keys.append(chat_key(body))
    elif path == "/v1/completions":
        keys.append(completion_key(body))
    elif path == "/v1/responses":
        keys += responses_keys(body)
    return keys


def _response_id(data: bytes) -> Optional[str]:
    """The id of a Responses API object in a JSON body or in an event of its stream."""
    for line in data.split(b"\n"):
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line.startswith(b"{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            r = obj.get("response") if isinstance(obj.get("response"), dict) else obj
            rid = r.get("id")
            if isinstance(rid, str) and rid.startswith("resp"):
                return rid
    return None


def merge_metrics(texts: Sequence[Tuple[str, str]]) -> str:
    """Prometheus text from several replicas as one: each sample gains a `replica` label, and
    each metric's HELP/TYPE lines appear once, before its first sample."""
    seen, out = set(), []
    for name, text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                key = tuple(parts[1:3])
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and key not in seen:
                    seen.add(key)
                    out.append(line)
                continue
            label = f'replica="{name}"'
            head, sep, rest = line.partition("{")
            if sep:
                out.append(f"{head}{{{label},{rest}" if not rest.startswith("}") else
                           f"{head}{{{label}{rest}")
            else:
                metric, _, value = line.partition(" ")
                out.append(f"{metric}{{{label}}} {value}")
    return "\n".join(out) + "\n"


def _error_json(message: str, code: str, kind: str = "server_error") -> Dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def stream_error_event(path: str, message: str) -> bytes:
    """The event that ends a stream whose replica failed, in the stream's own format."""
    if path == "/v1/responses":
        ev = {"type": "error", "code": "replica_failed", "message": message, "param": None}
        return f"event: error\ndata: {json.dumps(ev)}\n\n".encode()
    return f"data: {json.dumps(_error_json(message, 'replica_failed'))}\n\n".encode()


# ------------------------------------------------------------------------------ the ingress
_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


class GptossIngress:
    """A Ray Serve deployment: routes each request to one of the replica deployments."""

    def __init__(self, replicas: List[Any], names: List[str], probe_s: float = 1.0):
        self.replicas = list(replicas)
        self.names = list(names)
        self.router = Router(len(self.replicas))
        self.probe_s = probe_s
        self._prober: Optional[asyncio.Task] = None

    # -- health -------------------------------------------------------------------------------
    async def _stats(self, i: int, timeout: float = 5.0) -> Optional[Dict[str, Any]]:
        try:
            return await asyncio.wait_for(self.replicas[i].stats.remote(), timeout)
        except Exception:  # noqa: BLE001 - down, or restarting
            return None

    async def _probe(self):
        while True:
            await asyncio.sleep(self.probe_s)
            for i in range(self.router.n):
                if self.router.down_until[i] > time.monotonic() and \
                        await self._stats(i, timeout=2.0) is not None:
                    self.router.mark_up(i)

    async def _health(self):
        from starlette.responses import JSONResponse
        stats = await asyncio.gather(*(self._stats(i) for i in range(self.router.n)))
        reps = []
        for i, st in enumerate(stats):
            # an answer is a successful probe: a replica reported up here is routed to from now
            # on, not only after the next round of the prober
            if st is not None and self.router.down_until[i] > time.monotonic():
                self.router.mark_up(i)
            reps.append({"name": self.names[i], "up": st is not None,
                         "ingress_in_flight": self.router.in_flight[i],
                         "ingress_served": self.router.served[i],
                         "ingress_retried": self.router.retried[i], **(st or {})})
        n_up = sum(r["up"] for r in reps)
        return JSONResponse({"status": "ok" if n_up == self.router.n else
                             ("degraded" if n_up else "down"),
                             "replicas": reps}, status_code=200 if n_up else 503)

    async def _metrics(self, request):
        """Every replica's /metrics, each sample labelled with its replica."""
        from starlette.responses import Response
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]

        async def one(i):
            try:
                gen = self.replicas[i].options(stream=True).forward.remote(
                    "GET", "/metrics", "", headers, b"")
                first = await asyncio.wait_for(gen.__anext__(), 10)
                return first if first[0] == "full" else None
            except Exception:  # noqa: BLE001 - a replica that is down has no metrics now
                return None
        got = await asyncio.gather(*(one(i) for i in range(self.router.n)))
        ok = [(self.names[i], g[3].decode()) for i, g in enumerate(got)
              if g is not None and g[1] == 200]
        if not ok:
            bad = next((g for g in got if g is not None), None)
            if bad is not None:            # e.g. a server without /metrics: its own answer
                return Response(bad[3], status_code=bad[1], headers=_clean(bad[2]))
            return Response(json.dumps(_error_json("no replica answered", "replica_unavailable")),
                            status_code=503, media_type="application/json")
        return Response(merge_metrics(ok), media_type="text/plain; version=0.0.4")

    # -- requests -----------------------------------------------------------------------------
    async def __call__(self, request):
        from starlette.responses import JSONResponse, Response, StreamingResponse
        if self._prober is None:
            self._prober = asyncio.ensure_future(self._probe())
        path = request.url.path
        if request.method == "GET" and path == "/health":
            return await self._health()
        if request.method == "GET" and path == "/metrics":
            return await self._metrics(request)
        body = await request.body()
        try:
            keys = routing_keys(path, json.loads(body) if body else None)
        except (ValueError, UnicodeDecodeError):
            keys = routing_keys(path, None)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        query = request.url.query or ""
        router = self.router
        tried: List[int] = []
        last_error = "no replica answered"
        for _attempt in range(router.n + 2):
            i = router.pick(keys, exclude=tried if len(tried) < router.n else ())
            router.in_flight[i] += 1
            gen = self.replicas[i].options(stream=True).forward.remote(
                request.method, path, query, headers, body)
            try:
                first = await gen.__anext__()
            except asyncio.CancelledError:
                router.in_flight[i] -= 1
                gen.cancel()
                raise
            except Exception as e:  # noqa: BLE001
                router.in_flight[i] -= 1
                if not _replica_gone(e):
                    return JSONResponse(_error_json(f"internal error: {type(e).__name__}",
                                                    "internal_error"), status_code=500)
                router.mark_down(i)        # it died or is restarting: another one takes it
                router.retried[i] += 1
                tried.append(i)
                last_error = f"{type(e).__name__}: {e}"
                continue
            for k in keys:
                router.remember(k, i)
            if first[0] == "full":
                router.in_flight[i] -= 1
                router.served[i] += 1
                _, status, out_headers, data = first
                if path == "/v1/responses" and status == 200:
                    router.remember(_response_id(data) and "resp:" + _response_id(data), i)
                return Response(data, status_code=status, headers=_clean(out_headers))
            _, status, out_headers = first
            return StreamingResponse(self._relay(i, gen, path), status_code=status,
                                     headers=_clean(out_headers),
                                     media_type="text/event-stream")
        msg = "no replica could serve the request (" + last_error.splitlines()[0][:300] + ")"
        return JSONResponse(_error_json(msg, "replica_unavailable"), status_code=503)

    async def _relay(self, i: int, gen, path: str):
        router = self.router
        seen_id = path != "/v1/responses"
        try:
            async for chunk in gen:
                if not seen_id:
                    rid = _response_id(chunk)
                    if rid:
                        router.remember("resp:" + rid, i)
                        seen_id = True
                yield chunk
            router.served[i] += 1
        except asyncio.CancelledError:
            gen.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - the replica died mid-stream
            if _replica_gone(e):
                router.mark_down(i)
            yield stream_error_event(path, f"the replica serving this stream failed "
                                           f"({type(e).__name__}); retry the request")
        finally:
            router.in_flight[i] -= 1


def _replica_gone(e: BaseException) -> bool:
    """Whether a handle call failed because its replica is dead or not there (not an error of
    the request itself)."""
    from ray import exceptions as rex
    gone = tuple(getattr(rex, n) for n in ("RayActorError", "ActorDiedError",
                                            "ActorUnavailableError", "NodeDiedError",
                                            "WorkerCrashedError") if hasattr(rex, n))
    if isinstance(e, gone):
        return True
    cause = getattr(e, "cause", None)          # a RayTaskError wrapping one of them
    return isinstance(cause, gone) if cause is not None else False


def _clean(headers: List[Tuple[str, str]]) -> Dict[str, str]:
    return {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}


# ------------------------------------------------------------------------------ building it
def build_app(model: str, replicas: int = 2, backend: str = "auto",
              cpus_per_replica: Optional[float] = None, gpus_per_replica: Optional[float] = None,
              model_kwargs: Optional[Dict[str, Any]] = None,
              server_kwargs: Optional[Dict[str, Any]] = None):
    """The Ray Serve application: `replicas` replica deployments of `model` and the ingress.

    model: a checkpoint directory every node can read, or random:PRESET.
    backend: as Model.from_pretrained; "cuda" replicas ask Ray for one GPU each
        (gpus_per_replica overrides), others for `cpus_per_replica` CPUs (default 1), which is
        also the C++ engine's thread count unless model_kwargs sets `threads`.
    model_kwargs: more Model.from_pretrained arguments (max_context, prefix_cache_gb, ...).
    server_kwargs: server.create_app arguments (model_name, api_key, ...).
    """
    _, serve = require_ray()
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"replicas={replicas!r}: must be an integer >= 1")
    if backend not in ("auto", "cuda", "cpu", "numpy"):
        raise ValueError(f"backend={backend!r}: must be one of auto, cuda, cpu, numpy")
    gpus = gpus_per_replica if gpus_per_replica is not None else (1 if backend == "cuda" else 0)
    cpus = 1.0 if cpus_per_replica is None else float(cpus_per_replica)
    if not cpus >= 0 or not gpus >= 0:
        raise ValueError("cpus_per_replica and gpus_per_replica must be >= 0")
    mk = dict(model_kwargs or {})
    if backend in ("auto", "cpu") and "threads" not in mk and cpus >= 1:
        mk["threads"] = int(cpus)
    sk = dict(server_kwargs or {})
    sk.setdefault("model_name", os.path.basename(os.path.normpath(model)))
    names = [f"{REPLICA_PREFIX}{i}" for i in range(replicas)]
    rep = serve.deployment(GptossReplica, num_replicas=1,
                           max_ongoing_requests=1000,
                           ray_actor_options={"num_cpus": cpus, "num_gpus": gpus})
    bound = [rep.options(name=n).bind(model, n, backend, mk, sk) for n in names]
    ingress = serve.deployment(GptossIngress, name=INGRESS_NAME, num_replicas=1,
                               max_ongoing_requests=10000,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(bound, names)


def _arg(args: Dict[str, Any], key: str, kind, default):
    v = args.get(key, default)
    if v is None or kind is None:
        return v
    try:
        return kind(v)
    except (TypeError, ValueError):
        raise ValueError(f"'{key}' must be {kind.__name__}, got {v!r}") from None


def app_builder(args: Dict[str, Any]):
    """For `serve run gptoss.ray_serve:app_builder model=CKPT replicas=2 backend=cpu` and Serve
    config files (KubeRay's RayService): args model (required), replicas, backend,
    cpus_per_replica, gpus_per_replica, max_context, prefix_cache_gb, repack, cache_dir,
    batch_invariant, kv_dtype, dense_weights, threads, model_name,
    api_key, and the server's limits max_batch, max_waiting, max_body_bytes, request_timeout,
    prefill_chunk (serve_ops.Limits)."""
    args = dict(args or {})
    limit_args = {"max_batch": int, "max_waiting": int, "max_body_bytes": int,
                  "request_timeout": float, "prefill_chunk": int}
    known = {"model", "replicas", "backend", "cpus_per_replica", "gpus_per_replica",
             "max_context", "prefix_cache_gb", "repack", "cache_dir", "batch_invariant",
             "kv_dtype", "dense_weights", "threads", "model_name",
             "api_key", *limit_args}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    if not args.get("model"):
        raise ValueError("'model' is required (a checkpoint directory or random:PRESET)")
    mk = {k: _arg(args, k, t, None) for k, t in (("max_context", int), ("threads", int),
                                                  ("prefix_cache_gb", float), ("repack", str),
                                                  ("cache_dir", str), ("kv_dtype", str),
                                                  ("dense_weights", str))
          if args.get(k) is not None}
    if args.get("batch_invariant") is not None:
        v = args["batch_invariant"]
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if isinstance(v, bool):
            mk["batch_invariant"] = v
        elif str(v).lower() in flags:
            mk["batch_invariant"] = flags[str(v).lower()]
        else:
            raise ValueError(f"'batch_invariant' must be true or false, got {v!r}")
    sk = {k: args[k] for k in ("model_name", "api_key") if args.get(k)}
    lim = {k: _arg(args, k, t, None) for k, t in limit_args.items() if args.get(k) is not None}
    if lim:
        from .serve_ops import Limits
        sk["limits"] = Limits(**lim).check()
    if "api_key" not in sk and os.environ.get("GPTOSS_API_KEY"):
        sk["api_key"] = os.environ["GPTOSS_API_KEY"]
    return build_app(str(args["model"]), replicas=_arg(args, "replicas", int, 2),
                     backend=str(args.get("backend", "auto")),
                     cpus_per_replica=_arg(args, "cpus_per_replica", float, None),
                     gpus_per_replica=_arg(args, "gpus_per_replica", float, None),
                     model_kwargs=mk, server_kwargs=sk)


def run(model: str, address: Optional[str], replicas: int, host: str = "127.0.0.1",
        port: int = 8000, **kwargs) -> None:
    """`gptoss serve --ray`: connect to (address) or start (None) a Ray cluster, run the app
    until Ctrl-C, then remove it (and stop the cluster this started)."""
    import signal
    ray, serve = require_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    def _stop(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _stop)     # a service manager's stop: clean up as on Ctrl-C
    if address:
        ray.init(address=address, log_to_driver=False)
    else:           # a cluster of this machine alone, on the loopback address
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(model, replicas=replicas, **kwargs), name=APP_NAME,
                  route_prefix="/")
        import sys
        print(f"[gptoss serve --ray: {replicas} replica(s); http://{host}:{port}/v1]",
              file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.delete(APP_NAME)
            if not address:
                serve.shutdown()
        finally:
            ray.shutdown()
