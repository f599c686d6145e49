"""Every CPU kernel of gptoss._C against the NumPy engine, at the real shapes and at edge sizes,
under every SIMD level this processor has (plain C++ always among them), and the levels against
each other.

Tolerances (derived):
- float32 reductions of length K: relative error <= 16 * eps32 * sqrt(K) (random-walk rounding,
  safety factor 16).
- MXFP4 with two-level activation quantization: each activation is rounded to half a step of
  max|x_block| / (127 * 254), so relative output error ~ (max/rms) / (127 * 254 * 2 * sqrt(3));
  with max/rms <= 4 for these blocks and a safety factor 4 that is 4 * 4 / 111744 = 1.4e-4.
  One level: the step is max / 127, giving 4 * 4 / (127 * 2 * sqrt(3)) = 1.8e-2.
- MXFP4 repacked for AVX2 (r16) on int16 activations: the step is max / 32767, giving
  4 * 4 / (32767 * 2 * sqrt(3)) = 1.4e-4 as for two levels; its block sums are exact integers, so
  every SIMD level and every grouping of rows and tokens gives the same bits (asserted exactly).
  With levels=1 the r16 kernels take int8 activations (the one-level bound), and their block sums
  are exact integers too: besides the bound, they are held to an emulation of that quantization
  (float32 accumulation over blocks only) and to the same-bits assertions.
"""
import math

import numpy as np
import pytest

from gptoss.backends import numpy as ref
from gptoss.safetensors_io import f32_to_bf16, bf16_to_f32

from conftest import rel_err

C = pytest.importorskip("gptoss._C", reason="extension not built")
EPS32 = float(np.finfo(np.float32).eps)
LEVELS = C.simd_levels()
Q2_BOUND = 4 * 4 / (127 * 254 * 2 * math.sqrt(3))
Q1_BOUND = 4 * 4 / (127 * 2 * math.sqrt(3))
Q16_BOUND = 4 * 4 / (32767 * 2 * math.sqrt(3))


def f32_bound(K):
    return 16 * EPS32 * math.sqrt(K)


@pytest.fixture(params=LEVELS)
def simd(request):
    C.force_simd(request.param)
    yield request.param
    C.force_simd(LEVELS[-1])


def test_levels_include_plain_and_the_best():
    assert LEVELS[0] == "plain" and C.build_info()["simd_best"] == LEVELS[-1]
    # in the order of the levels (avx2vnni is listed only where the processor has AVX-VNNI,
    # which the AVX-512 levels need not have)
    order = ["plain", "avx2", "avx2vnni", "avx512bw", "avx512", "avx512bf16", "amx"]
    assert LEVELS == [lv for lv in order if lv in LEVELS]
    with pytest.raises(ValueError, match="unknown SIMD level"):
        C.force_simd("sse9")


# --------------------------------------------------------------------------------- bf16 linear
# at the amx level: tiles of 16 tokens (17: a second tile of one), 16 rows and 32 values of K, so
# R and K not multiples of those take the zero-padded edge tiles
@pytest.mark.parametrize("m,R,K", [(1, 4096, 2880), (4, 512, 2880), (5, 33, 2880), (1, 1, 32),
                                   (3, 7, 40), (2, 201, 4096), (9, 19, 24), (17, 35, 100),
                                   (40, 64, 2880)])
def test_bf16_linear(simd, m, R, K):
    rng = np.random.default_rng(m * R + K)
    w = f32_to_bf16(rng.standard_normal((R, K)).astype(np.float32) / math.sqrt(K))
    x = rng.standard_normal((m, K)).astype(np.float32)
    b = rng.standard_normal(R).astype(np.float32)
    got = C.ops.bf16_linear(x, w, b)
    want = x.astype(np.float64) @ bf16_to_f32(w).astype(np.float64).T + b
    assert got.shape == (m, R)
    assert rel_err(got, want) < f32_bound(K), (simd, rel_err(got, want))


def test_bf16_linear_rows_do_not_depend_on_the_batch(simd):
    # decode (one row) and prefill tiles (any number of rows, K blocked, 4-row tiles and the rows
    # past the last whole tile) give the same bits
    rng = np.random.default_rng(4)
    w = f32_to_bf16(rng.standard_normal((71, 1100)).astype(np.float32))  # a last band of 7 rows
    x = rng.standard_normal((37, 1100)).astype(np.float32)
    full = C.ops.bf16_linear(x, w)
    for lo, hi in ((0, 1), (3, 5), (5, 13), (0, 7), (16, 37), (4, 36), (36, 37)):
        assert np.array_equal(C.ops.bf16_linear(x[lo:hi], w), full[lo:hi]), (simd, lo, hi)


