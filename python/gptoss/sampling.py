"""Token sampling: greedy at temperature 0, else temperature, top-k and top-p (nucleus)."""
from __future__ import annotations

import os
from typing import Optional

import numpy as np


class Sampler:
    """Picks the next token from a row of logits; reproducible for a given seed.

    The draw is `sample_gumbel` below: the counter-based algorithm the C++ and CUDA samplers use
    too (csrc/common/sample_ref.h), so a seed gives the same tokens on every backend. `counter`
    says which draw of the seed's stream this is; generation uses the position of the token
    being sampled.
    """

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 seed: Optional[int] = None):
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature={temperature!r}: must be a number >= 0")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p={top_p!r}: must be in (0, 1]")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"top_k={top_k!r}: must be an integer >= 0 (0 = no limit)")
        if seed is not None and not (isinstance(seed, int) and 0 <= seed < 2 ** 64):
            raise ValueError(f"seed={seed!r}: must be an integer in [0, 2^64)")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed)
        self._next = 0

    def __call__(self, logits: np.ndarray, counter: Optional[int] = None) -> int:
        logits = np.asarray(logits, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(logits)):
            bad = np.flatnonzero(~np.isfinite(logits))
            raise FloatingPointError(f"logits hold {bad.size} non-finite values "
                                     f"(first at id {int(bad[0])}); the model output is broken")
        if counter is None:
            counter, self._next = self._next, self._next + 1
        return sample_gumbel(logits, self.temperature, self.top_k, self.top_p, self.seed,
                             int(counter))


# ------------------------------------------------------------------------------ Gumbel-max
# The NumPy mirror of the CUDA sampler (csrc/cuda/sample.cu) and of the C++ reference
# (csrc/common/sample_ref.h): the same counter-based random numbers (csrc/common/rng.h) and the
# same unfused float32 arithmetic (csrc/common/sample_math.h), so a (seed, counter) pair gives
# the same token on every backend. NumPy float32 array operations are single IEEE roundings,
# never fused, which is what the C++ and CUDA code guarantee on their side.
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_F32 = np.float32


def _mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_stream(seed: int, counter: int) -> int:
    """common/rng.h rng_stream: mix64(mix64(seed ^ golden) ^ counter)."""
    return _mix64_int(_mix64_int((int(seed) & _M64) ^ _GOLDEN) ^ (int(counter) & _M64))


def rng_uniform(seed: int, counter: int, index) -> np.ndarray:
    """common/rng.h rng_uniform for an array of indices: float32 in (0, 1)."""
    i = np.asarray(index, dtype=np.uint64)
    bits = _mix64(np.uint64(rng_stream(seed, counter)) + (i + np.uint64(1)) * np.uint64(_GOLDEN))
    return ((bits >> np.uint64(41)).astype(np.uint32) * np.uint32(2) + np.uint32(1)).astype(
        np.float32) * _F32(1.0 / 16777216.0)


def _okey(v: np.ndarray) -> np.ndarray:
    b = v.astype(np.float32).view(np.uint32).copy()
    b[b == np.uint32(0x80000000)] = 0
    k = np.where(b & np.uint32(0x80000000), ~b, b | np.uint32(0x80000000))
    k[np.isnan(v)] = 0
    return k.astype(np.uint32)


