"""Aggregate generation throughput of `gptoss serve` at several concurrency levels.

    python bench/bench_server.py --model random:20b --concurrency 1 4 --max-tokens 16

Starts the server on a free localhost port, sends `concurrency` /v1/completions requests at once
(greedy, distinct prompts), and reports completion tokens per second in all, the median over
--repeats rounds.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import write_json  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:20b")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    import httpx
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([sys.executable, "-m", "gptoss", "serve", "--model", a.model, "--port",
                             str(port), "--log-level", "warning"])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(6000):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        health = httpx.get(base + "/health").json()
        rows = []
        for c in a.concurrency:
            rates = []
            for r in range(a.repeats):
                done = [0] * c

                def run(i):
                    resp = httpx.post(base + "/v1/completions", timeout=600, json={
                        "model": "m", "prompt": f"Request {r}-{i}: once upon a time",
                        "max_tokens": a.max_tokens, "temperature": 0})
                    done[i] = resp.json()["usage"]["completion_tokens"]
                t = time.perf_counter()
                ts = [threading.Thread(target=run, args=(i,)) for i in range(c)]
                for th in ts:
                    th.start()
                for th in ts:
                    th.join()
                rates.append(sum(done) / (time.perf_counter() - t))
            rows.append({"concurrency": c, "tok_s_median": statistics.median(rates),
                         "tok_s": rates})
            print(f"concurrency {c}: {statistics.median(rates):.2f} completion tok/s in all "
                  f"(median of {a.repeats}; prompt prefill included)", flush=True)
        out = a.out or os.path.join(os.path.dirname(__file__), "results", "server.json")
        write_json(out, {"model": a.model, "health": health, "max_tokens": a.max_tokens,
                         "results": rows})
        print(f"wrote {out}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
