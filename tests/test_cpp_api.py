"""The engine from C++ without Python: a standalone CMake build, `find_package(gptoss)` from a
separate project, the example program, and the engine under AddressSanitizer + UBSan."""
import os
import shutil
import subprocess

import pytest

from gptoss import Model

C = pytest.importorskip("gptoss._C", reason="extension not built")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = [200006, 1428, 200008, 13225, 2375]

pytestmark = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def cmake_build(build, *defs):
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    sh(["cmake", "-S", ROOT, "-B", build, "-DGPTOSS_CUDA=OFF", "-DCMAKE_BUILD_TYPE=Release",
        *gen, *defs])
    sh(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)])


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    base = tmp_path_factory.mktemp("cpp")
    build, prefix = str(base / "build"), str(base / "prefix")
    cmake_build(build)
    sh(["cmake", "--install", build, "--prefix", prefix])
    return build, prefix


def test_find_package_consumer_matches_python(installed, tiny_hf, tmp_path):
    build, prefix = installed
    cbuild = str(tmp_path / "consumer")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    sh(["cmake", "-S", os.path.join(ROOT, "tests", "cpp_consumer"), "-B", cbuild,
        f"-DCMAKE_PREFIX_PATH={prefix}", "-DCMAKE_BUILD_TYPE=Release", *gen])
    sh(["cmake", "--build", cbuild])
    r = sh([os.path.join(cbuild, "consumer"), tiny_hf, "12", *map(str, PROMPT)])
    tokens = [int(t) for t in r.stdout.split()]
    want = Model.from_pretrained(tiny_hf, backend="cpu").generate(
        PROMPT, max_new_tokens=12, temperature=0, stop_tokens=[]).run().tokens
    assert tokens == want
    assert "stop: max_new_tokens" in r.stderr and "caught: token id -5 is out of range" in r.stderr


def test_example_program(installed, tiny_original):
    build, prefix = installed
    exe = os.path.join(prefix, "bin", "gptoss_generate")
    r = sh([exe, tiny_original, "-n", "6", *map(str, PROMPT)])
    assert len(r.stdout.split()) == 6 and "decode:" in r.stderr
    bad = subprocess.run([exe, "/nonexistent"], capture_output=True, text=True)
    assert bad.returncode == 1 and "not a directory" in bad.stderr


def test_engine_under_address_sanitizer(tmp_path, tiny_hf):
    """The CPU engine built with -DGPTOSS_SANITIZE=ON runs a prefill past the window and
    decodes, with every SIMD level's kernels, without a sanitizer report."""
    build = str(tmp_path / "asan")
    cmake_build(build, "-DGPTOSS_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    exe = os.path.join(build, "gptoss_generate")
    outs = {}
    for level in C.simd_levels():
        env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                   UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", GPTOSS_SIMD=level)
        r = subprocess.run([exe, tiny_hf, "-n", "8", "--prompt-len", "600"], capture_output=True,
                           text=True, env=env, timeout=900)
        assert r.returncode == 0, (level, r.stderr[-4000:])
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-4000:]
        outs[level] = r.stdout.split()
        assert len(outs[level]) == 8
        # the int8 dense kernels (dense_weights "int8") and their quantization at load
        r = subprocess.run([exe, tiny_hf, "-n", "4", "--prompt-len", "40", "--dense-weights", "int8"],
                           capture_output=True, text=True, env=env, timeout=900)
        assert r.returncode == 0, (level, r.stderr[-4000:])
        assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr[-4000:]
        assert len(r.stdout.split()) == 4
    env = dict(os.environ, GPTOSS_SIMD="sse9")
    r = subprocess.run([exe, tiny_hf, "-n", "1"], capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "GPTOSS_SIMD=sse9" in r.stderr
