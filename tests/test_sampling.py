"""Token sampling: the NumPy mirror (gptoss.sampling.sample_gumbel), the C++ reference
(gptoss._C.ops.sample_reference, csrc/common/sample_ref.h) and the CUDA kernel
(gptoss._C.ops.cuda_sample) give the same token for every (seed, counter) and parameter set,
and the tokens they draw follow softmax(logits / T) restricted to the top-k / top-p candidates.

The three share integer RNG bits and unfused float32 arithmetic (csrc/common/sample_math.h), so
equality is exact, not a tolerance. The distribution check is a chi-square statistic over N
draws: for df = kept - 1 degrees of freedom, E[chi2] = df and sd = sqrt(2 df); the bound
df + 8 sqrt(2 df) + 8 is exceeded by chance with probability below 1e-5 for df <= 8, and the
draws are fixed by their seeds, so a pass is reproducible.
"""
import math

import numpy as np
import pytest

from gptoss.sampling import rng_uniform, sample_gumbel

C = pytest.importorskip("gptoss._C", reason="extension not built")
HAS_CUDA = C.build_info()["cuda_compiled"] and C.cuda_device_count()[0] > 0
cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device (or built without CUDA)")

PARAMS = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (1.3, 1, 1.0),
          (1.0, 0, 0.9), (0.6, 0, 0.5), (2.0, 0, 0.05), (1.0, 20, 0.8), (0.9, 3, 0.99),
          (1.5, 100000, 0.7)]


