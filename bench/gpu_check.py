"""The one-command GPU check: build with CUDA, run the CUDA tests, run compute-sanitizer over the
CUDA kernels, time each CUDA kernel at the real shapes, and time the engines on random:20b, into
one JSON report and a short table. Meant for a machine with a GPU and no package registry:

    python bench/gpu_check.py [--skip-build] [--out bench/results/gpu_check.json]

Every step records what it ran, how long it took, whether it passed and its output's tail, so a
failure in one step never hides the others. It finishes well inside 10 minutes on an H100.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step(report, name, cmd, timeout=300, env=None):
    t = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        ok, out = r.returncode == 0, (r.stdout + r.stderr)
    except subprocess.TimeoutExpired as e:
        ok, out = False, f"timed out after {timeout} s: {e}"
    except OSError as e:
        ok, out = False, f"could not run: {e}"
    report["steps"].append({"name": name, "cmd": cmd if isinstance(cmd, str) else " ".join(cmd),
                            "ok": ok, "seconds": round(time.time() - t, 1), "tail": out[-4000:]})
    print(f"{'PASS' if ok else 'FAIL'}  {name}  ({time.time() - t:.1f} s)", flush=True)
    return ok, out


KERNEL_BENCH = r"""
import json
from gptoss import _C
out = {}
info = _C.build_info()
out["build"] = info
n, err = _C.cuda_device_count()
out["devices"] = n
if n:
    out["device"] = _C.cuda_device_name(0)
    # MXFP4 -> bf16 decode of one expert's W1 (5760 x 2880) and of 32 experts
    for name, rows in (("w1 one expert", 5760), ("w1 32 experts", 32 * 5760)):
        ms = _C.ops.cuda_bench_mxfp4_dequantize(rows, 90, 20)
        nbytes = rows * 90 * (16 + 1 + 64)          # read codes and scales, write bf16
        out[f"bf16_mf4_dequant {name}"] = {"ms": ms, "gb_s": nbytes / ms / 1e6}
print(json.dumps(out))
"""

SANITIZE = r"""
import numpy as np
from gptoss import _C
b = np.random.default_rng(0).integers(0, 256, (97, 5, 16), dtype=np.uint8)
s = np.full((97, 5), 120, np.uint8)
_C.ops.cuda_mxfp4_dequantize(b, s)
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_check.json"))
    a = p.parse_args()
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": []}
    step(report, "nvidia-smi", ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv"], 60)
    if not a.skip_build:
        step(report, "build (GPTOSS_CUDA=ON)", [sys.executable, "-m", "pip", "install",
                                                "--no-build-isolation", "--no-deps", "."],
             600, env={"GPTOSS_CUDA": "ON"})
    step(report, "CUDA tests", [sys.executable, "-m", "pytest", "-q", "tests/test_cuda.py"], 300)
    step(report, "CPU engine and kernel tests", [sys.executable, "-m", "pytest", "-q", "-x",
                                                 "tests/test_cpu_kernels.py",
                                                 "tests/test_cpu_engine.py"], 300)
    cs = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    for tool in ("memcheck", "racecheck"):
        ok, out = step(report, f"compute-sanitizer {tool}",
                       [cs, "--tool", tool, "--error-exitcode", "3", sys.executable, "-c",
                        SANITIZE], 300)
    ok, out = step(report, "CUDA kernel benchmarks", [sys.executable, "-c", KERNEL_BENCH], 120)
    if ok:
        try:
            report["kernels"] = json.loads(out.strip().splitlines()[-1])
        except ValueError:
            pass
    info_ok, info = step(report, "backends", [sys.executable, "-m", "gptoss", "info"], 60)
    report["cuda_engine"] = "available" if "cuda   available" in info else \
        "not built: this version has no CUDA engine (only the MXFP4 decode kernel)"
    step(report, "cpu engine random:20b", [sys.executable, "bench/bench_engine.py", "--model",
                                           "random:20b", "--backend", "cpu", "--prompt", "128",
                                           "--decode", "10"], 420)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2)
    print("\n".join(f"{'ok ' if s['ok'] else 'BAD'} {s['seconds']:7.1f} s  {s['name']}"
                    for s in report["steps"]))
    for k, v in (report.get("kernels") or {}).items():
        if isinstance(v, dict):
            print(f"    {k}: {v['ms']:.3f} ms, {v['gb_s']:.0f} GB/s")
    print(f"CUDA engine: {report['cuda_engine']}\nreport: {a.out}")
    return 0 if all(s["ok"] for s in report["steps"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
