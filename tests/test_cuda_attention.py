"""CUDA attention family (csrc/cuda/attention.cu) against the NumPy engine: RoPE + KV-cache write,
and attention with sinks, GQA and windows over paged and ring caches, decode (split-KV) and prefill
paths. Runs on a GPU or under the host emulation (GPTOSS_CUDA=EMULATE), so shapes are the real
head layout (64 query heads over 8 kv heads, d = 64) with a few hundred keys.

Cache rows the kernels must not read hold NaN, so a stray read shows as NaN in the output.

Tolerances (derived):
- RoPE: the kernel rounds every product and sum as NumPy's float32 does (no FMA contraction), so
  q, k and the bf16 cache rows are compared bit for bit.
- Attention: K and V are exact bf16 in both computations; the reference is float64. The kernel
  splits q * log2(e) / 8 and the softmax weights p into bf16 hi + lo parts for the tensor cores:
  x = hi + lo + r with |r| <= 2^-9 * 2^-9 |x| plus the float32 scaling, so <= 2^-17 |x|. A logit
  s = sum_i q_i k_i / 8 is then off by <= 2^-17 * A with A = sum_i |q_i k_i| / 8 (+ 64 float32
  roundings of the mma accumulation, 64 * 2^-24 * A, smaller); each softmax weight p_j / sum is
  off relatively by <= 2 * 2^-17 * A (numerator and denominator), the p split adds 2^-17, and the
  float32 sums over L keys (tile order, split combine) add 16 * eps32 * sqrt(L) (random walk,
  factor 16). The bound on ||out - ref|| / ||ref|| is their sum with a safety factor 2, A taken as
  the largest over the test's logits.
"""
import math

import numpy as np
import pytest

from gptoss.backends import numpy as ref
from gptoss.config import Config
from gptoss.safetensors_io import bf16_to_f32, f32_to_bf16

from conftest import rel_err

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not C.build_info()["cuda_compiled"], reason="built without CUDA"),
    pytest.mark.skipif(C.cuda_device_count()[0] == 0, reason="no GPU here"),
]

EPS32 = float(np.finfo(np.float32).eps)
HQ, HKV, D = 64, 8, 64
WINDOW = 128
NAN_BF16 = np.uint16(0x7FC0)


