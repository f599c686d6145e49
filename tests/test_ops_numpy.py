"""Each operation of the NumPy engine against a float64 transcription of the model's math written here.

Tolerances: float32 rounding of the engine against float64 here. Elementwise ops get
`atol + rtol*|ref|` with rtol a few float32 ulps; reductions get a global relative error bounded
by the float32 epsilon times the square root of the reduction length (random rounding walk), with
a safety factor of 16.
"""
import math

import numpy as np
import pytest

from gptoss.backends import numpy as ref
from gptoss.testing import preset_config

from conftest import rel_err

EPS32 = float(np.finfo(np.float32).eps)


def reduction_bound(n):
    return 16 * EPS32 * math.sqrt(n)


# ------------------------------------------------------------------------------- MXFP4
E2M1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6]


def mxfp4_f64(blocks, scales):
    rows, nb, _ = blocks.shape
    out = np.zeros((rows, nb * 32))
    for r in range(rows):
        for b in range(nb):
            s = 2.0 ** (int(scales[r, b]) - 127)
            for j in range(16):
                byte = int(blocks[r, b, j])
                out[r, b * 32 + 2 * j] = E2M1[byte & 15] * s
                out[r, b * 32 + 2 * j + 1] = E2M1[byte >> 4] * s
    return out


def test_mxfp4_decode_bit_exact():
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (7, 5, 16), dtype=np.uint8)
    blocks[0, 0] = np.arange(16, dtype=np.uint8) * 17          # every code in both nibbles
    scales = rng.integers(100, 140, (7, 5), dtype=np.uint8)
    scales[1, :] = [1, 127, 128, 200, 0]                       # extremes of E8M0 in range
    got = ref.mxfp4_dequantize(blocks, scales)
    want = mxfp4_f64(blocks, scales).astype(np.float32)
    assert got.dtype == np.float32
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), \
        np.argwhere(got.view(np.uint32) != want.view(np.uint32))[:5]


def test_mxfp4_nibble_order():
    # byte 0x21: value 0 is the LOW nibble (code 1 = 0.5), value 1 the HIGH nibble (code 2 = 1.0)
    blocks = np.zeros((1, 1, 16), dtype=np.uint8)
    blocks[0, 0, 0] = 0x21
    out = ref.mxfp4_dequantize(blocks, np.full((1, 1), 127, dtype=np.uint8))
    assert out[0, 0] == 0.5 and out[0, 1] == 1.0 and not out[0, 2:].any()


# ------------------------------------------------------------------------------- RMSNorm
def test_rmsnorm():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2880)).astype(np.float32) * 3
    w = rng.uniform(0.5, 1.5, 2880).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True) + 1e-5) * w
    got = ref.rmsnorm(x, w, 1e-5)
    np.testing.assert_allclose(got, want, rtol=8 * EPS32, atol=1e-6)


# ------------------------------------------------------------------------------- RoPE / YaRN
def yarn_f64(d=64, theta=150000.0, s=32.0, L0=4096, bf=32.0, bs=1.0):
    low = d * math.log(L0 / (bf * 2 * math.pi)) / (2 * math.log(theta))
    high = d * math.log(L0 / (bs * 2 * math.pi)) / (2 * math.log(theta))
    inv = []
    for i in range(d // 2):
        base = theta ** (2 * i / d)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)
        inv.append((1 / (s * base)) * ramp + (1 / base) * (1 - ramp))
    return np.array(inv), 0.1 * math.log(s) + 1, low, high


def test_yarn_constants_of_spec():
    _, m, low, high = yarn_f64()
    assert abs(low - 8.0928) < 1e-4 and abs(high - 17.3980) < 1e-4
    assert abs(m - 1.34657) < 1e-5


def test_yarn_frequencies():
    cfg = preset_config("20b")
    inv, m = ref.yarn_frequencies(cfg)
    inv64, m64, low, high = yarn_f64()
    np.testing.assert_allclose(inv, inv64, rtol=1e-12)
    assert m == pytest.approx(m64, rel=1e-12)
    # below `low` pairs keep the original frequency; above `high` they are divided by the factor
    assert inv[0] == pytest.approx(1.0) and inv[8] == pytest.approx(150000.0 ** (-16 / 64))
    assert inv[31] == pytest.approx(150000.0 ** (-62 / 64) / 32)


@pytest.mark.parametrize("positions", [[0], [1, 2, 3], [127, 128, 4095, 4096, 131071]])
def test_rope_rotation(positions):
    cfg = preset_config("20b")
    rng = np.random.default_rng(2)
    pos = np.array(positions)
    x = rng.standard_normal((len(pos), 3, 64)).astype(np.float32)
    cos, sin = ref.rope_cos_sin(cfg, pos)
    got = ref.apply_rope(x, cos, sin)
    inv, m, _, _ = yarn_f64()
    want = np.zeros(x.shape)
    for t, p in enumerate(pos):
        for h in range(3):
            for i in range(32):
                a = p * inv[i]
                c, s = math.cos(a) * m, math.sin(a) * m
                x1, x2 = float(x[t, h, i]), float(x[t, h, 32 + i])
                want[t, h, i] = x1 * c - x2 * s
                want[t, h, 32 + i] = x2 * c + x1 * s
    # cos/sin rounded to float32 at angles up to ~1.3e5 rad: absolute error ~ eps32 * |x| * m
    np.testing.assert_allclose(got, want, rtol=0, atol=16 * EPS32 * np.abs(x).max() * m)