def expected_probs(logits, T, top_k, top_p):
    """The sampling distribution in float64, as gptoss.Sampler defines it."""
    z = np.asarray(logits, np.float64) / T
    order = np.lexsort((np.arange(z.size), -z))          # logit descending, lower index first
    if 0 < top_k < z.size:
        order = order[:top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    out = np.zeros(z.size)
    out[order] = p
    return out


def logit_rows(rng, V):
    scale = rng.choice([0.1, 1.0, 4.0])
    l = (rng.standard_normal(V) * scale).astype(np.float32)
    if rng.random() < 0.3:
        l = np.round(l).astype(np.float32)                # many ties
    return l


# ------------------------------------------------------------------------------ RNG
def test_uniform_in_open_interval_and_spread():
    u = rng_uniform(1234, 5, np.arange(200000))
    assert u.dtype == np.float32 and u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
    hist = np.bincount((u * 16).astype(int), minlength=16)
    chi2 = float(((hist - u.size / 16) ** 2 / (u.size / 16)).sum())
    assert chi2 < 15 + 8 * math.sqrt(30) + 8
    # other streams are unrelated: neighbouring seeds and counters
    v = rng_uniform(1235, 5, np.arange(200000))
    w = rng_uniform(1234, 6, np.arange(200000))
    assert abs(np.corrcoef(u, v)[0, 1]) < 0.02 and abs(np.corrcoef(u, w)[0, 1]) < 0.02
    assert np.array_equal(u, rng_uniform(1234, 5, np.arange(200000)))


# ------------------------------------------------------------------------------ equality
@pytest.mark.parametrize("V", [1, 2, 7, 100, 1000])
def test_reference_equals_numpy_mirror(V):
    rng = np.random.default_rng(V)
    for _ in range(12):
        l = logit_rows(rng, V)
        for T, k, p in PARAMS:
            seed, counter = int(rng.integers(0, 2 ** 63)), int(rng.integers(0, 2 ** 40))
            a = C.ops.sample_reference(l, T, k, p, seed, counter)
            b = sample_gumbel(l, T, k, p, seed, counter)
            assert a == b, (V, T, k, p, seed, counter, a, b)


@cuda
@pytest.mark.parametrize("V", [1, 3, 64, 1000, 5000])
def test_device_equals_reference(V):
    rng = np.random.default_rng(100 + V)
    rows, Ts, ks, ps, seeds, counters = [], [], [], [], [], []
    for _ in range(6 if V <= 1000 else 2):
        l = logit_rows(rng, V)
        for T, k, p in PARAMS:
            rows.append(l)
            Ts.append(T), ks.append(k), ps.append(p)
            seeds.append(int(rng.integers(0, 2 ** 63))), counters.append(int(rng.integers(0, 1000)))
    L = np.stack(rows)
    dev = C.ops.cuda_sample(L, Ts, ks, ps, seeds, counters)
    refs = C.ops.sample_reference(L, Ts, ks, ps, seeds, counters)
    assert dev.dtype == np.int32 and dev.shape == (len(rows),)
    bad = np.flatnonzero(dev != refs)
    assert bad.size == 0, [(Ts[i], ks[i], ps[i], int(dev[i]), int(refs[i])) for i in bad[:5]]
    for i in range(0, len(rows), 7):
        assert int(dev[i]) == sample_gumbel(L[i], Ts[i], ks[i], ps[i], seeds[i], counters[i])
    assert np.array_equal(dev, C.ops.cuda_sample(L, Ts, ks, ps, seeds, counters))   # reruns


def test_real_vocab_row():
    rng = np.random.default_rng(7)
    l = (rng.standard_normal(201088) * 2.5).astype(np.float32)
    for T, k, p, seed in [(0.0, 0, 1.0, 0), (1.0, 0, 0.9, 11), (0.8, 40, 1.0, 12),
                          (1.0, 50, 0.95, 13), (1.0, 0, 1.0, 14)]:
        a = C.ops.sample_reference(l, T, k, p, seed, 99)
        assert a == sample_gumbel(l, T, k, p, seed, 99)
        if HAS_CUDA:
            assert a == C.ops.cuda_sample(l, T, k, p, seed, 99)
        if T == 0:
            assert a == int(np.argmax(l))


# ------------------------------------------------------------------------------ distribution
LOGITS8 = np.array([2.0, 1.5, 1.0, 0.3, -0.5, -1.0, 0.0, -3.0], np.float32)


def chi2_ok(tokens, probs):
    N = tokens.size
    obs = np.bincount(tokens, minlength=probs.size)
    assert obs[probs == 0].sum() == 0, "a token outside the candidate set was drawn"
    kept = probs > 0
    df = int(kept.sum()) - 1
    chi2 = float(((obs[kept] - N * probs[kept]) ** 2 / (N * probs[kept])).sum())
    return chi2 < df + 8 * math.sqrt(2 * max(df, 1)) + 8, chi2


@pytest.mark.parametrize("T,k,p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.0, 0, 0.8), (1.5, 5, 0.9)])
def test_distribution_matches_softmax(T, k, p):
    probs = expected_probs(LOGITS8, T, k, p)
    N = 4000
    L = np.repeat(LOGITS8[None], N, axis=0)
    counters = np.arange(N, dtype=np.uint64)
    toks = C.ops.sample_reference(L, T, k, p, 2024, counters)
    ok, chi2 = chi2_ok(toks, probs)
    assert ok, (chi2, np.bincount(toks, minlength=8) / N, probs)
    mirror = np.array([sample_gumbel(LOGITS8, T, k, p, 2024, c) for c in range(0, N, 10)])
    assert np.array_equal(mirror, toks[::10])
    if HAS_CUDA:                                          # a slice: emulated blocks are slow
        assert np.array_equal(C.ops.cuda_sample(L[:400], T, k, p, 2024, counters[:400]),
                              toks[:400])


# ------------------------------------------------------------------------------ edges
def samplers():
    out = [("numpy", sample_gumbel), ("reference", C.ops.sample_reference)]
    if HAS_CUDA:
        out.append(("cuda", C.ops.cuda_sample))
    return out


@pytest.mark.parametrize("name,f", samplers())
def test_edges(name, f):
    ties = np.array([0.5, 3.0, 1.0, 3.0, 3.0, -1.0], np.float32)
    assert f(ties, 0.0, 0, 1.0, 1, 2) == 1                   # greedy: lowest index of the max
    assert f(ties, 1.0, 1, 1.0, 5, 7) == 1                   # top_k = 1 is greedy
    assert f(ties, 1.0, 0, 1e-6, 5, 7) == 1                  # a tiny top_p keeps the first only
    # top_k = 2 with a three-way tie at the top keeps indices 1 and 3
    got = {f(ties, 1.0, 2, 1.0, 9, c) for c in range(60)}
    assert got == {1, 3}
    # masked tokens are never drawn; a one-token vocabulary always gives 0
    masked = np.array([0.0, -np.inf, 0.0, -np.inf], np.float32)
    assert {f(masked, 1.0, 0, 1.0, 3, c) for c in range(40)} == {0, 2}
    assert f(np.array([0.25], np.float32), 1.0, 0, 0.5, 1, 1) == 0
    # the same call twice: the same token
    l = np.linspace(-1, 1, 37).astype(np.float32)
    assert f(l, 0.9, 10, 0.9, 77, 3) == f(l, 0.9, 10, 0.9, 77, 3)


@pytest.mark.parametrize("name,f", [s for s in samplers() if s[0] != "numpy"])
def test_argument_errors(name, f):
    l = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="temperature"):
        f(l, -1.0, 0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="top_p"):
        f(l, 1.0, 0, 0.0, 0, 0)
    with pytest.raises(ValueError, match="top_k"):
        f(l, 1.0, -2, 1.0, 0, 0)
    with pytest.raises(ValueError, match="logits"):
        f(l.astype(np.float64), 1.0, 0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="logits"):
        f(np.zeros((2, 2, 2), np.float32), 1.0, 0, 1.0, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        f(np.zeros((2, 5), np.float32), 1.0, 0, 1.0, [1, 2, 3], 0)
