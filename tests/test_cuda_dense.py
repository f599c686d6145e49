"""The dense CUDA kernels (cuda/dense.cu, cuda/gemm.cu) against the NumPy engine's math, at edge
sizes and at the real widths with reduced row counts. Runs under the host emulation too (it
reports one device), where every CUDA thread is a fiber: shapes stay small.

Tolerances (derived):
- f32 accumulation of K products (the GEMV, and the GEMM against a reference on the same
  bf16-rounded x): global relative error <= 16 * eps32 * sqrt(K) (random-walk rounding, safety
  factor 16), as in tests/test_cpu_kernels.py.
- The GEMM against the plain f32 x: rounding x to bf16 (8 significant bits, round to nearest)
  perturbs each x_k by a relative delta_k, |delta_k| <= u = 2^-8, roughly uniform, so
  std(delta) = u / sqrt(3); with random signs the output error is a random walk of the same
  terms as the output itself, so the global relative error is ~ u / sqrt(3) = 2.3e-3; bound with
  a safety factor 4: 4 * 2^-8 / sqrt(3) = 9.0e-3.
- RMSNorm, per element: the sum of squares has relative error <= 16 eps32 sqrt(H), which moves
  rsqrt by half of that, plus a few roundings of the products: rtol = 16 eps32 sqrt(H) + 8 eps32.
- The embedding gather and the residual add are exact.
"""
import math

import numpy as np
import pytest

from gptoss.backends import numpy as ref
from gptoss.safetensors_io import bf16_to_f32, f32_to_bf16

from conftest import rel_err

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not C.build_info()["cuda_compiled"], reason="built without CUDA"),
    pytest.mark.skipif(C.cuda_device_count()[0] == 0, reason="no CUDA device"),
]
EPS32 = float(np.finfo(np.float32).eps)
BF16_X_BOUND = 4 * 2.0 ** -8 / math.sqrt(3)


def f32_bound(K):
    return 16 * EPS32 * math.sqrt(K)


def case(seed, n, R, K, bias=True):
    rng = np.random.default_rng(seed)
    w = f32_to_bf16(rng.standard_normal((R, K)).astype(np.float32) / math.sqrt(K))
    x = rng.standard_normal((n, K)).astype(np.float32)
    b = rng.standard_normal(R).astype(np.float32) if bias else None
    return x, w, b


def want64(x, w, b):
    out = x.astype(np.float64) @ bf16_to_f32(w).astype(np.float64).T
    return out if b is None else out + b


# ------------------------------------------------------------------------------ embedding
@pytest.mark.parametrize("V,H,n", [(50, 2880, 3), (7, 64, 5), (9, 13, 4), (3, 8, 1)])
def test_embed_exact(V, H, n):
    rng = np.random.default_rng(V * H + n)
    emb = f32_to_bf16(rng.standard_normal((V, H)).astype(np.float32))
    tokens = rng.integers(0, V, n).astype(np.int32)
    got = C.ops.cuda_embed(emb, tokens)
    assert got.dtype == np.float32 and np.array_equal(got, bf16_to_f32(emb[tokens]))


def test_embed_errors():
    emb = np.zeros((4, 8), np.uint16)
    with pytest.raises(ValueError, match="tokens"):
        C.ops.cuda_embed(emb, np.array([4], np.int32))
    with pytest.raises(ValueError, match="emb"):
        C.ops.cuda_embed(emb.astype(np.float32), np.array([0], np.int32))


# ------------------------------------------------------------------------------ RMSNorm
@pytest.mark.parametrize("n,H", [(3, 2880), (1, 64), (2, 13), (4, 1000)])
@pytest.mark.parametrize("with_y", [True, False])
def test_add_rmsnorm(n, H, with_y):
    rng = np.random.default_rng(n * H)
    x = (rng.standard_normal((n, H)) * 3).astype(np.float32)
    y = rng.standard_normal((n, H)).astype(np.float32) if with_y else None
    w = rng.standard_normal(H).astype(np.float32)
    x_new, out = C.ops.cuda_add_rmsnorm(x, y, w, 1e-5)
    xs = x + y if with_y else x
    assert np.array_equal(x_new, xs)                      # the residual add is exact
    want = ref.rmsnorm(xs, w, 1e-5)
    rtol = f32_bound(H) + 8 * EPS32
    assert np.allclose(out, want, rtol=rtol, atol=1e-30), np.max(np.abs(out - want) / np.abs(want))
    again = C.ops.cuda_add_rmsnorm(x, y, w, 1e-5)[1]
    assert np.array_equal(out, again)                     # fixed reduction order


