"""The `gptoss` command: info, generate, make-random-checkpoint."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import List, Optional


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000.0
    return str(n)


def cmd_info(args) -> int:
    from . import __version__, backends
    print(f"gptoss {__version__}")
    print("backends:")
    for b in backends():
        print(f"  {b}")
    if args.model:
        from .checkpoint import Weights
        from .testing import resolve_model_path
        w = Weights(resolve_model_path(args.model, progress=True), layout=args.layout)
        cfg = w.config
        print(f"checkpoint: {w.directory}")
        print(f"layout: {w.layout}" + (f"  ({w.note})" if w.note else ""))
        print(f"config: {w.config_path}")
        for f in w.files:
            print(f"  {os.path.basename(f)}: {_human(os.path.getsize(f))}")
        print(f"total on disk: {_human(w.nbytes())}")
        for k, v in dataclasses.asdict(cfg).items():
            if k == "layer_sliding":
                v = "".join("S" if s else "F" for s in v) + "  (S = sliding window, F = full)"
            print(f"  {k}: {v}")
    return 0


def cmd_generate(args) -> int:
    from .model import Model
    t0 = time.perf_counter()
    model = Model.from_pretrained(args.model, backend=args.backend, layout=args.layout,
                                  progress=True, prefix_cache_gb=args.prefix_cache_gb,
                                  repack=args.repack, cache_dir=args.cache_dir,
                                  batch_invariant=args.batch_invariant,
                                  kv_dtype=args.kv_dtype, dense_weights=args.dense_weights)
    if args.verbose:
        print(f"[backend: {model.backend_note}; loaded in {time.perf_counter() - t0:.1f} s]",
              file=sys.stderr)
    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    stops = None if args.stop_token is None else args.stop_token
    gen = model.generate(prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, top_k=args.top_k, seed=args.seed, stop_tokens=stops)
    t1 = time.perf_counter()
    first = None
    for tok in gen:
        if first is None:
            first = time.perf_counter()
        sys.stdout.write(tok.text)
        sys.stdout.flush()
    t2 = time.perf_counter()
    sys.stdout.write("\n")
    if args.verbose:
        n = len(gen.tokens)
        rate = (n - 1) / (t2 - first) if n > 1 and first else float("nan")
        print(f"[{len(gen.prompt_tokens)} prompt tokens, {n} generated, stop: {gen.stop_reason}; "
              f"first token {((first or t2) - t1):.2f} s, {rate:.2f} tok/s after]", file=sys.stderr)
    return 0


def cmd_make_random(args) -> int:
    from .testing import percent_progress, write_random_checkpoint
    write_random_checkpoint(args.path, preset=args.preset, layout=args.layout, seed=args.seed,
                            max_shard_bytes=args.max_shard_bytes,
                            progress=percent_progress(f"writing {args.path}"))
    print(args.path)
    return 0


def cmd_chat(args) -> int:
    from .chat_events import Done, ReasoningDelta, TextDelta, ToolCall
    from .model import Model
    model = Model.from_pretrained(args.model, backend=args.backend, progress=True,
                                  prefix_cache_gb=args.prefix_cache_gb, repack=args.repack,
                                  cache_dir=args.cache_dir,
                                  batch_invariant=args.batch_invariant,
                                  kv_dtype=args.kv_dtype, dense_weights=args.dense_weights)
    effort = args.reasoning_effort
    history = [{"role": "system", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    tools = None
    if args.python or args.browser_corpus:
        from .tools import Browser, BuiltinTools, PythonTool
        tools = BuiltinTools(
            python=PythonTool(timeout=args.python_timeout, sandbox=args.python_sandbox)
            if args.python else None,
            browser=Browser(corpus=args.browser_corpus) if args.browser_corpus else None)
    try:
        return _chat_loop(args, model, effort, history, interactive, tools)
    finally:
        if tools is not None:
            tools.close()


def _show_tool_result(text: str, max_lines: int = 12) -> str:
    lines = text.rstrip("\n").split("\n")
    if len(lines) > max_lines:
        lines = lines[:max_lines] + [f"... ({len(lines) - max_lines} more lines)"]
    return "\n".join("  | " + ln for ln in lines)


def _chat_loop(args, model, effort, history, interactive, tools) -> int:
    from .chat_events import Done, ReasoningDelta, TextDelta, ToolCall
    from .tools.loop import BuiltinToolCall, BuiltinToolResult
    if interactive:
        print(f"[gptoss chat: {model.backend_note}; reasoning {effort}. /effort low|medium|high, "
              "/reset, /quit]", file=sys.stderr)
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd == "/quit":
                break
            if cmd == "/reset":
                history = history[:1] if args.system else []
                if tools is not None:
                    tools.reset()
                    if tools.python is not None:
                        tools.python.restart()
                print("[history cleared]", file=sys.stderr)
            elif cmd == "/effort" and arg.strip() in ("low", "medium", "high"):
                effort = arg.strip()
                print(f"[reasoning effort: {effort}]", file=sys.stderr)
            else:
                print(f"[unknown command {line!r}]", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        reasoning, content, calls = [], [], []
        shown_reasoning = False
        extra = {"builtin_tools": tools, "max_tool_calls": args.max_tool_calls} if tools else {}
        if args.test_forced_tokens:            # test hook: the first turn's output, forced
            extra["forced_tokens"] = json.loads(args.test_forced_tokens)
            args.test_forced_tokens = None
        added = None
        for ev in model.chat(history, reasoning_effort=effort, max_tokens=args.max_tokens,
                             temperature=args.temperature, seed=args.seed, **extra):
            if isinstance(ev, ReasoningDelta):
                reasoning.append(ev.text)
                if not args.hide_reasoning:
                    if not shown_reasoning:
                        sys.stdout.write("[reasoning] ")
                        shown_reasoning = True
                    sys.stdout.write(ev.text)
            elif isinstance(ev, TextDelta):
                if shown_reasoning and not content:
                    sys.stdout.write("\n[answer] ")
                content.append(ev.text)
                sys.stdout.write(ev.text)
            elif isinstance(ev, ToolCall):
                calls.append(ev)
                sys.stdout.write(f"\n[tool call] {ev.name}({ev.arguments})")
            elif isinstance(ev, BuiltinToolCall):
                sys.stdout.write(f"\n[{ev.recipient}] {ev.arguments}\n")
            elif isinstance(ev, BuiltinToolResult):
                sys.stdout.write(f"[{ev.recipient} result]\n{_show_tool_result(ev.content)}\n")
            elif isinstance(ev, Done):
                added = ev.messages if tools is not None else None
                sys.stdout.write("\n")
                if args.verbose:
                    print(f"[{ev.stop_reason}; {ev.usage['completion_tokens']} tokens"
                          + (f"; malformed: {ev.malformed}" if ev.malformed else "") + "]",
                          file=sys.stderr)
            sys.stdout.flush()
        if added is not None:                  # the turn's messages, tool runs included
            history.extend(added)
            continue
        msg = {"role": "assistant", "content": "".join(content), "reasoning": "".join(reasoning)}
        if calls:
            msg["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}}
                                 for c in calls]
        history.append(msg)
    return 0


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"gptoss serve needs FastAPI, uvicorn and prometheus-client ({e}); "
                           "install them with pip install 'gptoss[serve]'") from None
    from .model import Model
    from .serve_ops import Limits
    from .server import serve
    limits = Limits(max_batch=args.max_batch, max_waiting=args.max_waiting,
                    max_body_bytes=args.max_body_bytes,
                    request_timeout=args.request_timeout or None,
                    shutdown_grace=args.shutdown_grace, prefill_chunk=args.prefill_chunk).check()
    if args.ray is not None:
        return _serve_ray(args, limits)
    for flag, v in (("--replicas", args.replicas), ("--replica-cpus", args.replica_cpus)):
        if v is not None:
            raise ValueError(f"{flag} needs --ray")
    model = Model.from_pretrained(args.model, backend=args.backend, progress=True,
                                  max_context=args.max_context, threads=args.threads,
                                  prefix_cache_gb=args.prefix_cache_gb, repack=args.repack,
                                  cache_dir=args.cache_dir,
                                  batch_invariant=args.batch_invariant,
                                  kv_dtype=args.kv_dtype, dense_weights=args.dense_weights)
    print(f"[gptoss serve: {model.backend_note}; http://{args.host}:{args.port}/v1]",
          file=sys.stderr)
    serve(model, host=args.host, port=args.port, model_name=args.model_name or
          os.path.basename(os.path.normpath(args.model)), api_key=args.api_key or
          os.environ.get("GPTOSS_API_KEY"), enable_test_hooks=args.enable_test_hooks,
          log_level=args.log_level, limits=limits, python_tool=args.python_tool,
          browser_corpus=args.browser_corpus)
    return 0


def _serve_ray(args, limits) -> int:
    """gptoss serve --ray [ADDRESS] --replicas N: the app of gptoss/ray_serve.py on a Ray cluster."""
    if args.replicas is not None and args.replicas < 1:
        raise ValueError(f"--replicas {args.replicas}: must be at least 1")
    if args.enable_test_hooks:
        raise ValueError("--enable-test-hooks is not supported with --ray")
    from . import ray_serve
    ray_serve.require_ray()
    mk = {"max_context": args.max_context} if args.max_context else {}
    if args.threads:
        mk["threads"] = args.threads
    if args.prefix_cache_gb is not None:
        mk["prefix_cache_gb"] = args.prefix_cache_gb
    for k in ("repack", "cache_dir", "batch_invariant", "kv_dtype", "dense_weights"):
        if getattr(args, k) is not None:
            mk[k] = getattr(args, k)
    sk = {"model_name": args.model_name or os.path.basename(os.path.normpath(args.model)),
          "limits": limits}
    key = args.api_key or os.environ.get("GPTOSS_API_KEY")
    if key:
        sk["api_key"] = key
    ray_serve.run(args.model, address=None if args.ray in (None, "local") else args.ray,
                  replicas=args.replicas or 2, host=args.host, port=args.port,
                  backend=args.backend, cpus_per_replica=args.replica_cpus,
                  model_kwargs=mk, server_kwargs=sk)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptoss", description="Run gpt-oss-20b/120b offline.")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("info", help="backends, and a checkpoint's config, layout and sizes")
    i.add_argument("model", nargs="?", help="checkpoint directory or random:PRESET")
    i.add_argument("--layout", choices=["hf", "original"], default=None)
    i.set_defaults(fn=cmd_info)

    g = sub.add_parser("generate", help="stream a completion of a prompt")
    g.add_argument("--model", "-m", required=True,
                   help="checkpoint directory, or random:tiny / random:20b / random:120b "
                        "(random weights: the text is meaningless)")
    g.add_argument("prompt", nargs="?", help="the prompt (read from stdin if absent)")
    g.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"])
    g.add_argument("--layout", choices=["hf", "original"], default=None)
    g.add_argument("--max-new-tokens", "-n", type=int, default=64)
    g.add_argument("--temperature", "-t", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop-token", type=int, action="append",
                   help="stop at this token id (repeatable; default <|endoftext|> and <|return|>)")
    g.add_argument("--verbose", "-v", action="store_true", help="print backend and speed")
    _engine_flags(g)
    g.set_defaults(fn=cmd_generate)

    c = sub.add_parser("chat", help="interactive Harmony chat (reasoning shown apart)")
    c.add_argument("--model", "-m", required=True)
    c.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"])
    c.add_argument("--reasoning-effort", "-r", default="medium", choices=["low", "medium", "high"])
    c.add_argument("--hide-reasoning", action="store_true")
    c.add_argument("--system", default=None, help="instructions (become the developer message)")
    c.add_argument("--max-tokens", type=int, default=1024)
    c.add_argument("--temperature", "-t", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=None)
    c.add_argument("--verbose", "-v", action="store_true")
    c.add_argument("--python", action="store_true",
                   help="give the model the built-in python tool (sandboxed; see README)")
    c.add_argument("--python-timeout", type=float, default=120.0, help="seconds per python call")
    c.add_argument("--python-sandbox", default="auto", choices=["auto", "unshare", "none"],
                   help="'none' runs model-written code UNSANDBOXED")
    c.add_argument("--browser-corpus", default=None, metavar="DIR",
                   help="give the model the built-in browser over this folder of text, Markdown "
                        "and HTML files")
    c.add_argument("--max-tool-calls", type=int, default=8,
                   help="built-in tool calls per turn at most")
    c.add_argument("--test-forced-tokens", default=None, help=argparse.SUPPRESS)
    _engine_flags(c)
    c.set_defaults(fn=cmd_chat)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    s.add_argument("--model", "-m", required=True)
    s.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu", "numpy"])
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--model-name", default=None, help="the id /v1/models reports")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' "
                   "(or set GPTOSS_API_KEY)")
    s.add_argument("--log-level", default="info")
    s.add_argument("--max-context", type=int, default=None,
                   help="serve at most this many positions per request (default: the model's)")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the C++ engine (default: all cores)")
    s.add_argument("--max-batch", type=int, default=16,
                   help="sequences decoding together at most (C++ engine; default 16)")
    s.add_argument("--max-waiting", type=int, default=64,
                   help="generation requests that may wait for room; past it 429 (default 64)")
    s.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens fed per step while other requests decode (0: a prompt "
                        "is fed whole; default 256)")
    s.add_argument("--max-body-bytes", type=int, default=8 << 20,
                   help="larger request bodies get 413 (default 8 MiB)")
    s.add_argument("--request-timeout", type=float, default=None,
                   help="seconds a generation may take (default: no limit)")
    s.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="on SIGTERM/SIGINT, seconds running streams get to finish (default 5)")
    _engine_flags(s)
    s.add_argument("--python-tool", default="off", choices=["sandbox", "off"],
                   help="offer the code_interpreter tool on /v1/responses: the built-in python "
                        "tool, sandboxed (default off)")
    s.add_argument("--browser-corpus", default=None, metavar="DIR",
                   help="offer the web_search / browser_search tool on /v1/responses: the "
                        "built-in browser over this folder of text, Markdown and HTML files")
    s.add_argument("--enable-test-hooks", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="serve replicas on Ray Serve: on the cluster at ADDRESS (auto, HOST:PORT "
                        "or ray://HOST:10001), or a local one started for this (no ADDRESS); "
                        "needs pip install 'gptoss[ray]'")
    s.add_argument("--replicas", type=int, default=None,
                   help="with --ray: engine replicas (default 2), each asking Ray for one GPU "
                        "(--backend cuda) or --replica-cpus CPUs")
    s.add_argument("--replica-cpus", type=float, default=None,
                   help="with --ray: CPUs each replica asks for (default 1; also its engine's "
                        "threads)")
    s.set_defaults(fn=cmd_serve)

    r = sub.add_parser("make-random-checkpoint", help="write a random checkpoint (real layout)")
    r.add_argument("path")
    r.add_argument("--preset", default="tiny", choices=["tiny", "20b", "120b"])
    r.add_argument("--layout", default="hf", choices=["hf", "original", "both"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--max-shard-bytes", type=int, default=None)
    r.set_defaults(fn=cmd_make_random)
    return p


def _engine_flags(p) -> None:
    """The engine options every command that loads a model takes."""
    p.add_argument("--prefix-cache-gb", type=float, default=None, metavar="GB",
                   help="KV pages of earlier prompts kept for reuse (C++ engines; default 2, 0: off)")
    p.add_argument("--repack", choices=("auto", "memory", "off"), default=None,
                   help="C++ CPU engine (AVX2 and up): the experts repacked once into the weight cache "
                        "and mapped (auto, the default), into memory, or kept as in the checkpoint")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where repacked weights are cached (default $GPTOSS_CACHE or ~/.cache/gptoss)")
    p.add_argument("--batch-invariant", action="store_const", const=True, default=None,
                   help="logits bit-identical however a prompt is split, cached or batched: on "
                        "CUDA the per-row kernels, on the CPU at the amx level the experts' integer "
                        "code instead of the AMX-BF16 tiles (slower prefill; other CPU levels "
                        "always are)")
    p.add_argument("--kv-dtype", choices=("auto", "float32", "bf16"), default=None,
                   help="how the KV cache holds keys and values: auto (float32 on the CPU, bf16 "
                        "on CUDA), bf16 (half the memory and the bytes long contexts read) or "
                        "float32 (not CUDA)")
    p.add_argument("--dense-weights", choices=("bf16", "int8"), default=None,
                   help="C++ CPU engine: the dense matrices (QKV, output, router, unembedding) as "
                        "the checkpoint's bf16 (default) or quantized once to int8 per 32-block "
                        "(an accuracy trade: a decode step reads 1.3 GB of them instead of 2.4 GB "
                        "for 20b)")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f"gptoss: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
