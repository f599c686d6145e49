"""The one-command GPU check, for the rare session with a GPU (and no package registry):

    python bench/gpu_check.py [--skip-build] [--quick] [--out bench/results/gpu_check.json]

Stages, each recorded (command, seconds, pass/fail, output tail) and the JSON rewritten after
every stage, so a run cut off still reports what it got:
 1. build the package for this GPU's architecture only (GPTOSS_CUDA=ON);
 2. the emulation's self-test kernels run natively (tests/test_cuda_emu.py: shuffles, barriers,
    mma fragments, ldmatrix, cp.async against plain loops). The emulator is checked against the
    same loops in CI, so a failure here voids the emulated test results;
 3. the CUDA kernel and backend tests natively (tests/test_cuda_*.py);
 4. compute-sanitizer memcheck, racecheck and synccheck over the kernel tests;
 5. each kernel family timed at the real shapes against the measured copy bandwidth / FLOP rate;
 6. the engine: batch-1 decode and 2048-token prefill of random:20b (and random:120b unless
    --quick), CUDA backend, on hollow checkpoints (random:PRESET:hollow: the matrices are made in
    device memory, so the 61 GB of 120b never touch the disk and nothing waits on writing 13 GB).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DEADLINE = [None]  # time.time() by which every step must have ended (--budget)


def step(report, out_path, name, cmd, timeout=300, env=None):
    t = time.time()
    if DEADLINE[0] is not None:
        left = DEADLINE[0] - t
        if left < 20:
            report["steps"].append({"name": name, "ok": None, "seconds": 0,
                                    "tail": f"skipped: {left:.0f} s of the budget left"})
            print(f"SKIP  {name}  (budget spent)", flush=True)
            save(report, out_path)
            return False, ""
        timeout = min(timeout, left - 5)
    try:
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout, env={**os.environ, **(env or {})})
        ok, out = r.returncode == 0, r.stdout
    except subprocess.TimeoutExpired as e:
        ok, out = False, f"timed out after {timeout} s: {e}"
    except OSError as e:
        ok, out = False, f"could not run: {e}"
    report["steps"].append({"name": name, "cmd": cmd if isinstance(cmd, str) else " ".join(cmd),
                            "ok": ok, "seconds": round(time.time() - t, 1), "tail": out[-4000:]})
    print(f"{'PASS' if ok else 'FAIL'}  {name}  ({time.time() - t:.1f} s)", flush=True)
    # every step's whole output, in order, beside the report (the JSON keeps only the tail)
    with open(os.path.splitext(out_path)[0] + ".log", "a") as f:
        f.write(f"\n===== {'PASS' if ok else 'FAIL'} {name} ({time.time() - t:.1f} s)\n{out}\n")
    save(report, out_path)
    return ok, out


def save(report, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)




def main():
    p = argparse.ArgumentParser()
    p.add_argument("--skip-build", action="store_true")
    p.add_argument("--quick", action="store_true", help="no 120b engine run")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "gpu_check.json"))
    p.add_argument("--deselect", action="append", default=[],
                   help="a test id to leave out of the test and sanitizer stages (repeatable)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole check: each step's limit is cut to what is left, "
                        "and steps past it are skipped (recorded as such)")
    a = p.parse_args()
    if a.budget:
        DEADLINE[0] = time.time() + a.budget
    report = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "steps": []}
    ok, smi = step(report, a.out, "nvidia-smi",
                   ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                    "--format=csv,noheader"], 60)
    arch = "90a"
    if ok and smi.strip():
        cap = smi.strip().splitlines()[0].split(",")[-1].strip()
        arch = cap.replace(".", "") + ("a" if cap == "9.0" else "")
    report["arch"] = arch
    if not a.skip_build:
        step(report, a.out, f"build (GPTOSS_CUDA=ON, sm_{arch})",
             [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps",
              f"-Ccmake.define.CMAKE_CUDA_ARCHITECTURES={arch}", "."], 900,
             env={"GPTOSS_CUDA": "ON"})
    # the toolchain that built the module, and whether it carries its own copies of libstdc++'s
    # stream code (the 2026-12-04 run crashed in such a copy when a native check failed)
    so = "$(python3 -c 'import gptoss._C as c; print(c.__file__)')"
    step(report, a.out, "toolchain", ["sh", "-c",
         "g++ --version | head -1; nvcc --version | tail -1; cmake --version | head -1; "
         "python3 -c 'import pybind11, sys; print(sys.version.split()[0], pybind11.__version__)'; "
         f"ldd {so}; echo libstdc++ stream symbols defined in the module: "
         f"$(nm -D -C --defined-only {so} | grep -c -E 'std::basic_ostream|std::codecvt')"], 60)
    # a failing native check, thrown with the GIL released, must reach Python as a ValueError
    step(report, a.out, "a native error reaches Python", [sys.executable, "-c",
         "import gptoss._C as C, gptoss.testing as T, tempfile, sys\n"
         "d = T.write_random_checkpoint(tempfile.mkdtemp(), 'tiny', layout='hf', seed=1)\n"
         "try:\n    C.Engine(d, device='cuda', kv_dtype='float32')\n"
         "except ValueError as e:\n    print('raised:', e); sys.exit(0)\n"
         "sys.exit('no error raised')"], 120)
    step(report, a.out, "emulator self-tests, natively",
         [sys.executable, "-m", "pytest", "-q", "tests/test_cuda_emu.py"], 120)
    tests = sorted(f"tests/{f}" for f in os.listdir(os.path.join(ROOT, "tests"))
                   if f.startswith("test_cuda_") and f.endswith(".py")
                   and f not in ("test_cuda_emu.py", "test_cuda_sanitizers.py", "test_cuda_build.py"))
    # test_cuda_build.py compiles for every architecture (needs nvcc, no GPU): CI's job, not this one's
    desel = [x for d in a.deselect for x in ("--deselect", d)]
    # with pytest-xdist, a test that crashes its worker is reported and the rest still run
    import importlib.util
    par = ["-n", "4"] if importlib.util.find_spec("xdist") else []
    step(report, a.out, "CUDA kernel and backend tests",
         [sys.executable, "-m", "pytest", "-q", "-rfE", "--durations=8", "-o", "timeout=120", *par,
          *tests, *desel], 600)
    kjson = os.path.join(os.path.dirname(a.out), "cuda_kernels.json")
    ok, out = step(report, a.out, "CUDA kernel benchmarks",
                   [sys.executable, "bench/bench_cuda_kernels.py", "--out", kjson], 400)
    if ok:
        with open(kjson) as f:
            report["kernels"] = json.load(f)
    step(report, a.out, "backends", [sys.executable, "-m", "gptoss", "info"], 60)
    presets = ["20b"] if a.quick else ["20b", "120b"]
    for preset in presets:
        step(report, a.out, f"cuda engine random:{preset}:hollow",
             [sys.executable, "bench/bench_engine.py", "--model", f"random:{preset}:hollow",
              "--backend", "cuda", "--prompt", "2048", "--decode", "64"], 900)
    # what the batch-invariant mode costs (Options::batch_invariant): the same run, per-row kernels
    step(report, a.out, "cuda engine random:20b:hollow, batch_invariant",
         [sys.executable, "bench/bench_engine.py", "--model", "random:20b:hollow",
          "--backend", "cuda", "--prompt", "512", "--decode", "64", "--batch-invariant"], 600)
    cs = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    # last: the slowest stage, and the one whose verdict the emulated ASan/TSan runs already give
    for tool in ("memcheck", "racecheck", "synccheck"):
        step(report, a.out, f"compute-sanitizer {tool}",
             [cs, "--tool", tool, "--error-exitcode", "3", sys.executable, "-m", "pytest", "-q",
              "-x", "tests/test_cuda_emu.py", *tests, *desel, "-k", "not real_shape"], 900)
    save(report, a.out)
    print("\n".join(f"{'ok ' if s['ok'] else ('---' if s['ok'] is None else 'BAD')} {s['seconds']:7.1f} s  {s['name']}"
                    for s in report["steps"]))
    for k, v in (report.get("kernels") or {}).items():
        if isinstance(v, dict) and "ms" in v:
            print(f"    {k}: {v['ms']:.4f} ms, {v['gb_s']:.0f} GB/s, {v['tflop_s']:.1f} TFLOP/s")
    print(f"report: {a.out}")
    return 0 if all(s["ok"] for s in report["steps"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
