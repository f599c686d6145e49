"""The built-in tools' own costs: starting a sandboxed python session, one small call, and the
browser's indexing and search over a generated corpus, each the median of repeated runs.

    python bench/bench_tools.py [--repeats 7] [--docs 2000] [--out FILE]
"""
import argparse
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time, write_json  # noqa: E402

WORDS = ("apple banana cherry orchard harvest river mountain engine kernel sandbox network "
         "index query ranking document citation cursor window python browser offline").split()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--docs", type=int, default=2000, help="files in the generated corpus")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from gptoss.tools import Browser, PythonTool
    rows = []

    def record(name, seconds, **extra):
        rows.append({"what": name, "median_s": seconds, **extra})
        print(f"{name:44s} {seconds * 1e3:10.2f} ms")

    t, _ = median_time(lambda: PythonTool(timeout=30).close(), a.repeats)
    record("python: start + close a sandboxed session", t)
    with PythonTool(timeout=30) as py:
        t, _ = median_time(lambda: py.run("sum(range(1000))"), a.repeats * 5)
        record("python: run('sum(range(1000))')", t)
        t, _ = median_time(lambda: py.run("print('x' * 10_000_000)"), a.repeats)
        record("python: 10 MB printed (cut to the cap)", t)

    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as d:
        for k in range(a.docs):
            body = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40))
            with open(os.path.join(d, f"doc{k:05d}.md"), "w") as f:
                f.write(f"# Document {k}\n\n{body}\n")
        t, _ = median_time(lambda: Browser(corpus=d, index_path=os.path.join(d, f".i{rng.random()}")),
                           1, warmup=0)
        record(f"browser: index {a.docs} files (40 lines each)", t, docs=a.docs)
        b = Browser(corpus=d)
        t, _ = median_time(lambda: b.search("orchard harvest sandbox"), a.repeats * 3)
        record("browser: search (3 words, top 10)", t)
        t, _ = median_time(lambda: b.open(id=0, cursor=0), a.repeats * 3)
        record("browser: open a result", t)
    if a.out:
        write_json(a.out, {"bench": "tools", "rows": rows})


if __name__ == "__main__":
    main()