@pytest.mark.parametrize("m,R,K", [(1, 4096, 2880), (5, 33, 2880), (3, 7, 40), (9, 19, 24),
                                   (17, 35, 100), (40, 64, 2880)])
def test_bf16_linear_one_level(simd, m, R, K):
    # levels=1 (the engine's activation_levels=1): at the avx512bf16 level x is rounded to bf16
    # (relative error <= 2^-9 per value, so |error| <= 2^-9 * sum |w x| on top of the float32
    # sums) and held to that rounding emulated (float32 accumulation only); elsewhere the float32
    # code, the bits of levels=2
    rng = np.random.default_rng(m * R + K + 7)
    w = f32_to_bf16(rng.standard_normal((R, K)).astype(np.float32) / math.sqrt(K))
    x = rng.standard_normal((m, K)).astype(np.float32)
    b = rng.standard_normal(R).astype(np.float32)
    got = C.ops.bf16_linear(x, w, b, levels=1)
    wf = bf16_to_f32(w).astype(np.float64)
    scale = np.abs(x.astype(np.float64)) @ np.abs(wf).T
    if simd == "avx512bf16":
        xb = bf16_to_f32(f32_to_bf16(x)).astype(np.float64)
        assert np.all(np.abs(got - (x.astype(np.float64) @ wf.T + b)) <= 2.0 ** -9 * scale + 1e-6)
        emu = xb @ wf.T + b
        assert np.all(np.abs(got - emu) <= f32_bound(K) * (scale + np.abs(b))), simd
        assert not np.array_equal(got, C.ops.bf16_linear(x, w, b))  # the one-level code ran
    else:
        assert np.array_equal(got, C.ops.bf16_linear(x, w, b)), simd
    if m > 1:  # decode and prefill tiles: the same bits
        rows = np.concatenate([C.ops.bf16_linear(x[i:i + 1], w, b, levels=1) for i in range(m)])
        assert np.array_equal(rows, got), simd


def test_bf16_linear_strided_rows():
    # rows of a fused tensor (the original layout's QKV) are a strided view
    rng = np.random.default_rng(0)
    full = f32_to_bf16(rng.standard_normal((10, 64)).astype(np.float32))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    got = C.ops.bf16_linear(x, full[3:7])
    assert rel_err(got, x @ bf16_to_f32(full[3:7]).T) < f32_bound(64)


# --------------------------------------------------------------------------------- MXFP4
def mxfp4_case(rng, R, nb):
    blocks = rng.integers(0, 256, (R, nb, 16), dtype=np.uint8)
    scales = (120 + rng.integers(0, 3, (R, nb))).astype(np.uint8)
    return blocks, scales


@pytest.mark.parametrize("m,R,nb", [(1, 5760, 90), (1, 2880, 90), (4, 64, 90), (7, 33, 3),
                                    (1, 1, 1), (2, 5, 5), (13, 17, 6)])
@pytest.mark.parametrize("levels", [2, 1])
def test_mxfp4_linear(simd, m, R, nb, levels):
    rng = np.random.default_rng(R * nb + m)
    blocks, scales = mxfp4_case(rng, R, nb)
    x = rng.standard_normal((m, nb * 32)).astype(np.float32)
    b = rng.standard_normal(R).astype(np.float32)
    got = C.ops.mxfp4_linear(x, blocks, scales, b, levels=levels)
    want = x.astype(np.float64) @ ref.mxfp4_dequantize(blocks, scales).astype(np.float64).T + b
    bound = (Q2_BOUND if levels == 2 else Q1_BOUND) + f32_bound(nb * 32)
    assert rel_err(got, want) < bound, (simd, levels, rel_err(got, want), bound)


def test_mxfp4_zero_and_extreme_blocks():
    rng = np.random.default_rng(5)
    blocks, scales = mxfp4_case(rng, 8, 4)
    x = rng.standard_normal((3, 128)).astype(np.float32)
    x[0, :32] = 0.0                       # an all-zero activation block
    x[1, 32:64] *= 1e4                    # a block far larger than its neighbours
    got = C.ops.mxfp4_linear(x, blocks, scales)
    want = x.astype(np.float64) @ ref.mxfp4_dequantize(blocks, scales).astype(np.float64).T
    for t in range(3):
        assert rel_err(got[t], want[t]) < Q2_BOUND + f32_bound(128)


