"""`gptoss serve` under load: what a long prompt does to streams already running, and throughput.

    python bench/bench_server.py --model random:tiny --long-prompt 4096
    python bench/bench_server.py --model mid            # a random 8-layer, 1024-wide checkpoint
    python bench/bench_server.py --model random:20b --long-prompt 4096 --max-tokens 16
    python bench/bench_server.py --model random:20b --multi-turn   # 10 turns, 2000-token system

1. Latency: for each --chunks value (0: a prompt is fed whole; N: N tokens per step between
   decode steps), a fresh server, --streams streaming requests running, then one --long-prompt
   token prompt arrives. Reported: the time to first token (TTFT) of the long request, and the
   inter-token latency (ITL, p50/p99/max) of the running streams before it arrived and while it
   was being fed (from its arrival to its first token).
2. Throughput: --concurrency requests at once (non-streaming /v1/completions, greedy, distinct
   prompts, --max-tokens each), completion tokens per second in all (median of --repeats; prompt
   prefill included), next to the engine's own decode_batch_sample rate at the same batch sizes
   (in this process, after the server has stopped): the gap is what the server costs.

3. --multi-turn (alone): a --turns turn chat with a --system-tokens token system prompt, each
   turn re-sending the conversation; time to first token and the cached tokens per turn, with
   the prefix cache on (2 GB) and off.

Writes bench/results/server.json (or --out).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, write_json  # noqa: E402

THREADS = None      # --threads: the C++ engine's threads, in the server and the engine run
MID = dict(num_layers=8, hidden_size=1024, num_heads=16, num_kv_heads=2, head_dim=64,
           num_experts=32, experts_per_token=4, intermediate_size=1024)


def resolve(model):
    """'mid': a random checkpoint between tiny and 20b, written once to the gptoss cache."""
    if model != "mid":
        return model
    from gptoss.testing import cache_dir, write_random_checkpoint
    path = os.path.join(cache_dir(), "bench-mid-" + "-".join(f"{v}" for v in MID.values()))
    if not os.path.exists(os.path.join(path, ".gptoss-complete")):
        print(f"writing the mid checkpoint to {path} ...", flush=True)
        write_random_checkpoint(path, preset="20b", **MID)
        open(os.path.join(path, ".gptoss-complete"), "w").write("ok\n")
    return path


def pct(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]


class Server:
    def __init__(self, model, *extra):
        import httpx
        self.httpx = httpx
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        threads = ["--threads", str(THREADS)] if THREADS else []
        self.proc = subprocess.Popen([sys.executable, "-m", "gptoss", "serve", "--model", model,
                                      "--port", str(self.port), "--log-level", "warning",
                                      *threads, *extra])
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(36000):
            if self.proc.poll() is not None:
                raise RuntimeError("the server exited")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class Stream(threading.Thread):
    """A streaming /v1/completions request; records when each token's event arrived."""

    def __init__(self, base, prompt, max_tokens):
        super().__init__(daemon=True)
        self.base, self.prompt, self.max_tokens = base, prompt, max_tokens
        self.t0 = None
        self.times = []
        self.stop = threading.Event()

    def run(self):
        import httpx
        body = {"model": "m", "prompt": self.prompt, "max_tokens": self.max_tokens,
                "stream": True, "temperature": 0}
        self.t0 = time.perf_counter()
        try:
            with httpx.stream("POST", self.base + "/v1/completions", json=body,
                              timeout=3600) as r:
                for line in r.iter_lines():
                    if self.stop.is_set():
                        return
                    if line.startswith("data: ") and line != "data: [DONE]":
                        d = json.loads(line[6:])
                        if d["choices"][0]["finish_reason"] is None:
                            self.times.append(time.perf_counter())
        except httpx.HTTPError:
            if not self.stop.is_set():
                raise


def long_prompt_text(n):
    """A prompt of exactly n tokens."""
    from gptoss.tokenizer import get_tokenizer
    enc = get_tokenizer()
    text = "Once" + " the" * (n - 1)
    got = len(enc.encode(text, allowed_special="all"))
    if got != n:
        raise RuntimeError(f"the long prompt is {got} tokens, not {n}")
    return text