def test_add_rmsnorm_errors():
    with pytest.raises(ValueError, match="w"):
        C.ops.cuda_add_rmsnorm(np.zeros((2, 8), np.float32), None, np.zeros(7, np.float32))
    with pytest.raises(ValueError, match="y"):
        C.ops.cuda_add_rmsnorm(np.zeros((2, 8), np.float32), np.zeros((2, 7), np.float32),
                               np.zeros(8, np.float32))


# ------------------------------------------------------------------------------ GEMV (lane groups of 32 for K > 512, of 4 below)
@pytest.mark.parametrize("n", range(1, 9))
def test_gemv_rows(n):
    x, w, b = case(n, n, 37, 2880)                        # R not a multiple of 16; K % 256 != 0
    got = C.ops.cuda_bf16_gemv(x, w, b)
    assert got.shape == (n, 37)
    assert rel_err(got, want64(x, w, b)) < f32_bound(2880)
    # the NumPy engine's linear (the executable specification)
    assert rel_err(got, ref.linear(x, w, b)) < f32_bound(2880)


@pytest.mark.parametrize("n,R,K", [(1, 2880, 2880), (2, 5, 4096), (3, 1, 32), (1, 300, 128),
                                   (4, 17, 100), (2, 9, 13), (8, 33, 7), (5, 16, 8),
                                   (2, 131, 512), (3, 40, 520)])
@pytest.mark.parametrize("bias", [True, False])
def test_gemv_shapes(n, R, K, bias):
    # K = 100: a K % 8 tail with vector x loads; K = 13, 7: scalar x loads and padded W rows
    x, w, b = case(n * R + K, n, R, K, bias)
    got = C.ops.cuda_bf16_gemv(x, w, b)
    assert rel_err(got, want64(x, w, b)) < f32_bound(K)


def test_gemv_tiny_model_unembedding():
    # the tiny model's vocabulary at its width: 1571 blocks of 128 rows (lane groups of 4)
    x, w, _ = case(11, 1, 201088, 128, bias=False)
    got = C.ops.cuda_bf16_gemv(x, w)
    assert rel_err(got, want64(x, w, None)) < f32_bound(128)


def test_gemv_deterministic_and_linear_dispatch():
    x, w, b = case(7, 8, 40, 256)
    g = C.ops.cuda_bf16_gemv(x, w, b)
    assert np.array_equal(g, C.ops.cuda_bf16_gemv(x, w, b))
    assert np.array_equal(g, C.ops.cuda_bf16_linear(x, w, b))      # n <= 8: the GEMV
    x9, w9, b9 = case(8, 9, 40, 256)
    assert np.array_equal(C.ops.cuda_bf16_linear(x9, w9, b9), C.ops.cuda_bf16_gemm(x9, w9, b9))


def test_gemv_errors():
    x, w, b = case(0, 9, 4, 32)
    with pytest.raises(ValueError, match="x"):
        C.ops.cuda_bf16_gemv(x, w, b)
    with pytest.raises(ValueError, match="w"):
        C.ops.cuda_bf16_gemv(x[:2], w.astype(np.float32), b)
    with pytest.raises(ValueError, match="bias"):
        C.ops.cuda_bf16_gemv(x[:2], w, b[:3])
    with pytest.raises(ValueError, match="x"):
        C.ops.cuda_bf16_gemv(x[:2, :16], w, b)


# ------------------------------------------------------------------------------ GEMM
def bf16_round(x):
    return bf16_to_f32(f32_to_bf16(x))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 130])
def test_gemm_rows(n):
    x, w, b = case(100 + n, n, 130, 64)                   # R = 128 + 2: a partial weight tile
    got = C.ops.cuda_bf16_gemm(x, w, b)
    assert got.shape == (n, 130)
    assert rel_err(got, want64(bf16_round(x), w, b)) < f32_bound(64)
    assert rel_err(got, ref.linear(x, w, b)) < BF16_X_BOUND


@pytest.mark.parametrize("n,R,K", [(70, 37, 2880), (9, 300, 32), (65, 129, 96), (3, 1, 32),
                                   (20, 256, 4096)])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_shapes(n, R, K, bias):
    x, w, b = case(n + R + K, n, R, K, bias)
    got = C.ops.cuda_bf16_gemm(x, w, b)
    assert rel_err(got, want64(bf16_round(x), w, b)) < f32_bound(K)
    assert rel_err(got, want64(x, w, b)) < BF16_X_BOUND


def test_gemm_deterministic():
    x, w, b = case(3, 33, 70, 128)
    assert np.array_equal(C.ops.cuda_bf16_gemm(x, w, b), C.ops.cuda_bf16_gemm(x, w, b))


def test_gemm_errors():
    x, w, b = case(0, 20, 4, 48)
    with pytest.raises(ValueError, match="multiple of 32"):
        C.ops.cuda_bf16_gemm(x, w, b)
    with pytest.raises(ValueError, match="x"):
        C.ops.cuda_bf16_gemm(x[:, :16], w, b)
