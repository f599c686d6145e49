"""The cuda_* kernels on device arrays (gptoss.ops.to_device / DeviceArray, DLPack): the same
kernels as on host arrays, so the results must be bit-identical to the host path (which the other
test_cuda_* files check against the NumPy engine); device arguments are used and updated in place,
host arguments never modified; results of one call feed the next without a round trip; errors name
the argument. Runs under the emulation (device memory is host memory there) or on a GPU.
"""
import gc

import numpy as np
import pytest

from gptoss.safetensors_io import f32_to_bf16

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not C.build_info()["cuda_compiled"], reason="built without CUDA"),
    pytest.mark.skipif(C.cuda_device_count()[0] == 0, reason="no GPU here"),
]

from gptoss import ops  # noqa: E402  (after the skips: needs the CUDA build)


def bf16(rng, *shape, scale=1.0):
    return f32_to_bf16((rng.standard_normal(shape) * scale).astype(np.float32))


def host(a):
    return a.numpy() if isinstance(a, ops.DeviceArray) else np.asarray(a)


def test_to_device_round_trip_and_dlpack():
    rng = np.random.default_rng(0)
    for a in (rng.standard_normal((3, 5)).astype(np.float32),
              rng.integers(-9, 9, (7,)).astype(np.int32),
              bf16(rng, 2, 3, 4), rng.integers(0, 255, (4, 16)).astype(np.uint8)):
        d = ops.to_device(a)
        assert isinstance(d, ops.DeviceArray)
        assert d.shape == a.shape and d.dtype == a.dtype and d.nbytes == a.nbytes
        assert np.array_equal(d.numpy(), a)
        assert np.array_equal(np.asarray(d), a)
        if C.build_info()["cuda_emulated"]:
            # emulated device memory is host memory: numpy views it through DLPack
            view = np.from_dlpack(d)
            assert np.array_equal(view, a)
            del d
            gc.collect()
            assert np.array_equal(view, a), "the DLPack view must keep the memory alive"
    with pytest.raises(ValueError, match="float32, int32"):
        ops.to_device(np.zeros(3, np.float64))


def test_linear_device_equals_host():
    rng = np.random.default_rng(1)
    for n, K, R in ((1, 64, 40), (3, 72, 17), (20, 96, 33)):
        x = rng.standard_normal((n, K)).astype(np.float32)
        w = bf16(rng, R, K, scale=0.1)
        b = rng.standard_normal(R).astype(np.float32)
        want = ops.cuda_bf16_linear(x, w, b)
        for args in ((ops.to_device(x), w, b), (x, ops.to_device(w), b),
                     (ops.to_device(x), ops.to_device(w), ops.to_device(b))):
            got = ops.cuda_bf16_linear(*args)
            assert isinstance(got, ops.DeviceArray)
            assert np.array_equal(got.numpy(), want)
    # a device w must already have rows of whole 16-byte units (a host w is padded on the way up)
    w = bf16(rng, 8, 36)
    x = rng.standard_normal((2, 36)).astype(np.float32)
    assert np.array_equal(ops.cuda_bf16_gemv(x, w), ops.cuda_bf16_gemv(x, w))
    with pytest.raises(ValueError, match="multiple of 8"):
        ops.cuda_bf16_gemv(x, ops.to_device(w))


def test_embed_rmsnorm_chain_in_place():
    rng = np.random.default_rng(2)
    V, H, n = 50, 64, 5
    emb = bf16(rng, V, H)
    tok = rng.integers(0, V, n)
    y = rng.standard_normal((n, H)).astype(np.float32)
    w = rng.standard_normal(H).astype(np.float32)
    x_h = ops.cuda_embed(emb, tok)
    sum_h, norm_h = ops.cuda_add_rmsnorm(x_h.copy(), y, w)
    # the same chain without leaving the device
    x_d = ops.cuda_embed(ops.to_device(emb), ops.to_device(tok.astype(np.int32)))
    assert np.array_equal(x_d.numpy(), x_h)
    y_d = ops.to_device(y)
    sum_d, norm_d = ops.cuda_add_rmsnorm(x_d, y_d, w)
    assert sum_d is x_d, "a device x is updated in place and handed back"
    assert np.array_equal(x_d.numpy(), sum_h) and np.array_equal(norm_d.numpy(), norm_h)
    # a host x is never modified
    x_copy = x_h.copy()
    ops.cuda_add_rmsnorm(x_h, y_d, w)
    assert np.array_equal(x_h, x_copy)
    with pytest.raises(ValueError, match="outside"):
        ops.cuda_embed(ops.to_device(emb), ops.to_device(np.array([1, V], np.int32)))
    with pytest.raises(ValueError, match="tokens must be int32"):
        ops.cuda_embed(emb, ops.to_device(np.array([1, 2], np.uint8)))


