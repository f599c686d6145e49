"""The CUDA kernels and the whole CUDA backend under the emulation's memcheck and racecheck:
the emulated build (GPTOSS_CUDA=EMULATE, C++ only, no Python) compiled with AddressSanitizer +
UBSan (every device allocation and the shared memory of every block are exact-size host
allocations, so an out-of-bounds access is reported at the kernel line) and with
ThreadSanitizer (each CUDA thread an OS thread, so a missing barrier is a data race). The check
program (tests/cuda_check/cuda_emu_check.cpp) runs the primitives against plain loops and the
CUDA backend against the CPU backend: prefill across the window (tensor-core paths), decode
steps captured as graphs and replayed, a batch of two sequences, device sampling. This needs
neither nvcc nor a GPU, so it runs wherever the tests run."""
import os
import shutil
import subprocess

import pytest

from gptoss.testing import write_random_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")

# These runs look for memory errors and races; the numerical agreement of the CUDA backend is
# tested with derived bounds in test_cuda_engine.py. Here the bound only catches gross breakage:
# a wrong kernel gives errors of order 1, while bf16 rounding (and the expert flips it can cause
# in a random model at near-tied router logits, up to ~5e-2) stays below 0.1.
BOUND = 0.1


def build(tmp, sanitizer):
    b = str(tmp / f"emu-{sanitizer}")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (["cmake", "-S", ROOT, "-B", b, "-DGPTOSS_CUDA=EMULATE",
                 f"-DGPTOSS_SANITIZE={sanitizer}", "-DCMAKE_BUILD_TYPE=RelWithDebInfo", *gen],
                ["cmake", "--build", b, "-j", str(os.cpu_count() or 2), "--target",
                 "cuda_emu_check"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return os.path.join(b, "cuda_emu_check")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    # the tiny shapes (GQA 16/2, head dim 64, 32 experts) with a small vocabulary, so that the
    # unembedding does not dominate the emulated run
    return write_random_checkpoint(str(tmp_path_factory.mktemp("emu_ckpt")), "tiny", seed=3,
                                   vocab_size=2048, num_layers=2)


@pytest.fixture(scope="module")
def hollow_ckpt(tmp_path_factory):
    # the same shapes as a hollow checkpoint: the CUDA backend makes its matrices (cuda/fill.cu)
    return write_random_checkpoint(str(tmp_path_factory.mktemp("emu_hollow")), "tiny", seed=3,
                                   vocab_size=2048, num_layers=2, hollow=True)


def run(exe, *args, env=None, timeout=1200):
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def clean(r):
    out = r.stdout + r.stderr
    return "Sanitizer" not in out and "runtime error" not in out


@pytest.mark.slow
def test_cuda_backend_under_address_sanitizer(tmp_path, small_ckpt, hollow_ckpt):
    exe = build(tmp_path, "address")
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    r = run(exe, "selftest", env=env)
    assert r.returncode == 0 and clean(r), r.stdout + r.stderr[-4000:]
    # fibers (the default; the ThreadSanitizer run below uses OS threads)
    r = run(exe, "engine", small_ckpt, "150", str(BOUND), env=env)
    assert r.returncode == 0 and clean(r), (r.stdout, r.stderr[-4000:])
    assert "worst relative logit error" in r.stdout
    # the batch-invariant mode's per-row paths (GEMV steps, one-warp-per-row attention past 64
    # rows)
    r = run(exe, "engine", small_ckpt, "70", str(BOUND), "invariant", env=env)
    assert r.returncode == 0 and clean(r), (r.stdout, r.stderr[-4000:])
    assert "worst relative logit error" in r.stdout
    # device-made weights, and a prompt past one page taken again from the prefix cache
    r = run(exe, "hollow", hollow_ckpt, "270", str(BOUND), env=env)
    assert r.returncode == 0 and clean(r), (r.stdout, r.stderr[-4000:])
    assert "positions from the prefix cache" in r.stdout


@pytest.mark.slow
def test_cuda_backend_under_thread_sanitizer(tmp_path, small_ckpt, hollow_ckpt):
    exe = build(tmp_path, "thread")
    # OMP_NUM_THREADS=1: the CPU backend (the comparison) would otherwise run on libgomp's threads,
    # which ThreadSanitizer cannot see into (false reports); the emulated CUDA threads are ours
    env = {"TSAN_OPTIONS": "halt_on_error=0:report_signal_unsafe=0", "OMP_NUM_THREADS": "1"}
    r = run(exe, "selftest", env=env)
    assert r.returncode == 0 and "WARNING: ThreadSanitizer" not in r.stderr, r.stderr[-4000:]
    # the racecheck works: a kernel without its barrier is reported at the kernel line
    r = run(exe, "racy", env=env)
    assert "WARNING: ThreadSanitizer: data race" in r.stderr and "bad_racy_kernel" in r.stderr, \
        r.stderr[-4000:]
    # 12 tokens: the prefill still takes the tensor-core paths (more than 8 rows), and a short
    # run keeps ThreadSanitizer's cost (one OS thread per CUDA thread) to minutes
    r = run(exe, "engine", small_ckpt, "12", str(BOUND), env=env)
    assert r.returncode == 0 and "WARNING: ThreadSanitizer" not in r.stderr, \
        r.stdout + r.stderr[-6000:]
    r = run(exe, "hollow", hollow_ckpt, "12", str(BOUND), env=env)
    assert r.returncode == 0 and "WARNING: ThreadSanitizer" not in r.stderr, \
        r.stdout + r.stderr[-6000:]