def _key(v: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return (_okey(v).astype(np.uint64) << np.uint64(32)) | (
        np.uint64(0xFFFFFFFF) - idx.astype(np.uint64))


def _weight(d: np.ndarray) -> np.ndarray:
    """common/sample_math.h sample_weight, elementwise: uint64 in [0, 2^32]."""
    with np.errstate(invalid="ignore"):
        t = d.astype(np.float32) * _F32(float.fromhex("0x1.715476p+0"))
        ok = t > _F32(-32.0)
    t = np.where(ok, np.minimum(t, _F32(0.0)), _F32(0.0)).astype(np.float32)
    j = np.floor(t)
    f = t - j
    p = np.full_like(f, _F32(float.fromhex("0x1.c54640p-13")))
    for c in ("0x1.46d326p-10", "0x1.3d0c40p-7", "0x1.c688f0p-5", "0x1.ebfd5ap-3",
              "0x1.62e42cp-1"):
        p = p * f + _F32(float.fromhex(c))
    p = p * f + _F32(1.0)
    p = np.clip(p, _F32(1.0), _F32(2.0))
    m = (p * _F32(8388608.0)).astype(np.uint32).astype(np.uint64)
    w = (m << (np.int64(32) + j.astype(np.int64)).astype(np.uint64)) >> np.uint64(23)
    return np.where(ok, w, np.uint64(0))


def _ln(x: np.ndarray) -> np.ndarray:
    """common/sample_math.h sample_ln for positive normal float32."""
    b = x.astype(np.float32).view(np.uint32)
    e = (b >> np.uint32(23)).astype(np.int32) - 127
    mb = (b & np.uint32(0x007FFFFF)) | np.uint32(0x3F800000)
    big = mb > np.uint32(0x3FB504F3)
    mb = np.where(big, mb - np.uint32(0x00800000), mb).astype(np.uint32)
    e = e + big.astype(np.int32)
    f = mb.view(np.float32) - _F32(1.0)
    s = f / (_F32(2.0) + f)
    s2 = s * s
    q = np.full_like(s, _F32(float.fromhex("0x1.c71c72p-3")))
    for c in ("0x1.24924ap-2", "0x1.99999ap-2", "0x1.555556p-1"):
        q = q * s2 + _F32(float.fromhex(c))
    q = q * s2 + _F32(2.0)
    return e.astype(np.float32) * _F32(float.fromhex("0x1.62e430p-1")) + s * q


def gumbel(u: np.ndarray) -> np.ndarray:
    """common/sample_math.h sample_gumbel: -ln(-ln(u)) in float32."""
    return -_ln(-_ln(u))


def sample_gumbel(logits, temperature: float, top_k: int = 0, top_p: float = 1.0,
                  seed: int = 0, counter: int = 0, ids=None) -> int:
    """One token from a row of logits, as the CUDA and C++ samplers draw it.

    temperature <= 0: argmax (lowest index on ties). Otherwise Gumbel-max over the top_k largest
    logits (0: all), cut to the shortest prefix whose probability mass reaches top_p, with the
    noise of (seed, counter) from common/rng.h. See csrc/common/sample_ref.h for the definition.

    ids: if given, the token ids allowed (ascending), and `logits` the full row; the draw is the
    one the full row would give with every other logit at -inf (a token outside `ids` can never
    win, and none of them changes the top_k / top_p cut), at the cost of len(ids) entries only.
    """
    l = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)
    V = l.size
    if not 1 <= V < (1 << 21):
        raise ValueError(f"logits: vocabulary size {V} must be in [1, 2^21)")
    if ids is not None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            raise ValueError("ids: no token is allowed")
        return int(ids[_sample_gumbel(l[ids], temperature, top_k, top_p, seed, counter, ids)])
    return _sample_gumbel(l, temperature, top_k, top_p, seed, counter, None)


def _sample_gumbel(l, temperature, top_k, top_p, seed, counter, vocab_ids) -> int:
    """sample_gumbel on row `l`; `vocab_ids[i]` is the vocabulary id of l[i] (None: i itself).
    Returns a position in `l`."""
    V = l.size
    idx = np.arange(V, dtype=np.uint64) if vocab_ids is None else \
        np.asarray(vocab_ids, dtype=np.uint64)
    key = _key(l, idx)
    first = int(np.argmax(key))
    kmax = key[first]
    T = _F32(temperature)
    if not T > 0:
        return first
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        z = (l / T).astype(np.float32)
        zmax = z[first]
        kk = np.uint64(0)
        if 0 < int(top_k) < V:
            kk = np.partition(key, V - int(top_k))[V - int(top_k)]
        kp = kk
        tp = _F32(top_p)
        if tp < 1:
            cand = key >= kk
            w = _weight((z - zmax).astype(np.float32))
            w = np.where(cand, w, np.uint64(0))
            total = int(w.sum(dtype=np.uint64))
            thr = float(tp) * float(total)
            if not thr > 0:
                kp = kmax
            else:
                sel = np.flatnonzero(w > 0)
                order = sel[np.argsort(key[sel])[::-1]]
                run = np.cumsum(w[order], dtype=np.uint64).astype(np.float64)
                kp = key[order[int(np.searchsorted(run, thr, side="left"))]]
        kept = np.flatnonzero(key >= kp)
        s = (z[kept] + gumbel(rng_uniform(seed, counter, idx[kept]))).astype(np.float32)
    return int(kept[int(np.argmax(_key(s, idx[kept])))])