def test_router_moe_chain():
    rng = np.random.default_rng(3)
    n, E, H, I, k = 9, 32, 64, 32, 4
    x = rng.standard_normal((n, H)).astype(np.float32)
    g = rng.standard_normal((n, E)).astype(np.float32)
    w1b = rng.integers(0, 255, (E, 2 * I, H // 32, 16)).astype(np.uint8)
    w1s = rng.integers(118, 124, (E, 2 * I, H // 32)).astype(np.uint8)
    b1 = rng.standard_normal((E, 2 * I)).astype(np.float32)
    w2b = rng.integers(0, 255, (E, H, I // 32, 16)).astype(np.uint8)
    w2s = rng.integers(118, 124, (E, H, I // 32)).astype(np.uint8)
    b2 = rng.standard_normal((E, H)).astype(np.float32)
    ex_h, wt_h = ops.cuda_topk_softmax(g, k)
    ex_d, wt_d = ops.cuda_topk_softmax(ops.to_device(g), k)
    assert np.array_equal(ex_d.numpy(), ex_h) and np.array_equal(wt_d.numpy(), wt_h)
    weights = [w1b, w1s, b1, w2b, w2s, b2]
    for rows in (2, n):  # the GEMV path and the grouped GEMM path
        want = ops.cuda_moe(x[:rows], ex_h[:rows], wt_h[:rows], *weights)
        dev_w = [ops.to_device(a) for a in weights]
        got = ops.cuda_moe(ops.to_device(x[:rows]), ops.to_device(ex_h[:rows]),
                           ops.to_device(wt_h[:rows]), *dev_w)
        assert np.array_equal(got.numpy(), want)
    got = ops.cuda_moe(ops.to_device(x), ex_d, wt_d, *weights)
    assert np.array_equal(got.numpy(), ops.cuda_moe(x, ex_h, wt_h, *weights))
    bad = ex_h.copy()
    bad[1, 2] = E
    with pytest.raises(ValueError, match="outside"):
        ops.cuda_moe(ops.to_device(x), ops.to_device(bad), wt_d, *weights)
    with pytest.raises(ValueError, match="w1_scales must have shape"):
        ops.cuda_moe(x, ex_h, wt_h, w1b, ops.to_device(w1s[:, :5]), b1, w2b, w2s, b2)


def test_rope_kv_write_and_attention_in_place():
    rng = np.random.default_rng(4)
    Hq, Hkv, d, ring, n = 16, 2, 64, 32, 6
    width = (Hq + 2 * Hkv) * d
    qkv = rng.standard_normal((n, width)).astype(np.float32)
    pos = np.arange(n, dtype=np.int32) + 3
    seq = np.zeros(n, np.int32)
    ang = np.outer(np.arange(64), 1.0 / 10000 ** (np.arange(d // 2) * 2 / d))
    cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
    kc = np.full((ring, Hkv, d), 0x3F80, np.uint16)
    vc = kc.copy()
    sinks = rng.standard_normal(Hq).astype(np.float32)
    q_h, k_h, v_h = ops.cuda_rope_kv_write(qkv, pos, seq, cos, sin, kc, vc, Hq, ring=ring)
    assert np.array_equal(kc, np.full_like(kc, 0x3F80)), "host caches are never modified"
    out_h = ops.cuda_attention(q_h, k_h, v_h, pos, seq, sinks, window=16, ring=ring)

    dq, dk, dv = ops.to_device(qkv), ops.to_device(kc), ops.to_device(vc)
    r = ops.cuda_rope_kv_write(dq, pos, seq, cos, sin, dk, dv, Hq, ring=ring)
    assert r[0] is dq and r[1] is dk and r[2] is dv
    assert np.array_equal(dq.numpy(), q_h) and np.array_equal(dk.numpy(), k_h)
    assert np.array_equal(dv.numpy(), v_h)
    out_d = ops.cuda_attention(dq, dk, dv, ops.to_device(pos), seq, sinks, window=16, ring=ring)
    assert isinstance(out_d, ops.DeviceArray)
    assert np.array_equal(out_d.numpy(), out_h)
    with pytest.raises(ValueError, match="v_cache must have shape"):
        ops.cuda_attention(dq, dk, ops.to_device(vc[:, :1]), pos, seq, sinks, ring=ring)
    with pytest.raises(ValueError, match="row_seq"):
        ops.cuda_attention(dq, dk, dv, pos, ops.to_device(seq + 5), sinks, ring=ring)


def test_sample_on_device():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 300)).astype(np.float32) * 3
    want = ops.cuda_sample(logits, 1.0, top_k=50, top_p=0.9, seed=7, counter=[1, 2, 3, 4])
    got = ops.cuda_sample(ops.to_device(logits), 1.0, top_k=50, top_p=0.9, seed=7,
                          counter=[1, 2, 3, 4])
    assert isinstance(got, ops.DeviceArray) and got.dtype == np.int32
    assert np.array_equal(got.numpy(), want)
    one = ops.cuda_sample(ops.to_device(logits[2]), 0.0)
    assert one.shape == () and int(one.numpy()) == int(np.argmax(logits[2]))


class _ForeignCuda:
    """What a torch / CuPy CUDA tensor looks like to the bindings: DLPack on device type 2."""

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        raise AssertionError("an emulated build must refuse before asking for the capsule")

    shape = (2, 64)


@pytest.mark.skipif(not C.build_info()["cuda_emulated"], reason="the refusal is the emulation's")
def test_emulation_refuses_real_cuda_arrays():
    w = f32_to_bf16(np.ones((4, 64), np.float32))
    with pytest.raises(ValueError, match="x is a CUDA array, but this build emulates"):
        ops.cuda_bf16_linear(_ForeignCuda(), w)


def test_cpu_dlpack_arrays_are_host_arrays():
    torch = pytest.importorskip("torch", reason="torch not installed")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    w = bf16(rng, 8, 64)
    got = ops.cuda_bf16_linear(torch.from_numpy(x), w)
    assert isinstance(got, np.ndarray)
    assert np.array_equal(got, ops.cuda_bf16_linear(x, w))