def test_simd_levels_agree_with_plain():
    if len(LEVELS) == 1:
        pytest.skip("only the plain kernels exist on this processor")
    rng = np.random.default_rng(9)
    blocks, scales = mxfp4_case(rng, 96, 90)
    x = rng.standard_normal((5, 2880)).astype(np.float32)
    w = f32_to_bf16(rng.standard_normal((96, 2880)).astype(np.float32))
    outs = {}
    for lv in LEVELS:
        C.force_simd(lv)
        outs[lv] = (C.ops.mxfp4_linear(x, blocks, scales), C.ops.bf16_linear(x, w))
    C.force_simd(LEVELS[-1])
    for lv in LEVELS[1:]:
        # same integer products; only the float32 summation order differs
        assert rel_err(outs[lv][0], outs["plain"][0]) < f32_bound(2880), lv
        assert rel_err(outs[lv][1], outs["plain"][1]) < f32_bound(2880), lv


# --------------------------------------------------------------------------------- MXFP4 r16
def pack_r16_numpy(blocks, scales):
    """The r16 layout as csrc/cpu/mxfp4_r16.cpp documents it, written independently: groups of 16
    rows (zero codes and scale 127 past R); per group and block 8 chunks of 32 bytes, byte
    16L + 2i + k of chunk c holding byte 2c + k of row 8L + i; then the 16 scales in lane order."""
    R, nb, _ = blocks.shape
    G = (R + 15) // 16
    b = np.zeros((G * 16, nb, 16), np.uint8)
    s = np.full((G * 16, nb), 127, np.uint8)
    b[:R], s[:R] = blocks, scales
    b = b.reshape(G, 2, 8, nb, 8, 2)            # g, L, i, block, c, k
    codes = b.transpose(0, 3, 4, 1, 2, 5).reshape(G, nb, 256)
    lane_row = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15]
    sc = s.reshape(G, 16, nb)[:, lane_row, :].transpose(0, 2, 1)
    return np.concatenate([codes, sc], axis=2)


@pytest.mark.parametrize("R,nb", [(33, 3), (16, 1), (5, 2), (2880, 90)])
def test_mxfp4_pack_r16_layout(R, nb):
    rng = np.random.default_rng(R + nb)
    blocks, scales = mxfp4_case(rng, R, nb)
    got = C.ops.mxfp4_pack_r16(blocks, scales)
    assert got.shape == ((R + 15) // 16, nb, 272)
    assert np.array_equal(got, pack_r16_numpy(blocks, scales))


# m >= 8 takes the AMX-BF16 tiles at the amx level (either levels): tiles of 16 tokens, the last one
# partial where m is not a multiple of 16, bands of one or two groups of 16 rows; fewer tokens
# the AVX-512 code
@pytest.mark.parametrize("m,R,nb", [(1, 5760, 90), (1, 2880, 90), (4, 64, 90), (7, 33, 3),
                                    (1, 1, 1), (2, 5, 5), (13, 17, 6), (9, 48, 7), (16, 48, 7),
                                    (35, 33, 3), (22, 48, 7), (25, 48, 7), (64, 256, 90), (17, 20, 100), (8, 33, 5), (33, 80, 9),
                                    (30, 40, 100), (150, 48, 9)])
@pytest.mark.parametrize("levels", [2, 1])
def test_mxfp4_r16_linear(simd, m, R, nb, levels):
    rng = np.random.default_rng(R * nb + m + 1)
    blocks, scales = mxfp4_case(rng, R, nb)
    x = rng.standard_normal((m, nb * 32)).astype(np.float32)
    b = rng.standard_normal(R).astype(np.float32)
    got = C.ops.mxfp4_r16_linear(x, C.ops.mxfp4_pack_r16(blocks, scales), R, b, levels=levels)
    w = ref.mxfp4_dequantize(blocks, scales).astype(np.float64)
    want = x.astype(np.float64) @ w.T + b
    assert got.shape == (m, R)
    q = Q16_BOUND if levels == 2 else Q1_BOUND
    assert rel_err(got, want) < q + f32_bound(nb * 32), (simd, rel_err(got, want))
    if levels == 1:
        # the quantization itself, emulated: only the float32 sums over blocks differ (at the
        # amx level 8 tokens or more take bf16 activations on the AMX tiles, fewer int8)
        xq = bf16_to_f32(f32_to_bf16(x)) if simd == "amx" and m >= 8 else x_int8_emulated(x)
        emu = xq.astype(np.float64) @ w.T + b
        assert rel_err(got, emu) < f32_bound(nb * 32), (simd, rel_err(got, emu))


def x_int8_emulated(x):
    """x as the one-level kernels see it: per 32-block q = clip(rint(x * (127 / max|x|)), +-127)
    in float32 arithmetic, the value q * max / 127."""
    xb = x.reshape(x.shape[0], -1, 32)
    amax = np.abs(xb).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(xb * inv), -127, 127)
    return (q.astype(np.float64) * (amax.astype(np.float64) / 127)).reshape(x.shape)


