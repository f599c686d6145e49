"""The CPU engine's repacked experts (every SIMD level) and the weight cache they live in
(csrc/engine/weight_cache.h): built once and mapped, reused, rejected when corrupt, rebuilt when
the checkpoint changes, and repacked into memory where no cache can be written -- the logits the
same bits every way, and within the engine's bound of the NumPy engine.

The repack happens at every SIMD level from AVX2 up (the plain level reads the checkpoint's
layout); these tests pin avx2 (skipped where the processor lacks it), the oldest such level."""
import os
import re
import shutil

import numpy as np
import pytest

from gptoss import Model, Weights
from gptoss.backends.numpy import NumpyEngine

from conftest import rel_err
from test_cpu_engine import bound

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = pytest.mark.skipif("avx2" not in C.simd_levels(),
                                reason="the repacked experts are for AVX2 and this processor lacks it")
TOKENS = [5, 17, 300, 4000, 12, 99, 7, 123456, 8, 64, 3, 2]


@pytest.fixture
def avx2():
    C.force_simd("avx2")
    yield
    C.force_simd(C.simd_levels()[-1])


@pytest.fixture
def ckpt(tmp_path, tiny_hf):
    d = tmp_path / "ckpt"
    shutil.copytree(tiny_hf, d)
    return str(d)


def m_layers(path):
    return Weights(path).config.num_layers


def load(path, cache, repack="auto", **kw):
    m = Model.from_pretrained(path, backend="cpu", repack=repack, cache_dir=str(cache),
                              prefix_cache_gb=0, **kw)
    return m, m.engine.weights_note


def cache_file(note):
    found = re.search(r"(/\S+\.bin)", note)
    assert found, note
    return found.group(1)


def test_built_then_mapped_same_bits_and_close_to_numpy(avx2, ckpt, tmp_path):
    cache = tmp_path / "cache"
    m1, n1 = load(ckpt, cache)
    assert "repacked for the avx2 kernels" in n1 and "): built /" in n1 and "mapped it" in n1, n1
    path = cache_file(n1)
    assert path.startswith(str(cache / "weights")) and os.path.getsize(path) > 0
    assert C.verify_weight_cache(path) == 2 * 32 * m1.config.num_layers
    a = m1.forward(TOKENS)
    m2, n2 = load(ckpt, cache)
    assert n2.startswith("experts repacked") and f"mapped {path}" in n2 and "built /" not in n2, n2
    assert np.array_equal(m2.forward(TOKENS), a)
    m3, n3 = load(ckpt, cache, repack="memory")
    assert "repacked into memory (repack 'memory')" in n3
    assert np.array_equal(m3.forward(TOKENS), a)
    # the checkpoint's own layout and the NumPy engine: within the engine's bound
    m4, n4 = load(ckpt, cache, repack="off")
    assert "checkpoint's layout (repack off)" in n4
    want = NumpyEngine(Weights(ckpt)).prefill(TOKENS)
    assert rel_err(a, want) < bound(m1.config), rel_err(a, want)
    assert rel_err(m4.forward(TOKENS), want) < bound(m1.config)
    # the model says how it holds its weights
    assert n2 in m2.backend_note


def test_a_changed_checkpoint_gets_a_new_cache_file(avx2, ckpt, tmp_path):
    cache = tmp_path / "cache"
    _, n1 = load(ckpt, cache)
    st = next(f for f in os.listdir(ckpt) if f.endswith(".safetensors"))
    t = os.stat(os.path.join(ckpt, st)).st_mtime_ns
    os.utime(os.path.join(ckpt, st), ns=(t + 10**9, t + 10**9))
    _, n2 = load(ckpt, cache)
    assert "built /" in n2 and cache_file(n2) != cache_file(n1), (n1, n2)


@pytest.mark.parametrize("damage,reason", [
    ("truncate", "truncated or grown"),
    ("magic", "bad magic"),
    ("fingerprint", "header checksum mismatch"),
    ("table", "entry table checksum mismatch"),
    ("empty", "empty file"),
])
def test_a_damaged_cache_file_is_rejected_and_rebuilt(avx2, ckpt, tmp_path, damage, reason):
    cache = tmp_path / "cache"
    m1, n1 = load(ckpt, cache)
    a = m1.forward(TOKENS)
    del m1
    path = cache_file(n1)
    with open(path, "r+b") as f:
        if damage == "truncate":
            f.truncate(os.path.getsize(path) - 4096)
        elif damage == "magic":
            f.write(b"X")
        elif damage == "fingerprint":
            f.seek(48)
            f.write(b"\xff")
        elif damage == "table":
            f.seek(4096 + 3)
            f.write(b"Z")
        else:
            f.truncate(0)
    m2, n2 = load(ckpt, cache)
    assert f"rejected {path}" in n2 and reason in n2 and "built /" in n2, n2
    assert np.array_equal(m2.forward(TOKENS), a)
    assert C.verify_weight_cache(path) > 0


