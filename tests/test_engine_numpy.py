"""The whole NumPy engine: against a float64 transcription of the forward pass, across layouts,
and prefill + decode against one prefill."""
import math

import numpy as np
import pytest

from gptoss import Model, Weights
from gptoss.backends.numpy import NumpyEngine

from conftest import rel_err
from test_ops_numpy import EPS32, attention_f64, mxfp4_f64


def forward_f64(w: Weights, tokens):
    """The forward pass, literally, in float64 (independent of the engine's code)."""
    cfg = w.config
    f = lambda role, l=None: w.f32(role, l).astype(np.float64)
    T = len(tokens)
    x = f("embedding")[tokens]
    inv = []
    d = cfg.head_dim
    low = d * math.log(cfg.rope_original_context / (cfg.rope_beta_fast * 2 * math.pi)) / (
        2 * math.log(cfg.rope_theta))
    high = d * math.log(cfg.rope_original_context / (cfg.rope_beta_slow * 2 * math.pi)) / (
        2 * math.log(cfg.rope_theta))
    for i in range(d // 2):
        base = cfg.rope_theta ** (2 * i / d)
        ramp = min(max((i - low) / (high - low), 0), 1)
        inv.append((1 / (cfg.rope_factor * base)) * ramp + (1 / base) * (1 - ramp))
    inv = np.array(inv)
    m = 0.1 * math.log(cfg.rope_factor) + 1
    ang = np.arange(T)[:, None] * inv[None]
    c, s = np.cos(ang)[:, None] * m, np.sin(ang)[:, None] * m

    def rope(a):
        a1, a2 = a[..., :d // 2], a[..., d // 2:]
        return np.concatenate([a1 * c - a2 * s, a2 * c + a1 * s], -1)

    def norm(a, wt):
        return a / np.sqrt(np.mean(a * a, -1, keepdims=True) + cfg.rms_norm_eps) * wt

    for l in range(cfg.num_layers):
        t = norm(x, f("attn_norm", l))
        q = (t @ f("q_w", l).T + f("q_b", l)).reshape(T, cfg.num_heads, d)
        k = (t @ f("k_w", l).T + f("k_b", l)).reshape(T, cfg.num_kv_heads, d)
        v = (t @ f("v_w", l).T + f("v_b", l)).reshape(T, cfg.num_kv_heads, d)
        o = attention_f64(rope(q), rope(k), v, f("sinks", l), cfg.window_of(l))
        x = x + o.reshape(T, -1) @ f("out_w", l).T + f("out_b", l)
        t = norm(x, f("mlp_norm", l))
        g = t @ f("router_w", l).T + f("router_b", l)
        for i in range(T):
            top = sorted(range(cfg.num_experts), key=lambda e: (-g[i, e], e))[:4]
            z = np.exp(g[i, top] - g[i, top].max())
            z /= z.sum()
            for wj, e in zip(z, top):
                w1 = mxfp4_f64(w.raw("w1_blocks", l)[e], w.raw("w1_scales", l)[e])
                u = w1 @ t[i] + f("w1_bias", l)[e]
                gate = np.minimum(u[0::2], cfg.swiglu_limit)
                lin = np.clip(u[1::2], -cfg.swiglu_limit, cfg.swiglu_limit)
                a = gate / (1 + np.exp(-cfg.swiglu_alpha * gate)) * (lin + 1)
                w2 = mxfp4_f64(w.raw("w2_blocks", l)[e], w.raw("w2_scales", l)[e])
                x[i] += wj * (w2 @ a + f("w2_bias", l)[e])
    x = norm(x, f("final_norm"))
    return x @ f("unembedding").T


def test_engine_matches_float64_spec(small_window):
    w = Weights(small_window)
    tokens = [5, 200006, 17, 9000, 3, 3, 123456, 42, 7, 1000]   # crosses the 4-token window
    got = NumpyEngine(w).prefill(tokens)
    want = forward_f64(w, tokens)
    # float32 through 3 layers of reductions of length <= max(H, q_width, 2I): the relative
    # error of the logits grows with depth; bound it by layers * reduction bound.
    n = max(w.config.hidden_size, w.config.q_width, 2 * w.config.intermediate_size)
    bound = w.config.num_layers * 16 * EPS32 * math.sqrt(n)
    assert rel_err(got, want) < bound, (rel_err(got, want), bound)
    assert np.array_equal(np.argmax(got, -1), np.argmax(want, -1))


def test_layouts_give_identical_logits(tiny_hf, tiny_original, tiny_sharded):
    tokens = list(range(100, 140))
    outs = [NumpyEngine(Weights(p)).prefill(tokens) for p in (tiny_hf, tiny_original, tiny_sharded)]
    assert Weights(tiny_original).layout == "original"
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("split", [1, 127, 128, 129, 150])
def test_prefill_then_decode_equals_full_prefill(tiny_hf, split):
    """Across the 128-token window of the sliding layers: the cache must drop exactly the old."""
    w = Weights(tiny_hf)
    rng = np.random.default_rng(split)
    tokens = rng.integers(0, 199998, 160).tolist()
    full = NumpyEngine(w).prefill(tokens)
    eng = NumpyEngine(w)
    got = [eng.prefill(tokens[:split])]
    for t in tokens[split:]:
        got.append(eng.decode(t)[None])
    got = np.concatenate(got)
    assert got.shape == full.shape
    # same math, different blocking of the reductions: a few float32 ulps of the logits
    assert rel_err(got, full) < 64 * EPS32
    assert all(len(c) <= 128 for l, c in enumerate(eng.caches) if w.config.layer_sliding[l])
    assert len(eng.caches[1]) == 160


def test_activations_finite_and_spread(tiny_hf):
    w = Weights(tiny_hf)
    logits = NumpyEngine(w).prefill(list(range(1000, 1064)))
    assert np.isfinite(logits).all()
    assert 0.1 < logits.std() < 100
    # the router spreads tokens over experts (random router weights, not collapsed)
    from gptoss.backends.numpy import rmsnorm, route
    x = w.f32("embedding")[np.arange(1000, 1064)]
    g = rmsnorm(x, w.f32("mlp_norm", 0), 1e-5) @ w.f32("router_w", 0).T
    idx, _ = route(g, 4)
    assert len(np.unique(idx)) >= 24


def test_model_forward_shape_and_errors(tiny_hf):
    m = Model.from_pretrained(tiny_hf, backend="numpy")
    out = m.forward([1, 2, 3])
    assert out.shape == (3, 201088) and out.dtype == np.float32
    with pytest.raises(ValueError, match="out of range"):
        m.forward([1, 201088])
    with pytest.raises(ValueError, match="out of range"):
        m.forward([-1])
    with pytest.raises(ValueError, match="empty"):
        m.forward([])


def test_context_limit_is_enforced(tiny_hf):
    eng = NumpyEngine(Weights(tiny_hf), max_context=8)
    eng.prefill([1] * 6)
    with pytest.raises(ValueError, match="context limit"):
        eng.prefill([1] * 3)
    eng.decode(1)
    eng.decode(1)
    with pytest.raises(ValueError, match="context limit"):
        eng.decode(1)