# ------------------------------------------------------------------------------- attention
def attention_f64(q, k, v, sinks, window, q_offset=0):
    T, Hq, d = q.shape
    S, Hkv, _ = k.shape
    G = Hq // Hkv
    out = np.zeros((T, Hq, d))
    for t in range(T):
        i = q_offset + t
        for h in range(Hq):
            kv = h // G
            js = [j for j in range(S) if j <= i and (window is None or j > i - window)]
            s = np.array([np.dot(q[t, h].astype(np.float64), k[j, kv]) / math.sqrt(d) for j in js])
            e = np.exp(s - max(s.max(), sinks[h]))
            denom = e.sum() + math.exp(sinks[h] - max(s.max(), sinks[h]))
            out[t, h] = (e[:, None] * v[js, kv].astype(np.float64)).sum(0) / denom
    return out


@pytest.mark.parametrize("T,window", [(5, 8), (8, 8), (13, 8), (13, None), (1, None)])
def test_attention_sink_window_gqa(T, window):
    rng = np.random.default_rng(3)
    Hq, Hkv, d = 16, 2, 64
    q = rng.standard_normal((T, Hq, d)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, d)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, d)).astype(np.float32)
    sinks = rng.standard_normal(Hq).astype(np.float32) * 2
    pos = np.arange(T)
    got = ref.attention(q, k, v, pos, pos, sinks, window, block=4)
    want = attention_f64(q, k, v, sinks, window)
    assert rel_err(got, want) < reduction_bound(d * T)


def test_attention_gqa_mapping_is_h_div_group():
    # kv head 1 has values 1, kv head 0 values 0: query heads 8..15 must read 1, 0..7 read 0
    T, d = 3, 64
    q = np.ones((T, 16, d), np.float32)
    k = np.ones((T, 2, d), np.float32)
    v = np.zeros((T, 2, d), np.float32)
    v[:, 1] = 1.0
    out = ref.attention(q, k, v, np.arange(T), np.arange(T), np.full(16, -30.0, np.float32), None)
    assert np.allclose(out[:, :8], 0) and np.allclose(out[:, 8:], 1.0, atol=1e-6)


def test_attention_sink_absorbs_mass():
    # one key with logit 0 and a sink of logit log(3): the value is weighted 1/(1+3)
    q = np.zeros((1, 1, 64), np.float32)
    k = np.zeros((1, 1, 64), np.float32)
    v = np.ones((1, 1, 64), np.float32)
    out = ref.attention(q, k, v, np.array([0]), np.array([0]),
                        np.array([math.log(3)], np.float32), None)
    np.testing.assert_allclose(out, 0.25, rtol=4 * EPS32)


# ------------------------------------------------------------------------------- router
def test_route_top4_softmax_over_chosen():
    rng = np.random.default_rng(4)
    g = rng.standard_normal((6, 32)).astype(np.float32)
    idx, w = ref.route(g, 4)
    for t in range(6):
        want = sorted(range(32), key=lambda e: (-float(g[t, e]), e))[:4]
        assert list(idx[t]) == want
        z = np.exp(g[t, want].astype(np.float64) - g[t, want].max())
        np.testing.assert_allclose(w[t], z / z.sum(), rtol=4 * EPS32)


def test_route_ties_prefer_lower_index():
    g = np.zeros((1, 128), np.float32)
    g[0, [100, 7, 50, 3, 90]] = 1.0
    idx, w = ref.route(g, 4)
    assert list(idx[0]) == [3, 7, 50, 90]
    np.testing.assert_allclose(w, 0.25)


# ------------------------------------------------------------------------------- SwiGLU
def test_swiglu_clamps():
    u = np.array([[10.0, 10.0, -10.0, -10.0, 1.0, 0.5, 7.5, -8.0]], np.float32)
    got = ref.swiglu(u, 1.702, 7.0)

    def f(gate, lin):
        gate = min(gate, 7.0)                  # gate clamped from above only
        lin = min(max(lin, -7.0), 7.0)         # linear clamped both sides
        return gate / (1 + math.exp(-1.702 * gate)) * (lin + 1)
    want = [f(10, 10), f(-10, -10), f(1, 0.5), f(7.5, -8)]
    np.testing.assert_allclose(got[0], want, rtol=8 * EPS32, atol=1e-7)
    # the gate is NOT clamped from below: f(-10, ...) uses -10, giving a tiny negative, not -7's
    assert got[0, 1] == pytest.approx(-10 / (1 + math.exp(17.02)) * -6, rel=1e-5)