def latency(model, chunk, streams, long_n, warm_tokens, ctx):
    srv = Server(model, "--prefill-chunk", str(chunk), "--max-context", str(ctx),
                 "--max-batch", str(streams + 1))
    try:
        running = [Stream(srv.base, f"Stream {i}: it began", ctx) for i in range(streams)]
        for s in running:
            s.start()
        while min(len(s.times) for s in running) < warm_tokens:
            time.sleep(0.01)
        text = long_prompt_text(long_n)
        t_arrive = time.perf_counter()
        long = Stream(srv.base, text, 4)
        long.start()
        while not long.times:
            if not long.is_alive():
                raise RuntimeError("the long request failed")
            time.sleep(0.005)
        t_first = long.times[0]
        end = time.perf_counter() + 120
        while time.perf_counter() < end and min(s.times[-1] for s in running) <= t_first:
            time.sleep(0.005)
        before, during = [], []
        for s in running:
            gaps = list(zip(s.times, s.times[1:]))
            before += [b - a for a, b in gaps if b < t_arrive]
            during += [b - a for a, b in gaps if b > t_arrive and a < t_first]
        for s in running:
            s.stop.set()
        long.join(60)
    finally:
        srv.close()
    row = {"prefill_chunk": chunk, "running_streams": streams, "long_prompt_tokens": long_n,
           "long_ttft_s": t_first - long.t0,
           "itl_before_p50_s": pct(before, 50), "itl_before_p99_s": pct(before, 99),
           "itl_during_p50_s": pct(during, 50), "itl_during_p99_s": pct(during, 99),
           "itl_during_max_s": max(during) if during else float("nan"),
           "tokens_during": len(during)}
    print(f"chunk {chunk:4d}: long prompt TTFT {row['long_ttft_s']:.2f} s; running streams' ITL "
          f"before p50 {row['itl_before_p50_s'] * 1e3:.0f} / p99 "
          f"{row['itl_before_p99_s'] * 1e3:.0f} ms, while it was fed p50 "
          f"{row['itl_during_p50_s'] * 1e3:.0f} / p99 {row['itl_during_p99_s'] * 1e3:.0f} / max "
          f"{row['itl_during_max_s'] * 1e3:.0f} ms ({len(during)} tokens)", flush=True)
    return row


def throughput(model, concurrency, max_tokens, repeats):
    import httpx
    srv = Server(model, "--max-batch", str(max(concurrency)))
    rows = []
    try:
        for c in concurrency:
            rates = []
            for r in range(repeats + 1):      # the first round warms up
                done = [0] * c

                def run(i):
                    resp = httpx.post(srv.base + "/v1/completions", timeout=3600, json={
                        "model": "m", "prompt": f"Request {r}-{i}: once upon a time",
                        "max_tokens": max_tokens, "temperature": 0})
                    done[i] = resp.json()["usage"]["completion_tokens"]
                t = time.perf_counter()
                ts = [threading.Thread(target=run, args=(i,)) for i in range(c)]
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
                if r:
                    rates.append(sum(done) / (time.perf_counter() - t))
            rows.append({"concurrency": c, "server_tok_s": statistics.median(rates),
                         "server_tok_s_all": rates})
    finally:
        srv.close()
    return rows


def engine_rate(model, batches, steps):
    """decode_batch_sample tokens per second at each batch size, in this process."""
    from gptoss import Model
    from gptoss.sampling import Sampler
    m = Model.from_pretrained(model, max_context=4096, threads=THREADS)
    eng = m.engine
    if not hasattr(eng, "decode_batch_sample"):
        return {}
    out = {}
    for b in batches:
        seqs = [eng.add_sequence() for _ in range(b)]
        for k, s in enumerate(seqs):
            eng.prefill_sequence(s, [100 + k, 200, 300, 400])
        samplers = [Sampler(0.0)] * b
        eng.decode_batch_sample(seqs, [5] * b, samplers)
        t = time.perf_counter()
        for _ in range(steps):
            eng.decode_batch_sample(seqs, [5] * b, samplers)
        out[b] = b * steps / (time.perf_counter() - t)
        for s in seqs:
            eng.remove_sequence(s)
    return out