@pytest.mark.parametrize("levels", [2, 1])
def test_mxfp4_r16_same_bits_at_every_level_and_grouping(levels):
    rng = np.random.default_rng(11)
    blocks, scales = mxfp4_case(rng, 40, 7)
    x = rng.standard_normal((41, 224)).astype(np.float32)
    x[2, :32] = 0.0        # an all-zero activation block
    x[3, 64:96] *= 1e4     # a block far larger than its neighbours
    x[20, 96:128] = 1e-36  # a tiny block (its step a float32 subnormal)
    x[21, :] = 1e30        # a constant block: every int16 code at +-32767
    x[21, 1::2] *= -1
    P = C.ops.mxfp4_pack_r16(blocks, scales)
    f = lambda x_, P_, rows: C.ops.mxfp4_r16_linear(x_, P_, rows, levels=levels)  # noqa: E731
    outs = {}
    for lv in LEVELS:  # "plain" first
        C.force_simd(lv)
        outs[lv] = f(x, P, 40)
        alone = np.concatenate([f(x[i:i + 1], P, 40) for i in range(41)])
        if lv == "amx":
            # calls of 8 tokens or more run on the AMX-BF16 tiles (x as two bf16 terms, one with
            # levels 1; float32 sums over all of K): a token's bits do not depend on the other
            # tokens of its call nor on its place in a tile (41: three tiles, the last one
            # partial; 8: one partial)
            for lo, hi in ((0, 35), (6, 41), (13, 21), (33, 41), (0, 16), (1, 17)):
                assert np.array_equal(f(x[lo:hi], P, 40), outs[lv][lo:hi]), (lo, hi)
            # fewer tokens (decode) take the AVX-512 integer code: the plain code's bits; so does
            # any number with exact=True (batch_invariant)
            assert np.array_equal(alone, outs["plain"])
            assert np.array_equal(C.ops.mxfp4_r16_linear(x, P, 40, levels=levels, exact=True),
                                  outs["plain"])
            assert np.array_equal(f(x[:7], P, 40), outs["plain"][:7])
            # and the two agree within the integer code's bound
            q = Q16_BOUND if levels == 2 else Q1_BOUND
            assert rel_err(outs[lv], outs["plain"]) < 2 * (q + f32_bound(224))
        else:
            # each token alone (decode) gives the bits of the 41-token call (prefill: SIMD tiles
            # of 4 or 8 tokens) and of 35 tokens
            assert np.array_equal(alone, outs[lv]), lv
            assert np.array_equal(f(x[:35], P, 40), outs[lv][:35]), lv
        # the first 16 rows as a matrix of their own: the same bits
        first = f(x, C.ops.mxfp4_pack_r16(blocks[:16], scales[:16]), 16)
        assert np.array_equal(first, outs[lv][:, :16]), lv
    C.force_simd(LEVELS[-1])
    for lv in LEVELS[1:]:
        if lv != "amx":
            assert np.array_equal(outs[lv], outs["plain"]), lv


def test_mxfp4_r16_rejects_bad_arguments():
    P = C.ops.mxfp4_pack_r16(np.zeros((20, 2, 16), np.uint8), np.zeros((20, 2), np.uint8))
    with pytest.raises(ValueError, match="rows = 40 does not match 2 packed groups"):
        C.ops.mxfp4_r16_linear(np.zeros((1, 64), np.float32), P, 40)
    with pytest.raises(ValueError, match="x"):
        C.ops.mxfp4_r16_linear(np.zeros((1, 96), np.float32), P, 20)
    with pytest.raises(ValueError, match="levels = 3"):
        C.ops.mxfp4_r16_linear(np.zeros((1, 64), np.float32), P, 20, levels=3)


