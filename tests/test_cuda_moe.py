"""The CUDA router (f32_topk_softmax) and MoE (mf4w_moe) against the NumPy engine, the executable
specification (gptoss.backends.numpy: route, swiglu, mxfp4_dequantize). Runs on a GPU and under
the host emulation (which reports one device); skipped where neither is built.

mf4w_moe takes n <= 8 tokens down the float32 GEMV path and larger n down the grouped
tensor-core path (tokens sorted by expert on the device, bf16 x MXFP4 -> f32 GEMMs).

Tolerances (derived; relative error ||out - ref|| / ||ref||, reference in float64):
- float32 reductions of length K: 16 * eps32 * sqrt(K) (random-walk rounding, safety 16). The
  MoE has two in sequence (K = H, then K = I) and a 4-term weighted sum: twice the bound at
  max(H, I). That is the whole GEMV bound: MXFP4 decodes exactly in float32 (backends/numpy.py mxfp4_dequantize).
- Tensor-core path, tight: the reference applies the kernel's two roundings (x -> bf16 before
  W1, the SwiGLU output -> bf16 before W2; MXFP4 -> bf16 is exact), so what remains is float32
  summation order (the bound above) plus SwiGLU outputs that round to the other bf16 neighbour
  because their float32 values differ in the last bits. A value lands within the float32 error
  of a rounding boundary with probability p = f32_bound / 2^-8 (the bf16 ulp relative to the
  value), and then moves by one ulp, 2^-8 relative; over many elements the norm of those moves is
  2^-8 * sqrt(p) relative.
- Tensor-core path against the plain float32 reference: each bf16 rounding is a relative error
  uniform in +-2^-9, rms 2^-9 / sqrt(3) per element, which a random-sign sum keeps as the relative
  error of the product. The x error passes through the SwiGLU (gain <= 2 at these magnitudes), the
  SwiGLU-output error adds once more: (2 + 1) * 2^-9 / sqrt(3), times a safety factor of 4.
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
    pytest.mark.skipif(C.cuda_device_count()[0] == 0, reason="no CUDA device (or emulation)"),
]

EPS32 = float(np.finfo(np.float32).eps)
GEMV_MAX = 8                       # mf4w_moe's threshold: n <= 8 takes the GEMV path
ALPHA, LIMIT = 1.702, 7.0


def f32_bound(K):
    return 16 * EPS32 * math.sqrt(K)


def tight_bf16_bound(K):
    p = f32_bound(K) / 2.0 ** -8
    return 2 * f32_bound(K) + 2.0 ** -8 * math.sqrt(p)


LOOSE_BF16_BOUND = 4 * 3 * 2.0 ** -9 / math.sqrt(3)


def bf16_round(a):
    return bf16_to_f32(f32_to_bf16(np.asarray(a, dtype=np.float32)))


# --------------------------------------------------------------------------------- router
@pytest.mark.parametrize("E", [32, 128])
@pytest.mark.parametrize("n", [1, 5, 37])
def test_topk_softmax_matches_route(E, n):
    rng = np.random.default_rng(E + n)
    g = rng.standard_normal((n, E)).astype(np.float32)
    g[0, :6] = 1.5                       # ties among the winners: lower index first
    if n > 1:
        g[1, :] = 0.25                   # every logit equal: experts 0..3, weights 1/4
    if n > 2:
        g[2, E - 5:] = 9.0               # ties at the top end, spread over lanes
        g[2, 3] = 9.0
    ex, wt = C.ops.cuda_topk_softmax(g, 4)
    rex, rwt = ref.route(g, 4)
    assert ex.dtype == np.int32 and ex.shape == (n, 4)
    assert np.array_equal(ex, rex)       # integer work: bit for bit
    # exp of differences and a 4-term sum: a few float32 roundings each
    np.testing.assert_allclose(wt, rwt, rtol=8 * EPS32, atol=EPS32)


def test_topk_softmax_other_k_and_errors():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((6, 128)).astype(np.float32)
    for k in (1, 2, 8):
        ex, wt = C.ops.cuda_topk_softmax(g, k)
        rex, rwt = ref.route(g, k)
        assert np.array_equal(ex, rex)
        np.testing.assert_allclose(wt, rwt, rtol=8 * EPS32, atol=EPS32)
    with pytest.raises(ValueError, match="logits"):
        C.ops.cuda_topk_softmax(np.zeros((2, 64), np.float32), 4)
    with pytest.raises(ValueError, match="logits"):
        C.ops.cuda_topk_softmax(np.zeros((2, 32), np.float64), 4)
    with pytest.raises(ValueError, match="k must"):
        C.ops.cuda_topk_softmax(np.zeros((2, 32), np.float32), 0)


# --------------------------------------------------------------------------------- MoE
def moe_case(n, E, H, I, seed, k=4, hot=None, x_scale=1.0):
    """Random MXFP4 experts (only the routed ones non-zero, so real shapes stay cheap to build),
    distinct experts per token; `hot`: an expert most tokens route to (many rows for one expert,
    several token tiles)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        if hot is not None and rng.random() < 0.8:
            rest = rng.choice(np.delete(np.arange(E), hot), k - 1, replace=False)
            rows.append(np.concatenate([[hot], rest]))
        else:
            rows.append(rng.choice(E, k, replace=False))
    experts = np.stack(rows).astype(np.int32)
    w1b = np.zeros((E, 2 * I, H // 32, 16), np.uint8)
    w2b = np.zeros((E, H, I // 32, 16), np.uint8)
    for e in np.unique(experts):
        w1b[e] = rng.integers(0, 256, w1b.shape[1:], dtype=np.uint8)
        w2b[e] = rng.integers(0, 256, w2b.shape[1:], dtype=np.uint8)
    # scales 2^-8 .. 2^-5: W1 rows of norm about 0.4 * sqrt(H / 256), so the SwiGLU sees both
    # its smooth part and (with x_scale) its clamps
    w1s = rng.integers(119, 123, (E, 2 * I, H // 32)).astype(np.uint8)
    w2s = rng.integers(119, 123, (E, H, I // 32)).astype(np.uint8)
    b1 = (rng.standard_normal((E, 2 * I)) * 0.2).astype(np.float32)
    b2 = (rng.standard_normal((E, H)) * 0.05).astype(np.float32)
    x = (rng.standard_normal((n, H)) * x_scale).astype(np.float32)
    wts = rng.dirichlet(np.ones(k), n).astype(np.float32)
    return x, experts, wts, w1b, w1s, b1, w2b, w2s, b2


def moe_reference(x, experts, wts, w1b, w1s, b1, w2b, w2s, b2, bf16=False):
    """float64 sum over slots of the NumPy engine's expert; bf16=True applies the tensor-core
    path's roundings (x and the SwiGLU output to bf16)."""
    n, k = experts.shape
    xs = bf16_round(x) if bf16 else x
    out = np.zeros((n, x.shape[1]))
    for e in np.unique(experts):
        rows, slot = np.nonzero(experts == e)
        W1 = ref.mxfp4_dequantize(w1b[e], w1s[e]).astype(np.float64)
        W2 = ref.mxfp4_dequantize(w2b[e], w2s[e]).astype(np.float64)
        u = xs[rows].astype(np.float64) @ W1.T + b1[e]
        a = ref.swiglu(u.astype(np.float32), ALPHA, LIMIT)
        if bf16:
            a = bf16_round(a)
        y = a.astype(np.float64) @ W2.T + b2[e]
        out[rows] += wts[rows, slot][:, None].astype(np.float64) * y
    return out


def run(case):
    return C.ops.cuda_moe(*case, alpha=ALPHA, limit=LIMIT)


@pytest.mark.parametrize("n,E,H,I", [(1, 32, 2880, 2880),       # 20b shapes, one token
                                     (2, 32, 256, 192), (5, 128, 256, 192),
                                     (8, 32, 128, 96),           # the tiny model, the largest GEMV n
                                     (3, 128, 64, 32)])
def test_moe_gemv_path(n, E, H, I):
    assert n <= GEMV_MAX
    case = moe_case(n, E, H, I, seed=n + E + H)
    got = run(case)
    want = moe_reference(*case)
    assert got.shape == (n, H) and got.dtype == np.float32
    assert rel_err(got, want) < 2 * f32_bound(max(H, I)), rel_err(got, want)


@pytest.mark.parametrize("n,E,H,I,hot,x_scale", [
    (GEMV_MAX + 1, 32, 256, 192, None, 1.0),    # just above the threshold
    (37, 128, 256, 192, None, 1.0),              # most experts empty, partial tiles
    (37, 32, 128, 96, None, 4.0),                # tiny-model shapes (K tail, half row tiles), clamps
    (130, 32, 256, 192, 5, 1.0),                 # one expert with ~100 rows: two token tiles
    (130, 128, 128, 96, 77, 2.0),
])
def test_moe_grouped_gemm_path(n, E, H, I, hot, x_scale):
    assert n > GEMV_MAX
    case = moe_case(n, E, H, I, seed=n + E + H, hot=hot, x_scale=x_scale)
    got = run(case)
    assert got.shape == (n, H) and np.isfinite(got).all()
    tight = rel_err(got, moe_reference(*case, bf16=True))
    assert tight < tight_bf16_bound(max(H, I)), (tight, tight_bf16_bound(max(H, I)))
    loose = rel_err(got, moe_reference(*case))
    assert loose < LOOSE_BF16_BOUND, (loose, LOOSE_BF16_BOUND)


@pytest.mark.parametrize("n", [5, 37])
def test_moe_reruns_are_bit_identical(n):
    case = moe_case(n, 32, 128, 96, seed=11, hot=2)
    first = run(case)
    assert np.array_equal(first, run(case))
    # the slot order is part of the contract: permuting tokens permutes rows exactly
    p = np.random.default_rng(1).permutation(n)
    x, experts, wts, *w = case
    assert np.array_equal(run((x[p], experts[p], wts[p], *w)), first[p])


def test_moe_router_to_experts_end_to_end():
    # the device router's output drives the device MoE, as in the engine
    rng = np.random.default_rng(21)
    case = list(moe_case(12, 32, 128, 96, seed=21))
    g = rng.standard_normal((12, 32)).astype(np.float32)
    ex, wt = C.ops.cuda_topk_softmax(g, 4)
    rex, rwt = ref.route(g, 4)
    assert np.array_equal(ex, rex)
    E, I2 = case[3].shape[:2]
    rng2 = np.random.default_rng(22)
    for e in np.unique(ex):                      # give every routed expert weights
        case[3][e] = rng2.integers(0, 256, case[3].shape[1:], dtype=np.uint8)
        case[6][e] = rng2.integers(0, 256, case[6].shape[1:], dtype=np.uint8)
    case[1], case[2] = ex, wt
    got = run(tuple(case))
    want = moe_reference(*case, bf16=True)
    assert rel_err(got, want) < tight_bf16_bound(128)


def test_moe_argument_errors():
    x, experts, wts, w1b, w1s, b1, w2b, w2s, b2 = moe_case(2, 32, 64, 32, seed=0)
    with pytest.raises(ValueError, match="outside"):
        C.ops.cuda_moe(x, np.array([[0, 1, 2, 40], [0, 1, 2, 3]]), wts, w1b, w1s, b1, w2b, w2s, b2)
    with pytest.raises(ValueError, match="w1_scales"):
        C.ops.cuda_moe(x, experts, wts, w1b, w1s[:, :5], b1, w2b, w2s, b2)
    with pytest.raises(ValueError, match="w2_bias"):
        C.ops.cuda_moe(x, experts, wts, w1b, w1s, b1, w2b, w2s, b2.astype(np.float64))
    with pytest.raises(ValueError, match="x must have shape"):
        C.ops.cuda_moe(x[:, :32], experts, wts, w1b, w1s, b1, w2b, w2s, b2)
    with pytest.raises(ValueError, match="weights"):
        C.ops.cuda_moe(x, experts, wts[:, :3], w1b, w1s, b1, w2b, w2s, b2)
    with pytest.raises(ValueError, match="experts"):
        C.ops.cuda_moe(x, experts.astype(np.float32), wts, w1b, w1s, b1, w2b, w2s, b2)