# --------------------------------------------------------------------------------- cache model
class Cache:
    """A layer's KV cache as the kernels see it: per-sequence keys/values (bf16 bits) at positions
    0..len-1 placed in paged rows (shuffled page table) or ring rows; every other row NaN."""

    def __init__(self, rng, lengths, layout, page=16, ring=WINDOW, hkv=HKV, scale=1.0):
        self.layout, self.page, self.ring = layout, page, ring
        self.keys = [f32_to_bf16((rng.standard_normal((L, hkv, D)) * scale).astype(np.float32))
                     for L in lengths]
        self.vals = [f32_to_bf16(rng.standard_normal((L, hkv, D)).astype(np.float32))
                     for L in lengths]
        if layout == "paged":
            max_pages = max(-(-L // page) for L in lengths) + 1
            slots = len(lengths)
            ids = rng.permutation(slots * max_pages + 3)[:slots * max_pages]
            self.table = ids.reshape(slots, max_pages).astype(np.int32)
            rows = (slots * max_pages + 3) * page
        else:
            self.table = None
            rows = len(lengths) * ring
        self.k = np.full((rows, hkv, D), NAN_BF16, np.uint16)
        self.v = np.full((rows, hkv, D), NAN_BF16, np.uint16)
        for s, L in enumerate(lengths):
            for p in range(L):          # in order: a ring keeps the newest `ring` positions
                r = self.row(s, p)
                self.k[r], self.v[r] = self.keys[s][p], self.vals[s][p]

    def row(self, s, p):
        if self.layout == "paged":
            return self.table[s, p // self.page] * self.page + p % self.page
        return s * self.ring + p % self.ring

    def kw(self):
        if self.layout == "paged":
            return dict(page_table=self.table, page=self.page, ring=0)
        return dict(page_table=None, page=0, ring=self.ring)


def run_attention(q, cache, pos, seq, sinks, window, **kw):
    return C.ops.cuda_attention(q, cache.k, cache.v, np.asarray(pos, np.int32),
                                np.asarray(seq, np.int32), sinks, window=window,
                                **cache.kw(), **kw)


def reference(q, cache, pos, seq, sinks, window):
    """float64 NumPy-engine attention for each row against its own sequence; also returns A,
    the largest sum_i |q_i k_i| / sqrt(d) over the visible logits (for the tolerance)."""
    out = np.empty(q.shape, np.float64)
    G = q.shape[1] // cache.keys[0].shape[1]
    A = 0.0
    for t, (p, s) in enumerate(zip(pos, seq)):
        k = bf16_to_f32(cache.keys[s][:p + 1]).astype(np.float64)
        v = bf16_to_f32(cache.vals[s][:p + 1]).astype(np.float64)
        qt = q[t:t + 1].astype(np.float64)
        out[t] = ref.attention(qt, k, v, np.array([p]), np.arange(p + 1), sinks,
                               window if window else None)[0]
        lo = max(0, p - window + 1) if window else 0
        kk = np.repeat(np.abs(k[lo:]), G, axis=1)                     # [L, Hq, d]
        A = max(A, float((np.abs(qt[0])[None] * kk).sum(-1).max()) / math.sqrt(D))
    return out, A


def bound(A, L):
    return 2 * (2 * 2.0 ** -17 * A + 2.0 ** -17 + 16 * EPS32 * math.sqrt(L))


def check(q, cache, pos, seq, sinks, window, **kw):
    got = run_attention(q, cache, pos, seq, sinks, window, **kw)
    want, A = reference(q, cache, pos, seq, sinks, window)
    assert got.shape == q.shape and np.isfinite(got).all()
    err, tol = rel_err(got, want), bound(A, max(pos) + 1)
    assert err < tol, (err, tol)
    return got


def queries(rng, n, hq=HQ, scale=1.0):
    return (rng.standard_normal((n, hq, D)) * scale).astype(np.float32)


def sinks_of(rng, kind, hq=HQ):
    if kind == "large":
        return np.full(hq, 8.0, np.float32)        # the sink takes most of the mass
    if kind == "small":
        return np.full(hq, -8.0, np.float32)       # the sink hardly counts
    return rng.standard_normal(hq).astype(np.float32)


# --------------------------------------------------------------------------------- decode
@pytest.mark.parametrize("sink", ["random", "large", "small"])
def test_decode_ring_window(sink):
    # ring layers: sequences shorter than, equal to and longer than the window
    rng = np.random.default_rng(1)
    lengths = [50, 128, 300]
    cache = Cache(rng, lengths, "ring")
    pos = [L - 1 for L in lengths]
    check(queries(rng, 3, scale=2.0), cache, pos, [0, 1, 2], sinks_of(rng, sink), WINDOW)


def test_decode_paged_split_kv():
    # batched decode: rows of different sequences at different positions (one not the last, so
    # later keys in the cache must be masked), positions crossing pages, shuffled page table
    rng = np.random.default_rng(2)
    lengths = [1, 17, 333, 200]
    cache = Cache(rng, lengths, "paged")
    pos, seq = [0, 16, 332, 150, 199], [0, 1, 2, 2, 3]
    q, sinks = queries(rng, 5), sinks_of(rng, "random")
    assert C.ops.cuda_attention_workspace_bytes(5, HQ, D, 333) > 0     # split-KV engaged
    got = check(q, cache, pos, seq, sinks, 0)
    # more splits than keys (empty splits), and a max_len below the truth (last split takes the
    # rest): the same answer within the bound; reruns bit for bit
    more = check(q, cache, pos, seq, sinks, 0, max_len=2000)
    fewer = check(q, cache, pos, seq, sinks, 0, max_len=64)
    assert C.ops.cuda_attention_workspace_bytes(5, HQ, D, 64) == 0
    assert fewer.shape == got.shape
    assert np.array_equal(got, run_attention(q, cache, pos, seq, sinks, 0))
    assert np.array_equal(more, run_attention(q, cache, pos, seq, sinks, 0, max_len=2000))


def test_decode_windowed_paged_and_split():
    # a window on a paged layer; max_len far above the window (the window bounds the splits)
    rng = np.random.default_rng(3)
    lengths = [260, 90]
    cache = Cache(rng, lengths, "paged")
    check(queries(rng, 2), cache, [259, 89], [0, 1], sinks_of(rng, "random"), WINDOW,
          max_len=1024)


def test_decode_tiny_model_heads():
    # the tiny test model: 16 query heads over 2 kv heads (group 8)
    rng = np.random.default_rng(4)
    cache = Cache(rng, [70, 5], "paged", hkv=2)
    sinks = sinks_of(rng, "random", 16)
    check(queries(rng, 2, hq=16), cache, [69, 4], [0, 1], sinks, 0)
    # and a 70-row prefill chunk of it (the prefill path)
    check(queries(rng, 70, hq=16), cache, list(range(70)), [0] * 70, sinks, WINDOW)


# --------------------------------------------------------------------------------- prefill
@pytest.mark.parametrize("layout,window", [("paged", 0), ("paged", WINDOW), ("ring", WINDOW)])
def test_prefill_chunk(layout, window):
    # a chunk of 75 consecutive rows (not a multiple of the 8-row tile) at positions 136..210 of
    # one sequence (the window cuts every row's keys), its keys already in the cache; a ring must
    # hold window + chunk - 1 positions
    rng = np.random.default_rng(5)
    n, start = 75, 136
    cache = Cache(rng, [start + n, 40], layout, ring=256)
    pos = list(range(start, start + n))
    q, sinks = queries(rng, n), sinks_of(rng, "random")
    got = check(q, cache, pos, [0] * n, sinks, window)
    if layout == "paged" and window == 0:
        assert np.array_equal(got, run_attention(q, cache, pos, [0] * n, sinks, window))


def test_prefill_from_position_zero_and_qkv_view():
    # a first chunk (causal from 0, tiles above the diagonal skipped), q as a view of qkv rows
    rng = np.random.default_rng(6)
    n = 70
    cache = Cache(rng, [n], "paged")
    qkv = rng.standard_normal((n, (HQ + 2 * HKV) * D)).astype(np.float32)
    sinks = sinks_of(rng, "random")
    pos = list(range(n))
    got = run_attention(qkv, cache, pos, [0] * n, sinks, 0)
    want, A = reference(qkv[:, :HQ * D].reshape(n, HQ, D), cache, pos, [0] * n, sinks, 0)
    assert rel_err(got, want) < bound(A, n)


def test_prefill_rows_of_two_sequences():
    # the prefill path with tiles whose rows belong to two sequences (one pass per sequence)
    rng = np.random.default_rng(7)
    cache = Cache(rng, [130, 40], "paged")
    pos = list(range(100, 130)) + list(range(0, 40))
    seq = [0] * 30 + [1] * 40
    check(queries(rng, 70), cache, pos, seq, sinks_of(rng, "large"), 0)


# --------------------------------------------------------------------------------- RoPE + write
@pytest.mark.parametrize("layout", ["paged", "ring"])
def test_rope_kv_write_bit_exact(layout):
    rng = np.random.default_rng(8)
    n, P = 21, 300
    cos, sin = ref.rope_cos_sin(Config(), np.arange(P))
    lengths = [1, 1]
    cache = Cache(rng, lengths, layout, ring=WINDOW)
    if layout == "paged":      # room for positions up to P
        cache = Cache(rng, [P, P], "paged")
        cache.k[:] = NAN_BF16
        cache.v[:] = NAN_BF16
    else:
        cache.k[:] = NAN_BF16
        cache.v[:] = NAN_BF16
    pos = np.array(list(range(280, 290)) + list(range(0, 11)), np.int32)   # pages crossed
    seq = np.array([1] * 10 + [0] * 11, np.int32)
    qkv = rng.standard_normal((n, (HQ + 2 * HKV) * D)).astype(np.float32)
    got_qkv, got_k, got_v = C.ops.cuda_rope_kv_write(qkv, pos, seq, cos, sin, cache.k, cache.v,
                                                     HQ, **cache.kw())
    c, s = cos[pos], sin[pos]
    q_want = ref.apply_rope(qkv[:, :HQ * D].reshape(n, HQ, D), c, s)
    k_want = ref.apply_rope(qkv[:, HQ * D:(HQ + HKV) * D].reshape(n, HKV, D), c, s)
    v_in = qkv[:, (HQ + HKV) * D:].reshape(n, HKV, D)
    assert np.array_equal(got_qkv[:, :HQ * D].reshape(n, HQ, D), q_want)
    assert np.array_equal(got_qkv[:, HQ * D:(HQ + HKV) * D].reshape(n, HKV, D), k_want)
    assert np.array_equal(got_qkv[:, (HQ + HKV) * D:], qkv[:, (HQ + HKV) * D:])
    rows = np.array([cache.row(si, p) for si, p in zip(seq, pos)])
    assert np.array_equal(got_k[rows], f32_to_bf16(k_want))
    assert np.array_equal(got_v[rows], f32_to_bf16(v_in))
    untouched = np.ones(len(got_k), bool)
    untouched[rows] = False
    assert (got_k[untouched] == NAN_BF16).all() and (got_v[untouched] == NAN_BF16).all()


# --------------------------------------------------------------------------------- errors
def test_errors():
    rng = np.random.default_rng(9)
    cache = Cache(rng, [20], "paged")
    q, sinks = queries(rng, 1), sinks_of(rng, "random")
    with pytest.raises(ValueError, match="k_cache"):
        C.ops.cuda_attention(q, cache.k.astype(np.float32), cache.v, np.array([5], np.int32),
                             np.array([0], np.int32), sinks, page_table=cache.table, page=16)
    with pytest.raises(ValueError, match="row_seq"):
        run_attention(q, cache, [5], [3], sinks, 0)
    with pytest.raises(ValueError, match="pos"):
        run_attention(q, cache, [10 ** 6], [0], sinks, 0)
    with pytest.raises(ValueError, match="q "):
        run_attention(q[:, :8], cache, [5], [0], sinks, 0)
    with pytest.raises(ValueError, match="group size"):      # 24 heads over 8: group 3
        run_attention(queries(rng, 1, hq=24), cache, [5], [0], sinks[:24], 0)
    with pytest.raises(ValueError, match="page_table"):
        C.ops.cuda_attention(q, cache.k, cache.v, np.array([5], np.int32),
                             np.array([0], np.int32), sinks, page=16)
    ring = Cache(rng, [20], "ring")
    with pytest.raises(ValueError, match="window"):           # a ring layer needs its window
        run_attention(q, ring, [5], [0], sinks, 0)