def test_header_bytes_flipped_anywhere_never_give_wrong_logits(avx2, ckpt, tmp_path):
    """The part of the file checked at every load (header and entry table): each flipped byte is
    either caught (and the file rebuilt) or falls in reserved bytes; the logits never change."""
    cache = tmp_path / "cache"
    m, n = load(ckpt, cache)
    a = m.forward(TOKENS)
    del m
    path = cache_file(n)
    rng = np.random.default_rng(0)
    table_end = 4096 + 112 * 2 * 32 * m_layers(ckpt)   # 112 bytes per entry
    for at in (list(range(0, 80, 7)) + list(rng.integers(80, 4096, 4)) +
               list(rng.integers(4096, table_end, 10))):
        with open(path, "r+b") as f:
            f.seek(int(at))
            old = f.read(1)
            f.seek(int(at))
            f.write(bytes([old[0] ^ 0x5A]))
        m, n = load(ckpt, cache)
        assert np.array_equal(m.forward(TOKENS), a), (at, n)
        # the header (80 bytes) and the table are checked; the rest of the first 4 KiB is reserved
        assert ("rejected" in n) == (not 80 <= at < 4096), (at, n)
        del m


def test_content_damage_is_found_by_verify(avx2, ckpt, tmp_path):
    cache = tmp_path / "cache"
    _, n = load(ckpt, cache)
    path = cache_file(n)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size - 4096 - 100)
        b = f.read(1)
        f.seek(size - 4096 - 100)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(ValueError, match=re.escape(path) + r": entry 'layer\d+\.w2\.\d+': content checksum"):
        C.verify_weight_cache(path)
    with pytest.raises(ValueError, match="cannot map"):
        C.verify_weight_cache(str(tmp_path / "absent.bin"))


def test_unwritable_cache_dir_falls_back_to_memory(avx2, ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    m, n = load(ckpt, blocker / "cache")
    assert "repacked into memory" in n and "cannot create" in n and str(blocker) in n, n
    m2, _ = load(ckpt, tmp_path / "cache")
    assert np.array_equal(m.forward(TOKENS), m2.forward(TOKENS))


def test_plain_keeps_the_checkpoint_layout_every_simd_level_repacks(ckpt, tmp_path):
    C.force_simd("plain")
    try:
        _, n = load(ckpt, tmp_path / "cache")
    finally:
        C.force_simd(C.simd_levels()[-1])
    assert n == "experts in the checkpoint's layout (read directly by the plain kernels)"
    assert not (tmp_path / "cache" / "weights").exists()
    # every AVX-512 level repacks too, for either activation code, into the file AVX2 maps
    for lv in ("avx512bw", "avx512"):
        if lv not in C.simd_levels():
            continue
        C.force_simd(lv)
        try:
            m, n = load(ckpt, tmp_path / "cache", activation_levels=1)
        finally:
            C.force_simd(C.simd_levels()[-1])
        assert f"experts repacked for the {lv} kernels" in n, n
    if "avx512bw" in C.simd_levels():
        assert len(list((tmp_path / "cache" / "weights").glob("*.bin"))) == 1
    with pytest.raises(ValueError, match="repack='fast'"):
        Model.from_pretrained(ckpt, backend="cpu", repack="fast")


def test_one_level_activations_share_the_repacked_file_on_avx2(ckpt, tmp_path):
    """activation_levels=1 on AVX2 runs the int8 r16 kernels on the same cache file as the
    default: built by whichever loads first, mapped by the other."""
    C.force_simd("avx2")
    try:
        one, n1 = load(ckpt, tmp_path / "cache", activation_levels=1)
        two, n2 = load(ckpt, tmp_path / "cache")
    finally:
        C.force_simd(C.simd_levels()[-1])
    assert "experts repacked for the avx2 kernels" in n1 and "built" in n1, n1
    assert "mapped" in n2 and "built" not in n2, n2
    assert len(list((tmp_path / "cache" / "weights").glob("*.bin"))) == 1


def test_cli_repack_and_cache_dir(ckpt, tmp_path):
    import subprocess
    import sys

    def gen(*extra):
        r = subprocess.run([sys.executable, "-m", "gptoss", "generate", "--model", ckpt, "Hi",
                            "-n", "4", "-v", "--backend", "cpu", *extra], capture_output=True,
                           text=True, timeout=300, env={**os.environ, "GPTOSS_SIMD": "avx2"})
        assert r.returncode == 0, r.stderr
        return r
    a = gen("--cache-dir", str(tmp_path / "c"))
    assert f"built {tmp_path / 'c' / 'weights'}" in a.stderr, a.stderr
    b = gen("--repack", "off")
    assert "experts in the checkpoint's layout (repack off)" in b.stderr
    assert a.stdout.strip()
    r = subprocess.run([sys.executable, "-m", "gptoss", "generate", "--model", ckpt, "Hi",
                        "--repack", "fast"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "--repack" in r.stderr