def multi_turn(model, turns, system_tokens, max_tokens, cache_gb):
    """A chat of `turns` turns with a system prompt of about `system_tokens` tokens, each turn
    re-sending the whole conversation (as chat clients do): time to first token per turn, and
    the cached tokens the server reports, with the prefix cache at `cache_gb` (0: off)."""
    import httpx
    srv = Server(model, "--prefix-cache-gb", str(cache_gb), "--max-context",
                 str(system_tokens + turns * (max_tokens + 64) + 1024))
    rows = []
    try:
        msgs = [{"role": "system", "content": long_prompt_text(system_tokens)}]
        for t in range(turns):
            msgs.append({"role": "user", "content": f"Question {t + 1}: what next?"})
            body = {"model": "m", "messages": msgs, "max_tokens": max_tokens, "temperature": 0,
                    "stream": True, "stream_options": {"include_usage": True},
                    "reasoning_effort": "low"}
            t0 = time.perf_counter()
            first, text, usage = None, "", None
            with httpx.stream("POST", srv.base + "/v1/chat/completions", json=body,
                              timeout=3600) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    d = json.loads(line[6:])
                    if d.get("usage"):
                        usage = d["usage"]
                    for c in d.get("choices") or []:
                        delta = c.get("delta") or {}
                        piece = delta.get("content") or delta.get("reasoning_content") or ""
                        if piece and first is None:
                            first = time.perf_counter() - t0
                        text += delta.get("content") or ""
            rows.append({"turn": t + 1, "prompt_tokens": usage["prompt_tokens"],
                         "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                         "ttft_s": first})
            print(f"cache {cache_gb} GB, turn {t + 1:2d}: prompt {usage['prompt_tokens']:5d} "
                  f"tokens, cached {rows[-1]['cached_tokens']:5d}, TTFT "
                  f"{first if first is not None else float('nan'):.2f} s", flush=True)
            msgs.append({"role": "assistant", "content": text or "ok"})
    finally:
        srv.close()
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:tiny", help="a checkpoint, random:PRESET or mid")
    p.add_argument("--chunks", type=int, nargs="+", default=[0, 256])
    p.add_argument("--streams", type=int, default=3, help="streams running when it arrives")
    p.add_argument("--long-prompt", type=int, default=4096)
    p.add_argument("--warm-tokens", type=int, default=5)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--engine-steps", type=int, default=20)
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--multi-turn", action="store_true",
                   help="only the multi-turn run: TTFT per turn with the prefix cache on and off")
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--system-tokens", type=int, default=2000)
    p.add_argument("--cache-gb", type=float, nargs="+", default=[2, 0],
                   help="--multi-turn: the prefix-cache sizes to run (0: off)")
    p.add_argument("--threads", type=int, default=None,
                   help="C++ engine threads (default: all cores)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    global THREADS
    THREADS = a.threads
    model = resolve(a.model)
    result = {"model": a.model, "path": model, "machine": machine(), "threads": a.threads}
    if a.multi_turn:
        result["multi_turn"] = {f"cache_{gb}gb": multi_turn(model, a.turns, a.system_tokens,
                                                           a.max_tokens, gb)
                                for gb in a.cache_gb}
        out = a.out or os.path.join(os.path.dirname(__file__), "results", "server_multi_turn.json")
        write_json(out, result)
        print(f"wrote {out}")
        return
    if not a.skip_latency:
        ctx = a.long_prompt + 4096
        result["latency"] = [latency(model, c, a.streams, a.long_prompt, a.warm_tokens, ctx)
                             for c in a.chunks]
    if not a.skip_throughput:
        rows = throughput(model, a.concurrency, a.max_tokens, a.repeats)
        rates = engine_rate(model, a.concurrency, a.engine_steps)
        for row in rows:
            row["engine_decode_batch_tok_s"] = rates.get(row["concurrency"])
            eng = row["engine_decode_batch_tok_s"]
            print(f"concurrency {row['concurrency']:3d}: server {row['server_tok_s']:.1f} "
                  f"completion tok/s in all (median of {a.repeats}, prefill included); engine "
                  f"decode_batch_sample {eng:.1f} tok/s" if eng else "", flush=True)
        result["throughput"] = {"max_tokens": a.max_tokens, "rows": rows}
    out = a.out or os.path.join(os.path.dirname(__file__), "results", "server.json")
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