# --------------------------------------------------------------------------------- MoE
@pytest.mark.parametrize("n,E,H,I", [(1, 32, 2880, 2880), (6, 32, 128, 96), (3, 128, 64, 32)])
@pytest.mark.parametrize("levels,repack", [(2, False), (1, False), (2, True), (1, True)])
def test_moe_matches_numpy_experts(simd, n, E, H, I, levels, repack):
    rng = np.random.default_rng(n + E)
    k = 4
    # only the experts the tokens route to need real weights; the rest stay zero (sparse memory)
    experts = np.stack([rng.choice(E, k, replace=False) for _ in range(n)]).astype(np.int32)
    used = np.unique(experts)
    w1b = np.zeros((E, 2 * I, H // 32, 16), np.uint8)
    w1s = np.full((E, 2 * I, H // 32), 120, np.uint8)
    w2b = np.zeros((E, H, I // 32, 16), np.uint8)
    w2s = np.full((E, H, I // 32), 121, np.uint8)
    for e in used:
        w1b[e] = rng.integers(0, 256, w1b.shape[1:], dtype=np.uint8)
        w2b[e] = rng.integers(0, 256, w2b.shape[1:], dtype=np.uint8)
    b1 = rng.standard_normal((E, 2 * I)).astype(np.float32) * 0.2
    b2 = rng.standard_normal((E, H)).astype(np.float32) * 0.05
    t = rng.standard_normal((n, H)).astype(np.float32)
    wts = rng.dirichlet(np.ones(k), n).astype(np.float32)
    got = C.ops.moe(t, experts, wts, w1b, w1s, b1, w2b, w2s, b2, levels=levels, repack=repack)
    want = np.zeros((n, H))
    for i in range(n):
        for j in range(k):
            e = experts[i, j]
            u = ref.mxfp4_dequantize(w1b[e], w1s[e]).astype(np.float64) @ t[i] + b1[e]
            a = ref.swiglu(u.astype(np.float32), 1.702, 7.0).astype(np.float64)
            want[i] += wts[i, j] * (ref.mxfp4_dequantize(w2b[e], w2s[e]).astype(np.float64) @ a + b2[e])
    # two quantized products in sequence: twice the single bound
    q = Q1_BOUND if levels == 1 else Q16_BOUND if repack else Q2_BOUND
    assert rel_err(got, want) < 2 * (q + f32_bound(max(H, I))), rel_err(got, want)


def test_moe_rejects_bad_expert_ids():
    z = np.zeros
    with pytest.raises(ValueError, match="outside"):
        C.ops.moe(z((1, 64), np.float32), np.array([[0, 1, 2, 40]]), z((1, 4), np.float32),
                  z((32, 64, 2, 16), np.uint8), z((32, 64, 2), np.uint8), z((32, 64), np.float32),
                  z((32, 64, 1, 16), np.uint8), z((32, 64, 1), np.uint8), z((32, 64), np.float32))


# --------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("S,window", [(100, 128), (128, 128), (200, 128), (200, 0), (1, 0),
                                      (37, 8)])
def test_attention(simd, S, window):
    rng = np.random.default_rng(S + window)
    Hq, Hkv, d = 64, 8, 64
    q = rng.standard_normal((S, Hq, d)).astype(np.float32)
    k = rng.standard_normal((S, Hkv, d)).astype(np.float32)
    v = rng.standard_normal((S, Hkv, d)).astype(np.float32)
    sinks = rng.standard_normal(Hq).astype(np.float32)
    qpos = np.arange(S)
    got = C.ops.attention(q, k, v, qpos, sinks, window)
    want = ref.attention(q, k, v, qpos, qpos, sinks, window if window > 0 else None)
    assert rel_err(got, want) < f32_bound(d * S)
    # decode form: only the last query
    got1 = C.ops.attention(q[-1:], k, v, qpos[-1:], sinks, window)
    assert rel_err(got1, want[-1:]) < f32_bound(d * S)


@pytest.mark.parametrize("S,window", [(200, 128), (200, 0), (1, 0), (37, 8), (16, 0), (33, 0),
                                      (300, 0)])
def test_attention_bf16_cache(simd, S, window):
    """The bf16 cache's kernels (Options::kv_dtype "bf16") widen each key and value exactly and
    then do the float32 kernels' arithmetic: bit-identical to them on the widened values, and so
    within the same bound of the NumPy attention over the rounded K and V."""
    rng = np.random.default_rng(S * 3 + window)
    Hq, Hkv, d = 64, 8, 64
    q = rng.standard_normal((S, Hq, d)).astype(np.float32)
    kb = f32_to_bf16(rng.standard_normal((S, Hkv, d)).astype(np.float32))
    vb = f32_to_bf16(rng.standard_normal((S, Hkv, d)).astype(np.float32))
    sinks = rng.standard_normal(Hq).astype(np.float32)
    qpos = np.arange(S)
    k, v = bf16_to_f32(kb), bf16_to_f32(vb)
    got = C.ops.attention(q, kb, vb, qpos, sinks, window)
    want = ref.attention(q, k, v, qpos, qpos, sinks, window if window > 0 else None)
    assert np.array_equal(got, C.ops.attention(q, k, v, qpos, sinks, window))
    assert rel_err(got, want) < f32_bound(d * S), rel_err(got, want)
    got1 = C.ops.attention(q[-1:], kb, vb, qpos[-1:], sinks, window)
    assert np.array_equal(got1, got[-1:])
    # a general head geometry (the plain kernel at every level)
    q3 = q[:, :12, :48].copy()
    k3, v3 = kb[:, :3, :48].copy(), vb[:, :3, :48].copy()
    got3 = C.ops.attention(q3, k3, v3, qpos, sinks[:12], window)
    want3 = ref.attention(q3, bf16_to_f32(k3), bf16_to_f32(v3), qpos, qpos, sinks[:12],
                          window if window > 0 else None)
    assert rel_err(got3, want3) < f32_bound(48 * S)
    with pytest.raises(ValueError, match="both be bf16"):
        C.ops.attention(q, kb, v, qpos, sinks, window)


def test_attention_rejects_bad_positions():
    z = np.zeros((2, 8, 64), np.float32)
    with pytest.raises(ValueError, match="qpos"):
        C.ops.attention(z, z[:, :1], z[:, :1], np.array([0, 5]), np.zeros(8, np.float32))


# --------------------------------------------------------------------------------- small ops
def test_rmsnorm_rope_topk_swiglu():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 2880)).astype(np.float32)
    w = rng.uniform(0.5, 1.5, 2880).astype(np.float32)
    assert rel_err(C.ops.rmsnorm(x, w, 1e-5), ref.rmsnorm(x, w, 1e-5)) < f32_bound(2880)

    from gptoss.testing import preset_config
    cfg = preset_config("20b")
    pos = np.array([0, 1, 127, 4096, 131071])
    cos, sin = ref.rope_cos_sin(cfg, pos)
    xr = rng.standard_normal((5, 72, 64)).astype(np.float32)
    assert rel_err(C.ops.rope(xr, cos, sin), ref.apply_rope(xr, cos, sin)) < 4 * EPS32

    for E in (32, 128):
        g = rng.standard_normal((7, E)).astype(np.float32)
        g[0, :6] = 1.5                                     # ties: lower index first
        ex, wt = C.ops.topk_softmax(g, 4)
        rex, rwt = ref.route(g, 4)
        assert np.array_equal(ex, rex)
        np.testing.assert_allclose(wt, rwt, rtol=8 * EPS32)

    u = rng.standard_normal((3, 192)).astype(np.float32) * 6
    np.testing.assert_allclose(C.ops.swiglu(u), ref.swiglu(u, 1.702, 7.0), rtol=16 * EPS32,
                               atol=1e-6)


def test_read_bandwidth_is_measured():
    bw = C.read_bandwidth(0.2, 3)
    assert 0.5 < bw < 5000


def test_gptoss_ops_front_door_takes_numpy_and_dlpack():
    from gptoss import ops
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    w = f32_to_bf16(rng.standard_normal((5, 64)).astype(np.float32))
    want = x @ bf16_to_f32(w).T

    class DLPackOnly:
        """An array that only speaks DLPack, like a CPU tensor of another library."""
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, *args, **kwargs):
            return self.a.__dlpack__(*args, **kwargs)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()
    for xin in (x, DLPackOnly(x)):
        assert rel_err(ops.bf16_linear(xin, w), want) < f32_bound(64)
    assert "attention" in dir(ops) and ops.simd_levels()[0] == "plain"
    with pytest.raises(AttributeError):
        ops.no_such_kernel
