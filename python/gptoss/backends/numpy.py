"""The NumPy engine: the model's math (forward pass, RoPE/YaRN, checkpoint roles, MXFP4) in float32, literally. The executable specification.

Every faster backend is tested against this file. It is also the fallback where nothing could be
compiled. No float32 copy of a whole matrix is ever made: bf16 matrices are converted and MXFP4
experts decoded a band of rows at a time as they are multiplied, and an expert is read only when
a token routes to it, so resident memory is the mapped weights actually touched.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..config import Config
from ..safetensors_io import bf16_to_f32, f32_to_bf16

# ---------------------------------------------------------------------------------------- MXFP4
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                       -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
# byte -> (value of its low nibble, value of its high nibble)
_BYTE_PAIRS = np.stack([FP4_VALUES[np.arange(256) & 15], FP4_VALUES[np.arange(256) >> 4]], axis=1)
# the same pairs seen as one 8-byte item, so a gather moves both values at once
_BYTE_PAIRS_U64 = np.ascontiguousarray(_BYTE_PAIRS).view(np.uint64).reshape(256)
# E8M0 scale byte -> 2^(s-127) (s = 255 would be NaN in E8M0; it decodes to 2^128 = inf here)
with np.errstate(over="ignore"):
    _SCALES = np.ldexp(np.float32(1.0), np.arange(256) - 127).astype(np.float32)


def mxfp4_dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """blocks [..., nb, 16] uint8, scales [..., nb] uint8 -> float32 [..., nb * 32].

    Byte j of a block holds value 2j in its low nibble and value 2j+1 in its high nibble.
    """
    blocks = np.asarray(blocks)
    vals = np.take(_BYTE_PAIRS_U64, blocks).view(np.float32)   # [..., nb, 32]
    with np.errstate(over="ignore"):
        vals *= _SCALES[np.asarray(scales)][..., None]
    return vals.reshape(blocks.shape[:-2] + (blocks.shape[-2] * 32,))


# ---------------------------------------------------------------------------------------- matmuls
# Weights are converted (bf16 -> f32) or decoded (MXFP4 -> f32) a band of rows at a time, so no
# float32 copy of a whole matrix is ever made; bands run on a small thread pool (NumPy releases
# the GIL inside take, astype and matmul).
_POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1))
_BAND_ELEMS = 1 << 18


def _banded(x: np.ndarray, rows: int, cols: int, band_f32) -> np.ndarray:
    """x [n, cols] @ W.T for W [rows, cols] produced band by band by band_f32(lo, hi)."""
    step = max(1, _BAND_ELEMS // cols)
    out = np.empty((x.shape[0], rows), dtype=np.float32)

    def run(lo):
        hi = min(rows, lo + step)
        out[:, lo:hi] = x @ band_f32(lo, hi).T
    list(_POOL.map(run, range(0, rows, step)))
    return out


def linear(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None,
           w_dtype: str = "BF16") -> np.ndarray:
    """x [n, K] float32, w [R, K] stored bits (bf16 as uint16, or float) -> x @ w.T + b."""
    if w_dtype == "BF16":
        out = _banded(x, w.shape[0], w.shape[1], lambda lo, hi: bf16_to_f32(w[lo:hi]))
    else:
        out = _banded(x, w.shape[0], w.shape[1], lambda lo, hi: w[lo:hi].astype(np.float32))
    return out if b is None else out + b


def quantize_dense_int8(w: np.ndarray) -> np.ndarray:
    """The weights dense_weights="int8" stands for: w float32 [R, K] (K % 32 == 0), per row and
    32-block s = max|w| / 127 and code = clip(rint(w / s), -127, 127) in float32 (0 where s is 0),
    returned as code * s. csrc/cpu/dense_q8.cpp packs the same codes and scales."""
    R, K = w.shape
    if K % 32:
        raise ValueError(f"dense_weights='int8': {K} columns is not a multiple of 32")
    b = w.reshape(R, K // 32, 32)
    s = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    safe = np.where(s > 0, s, np.float32(1))
    c = np.where(s > 0, np.clip(np.rint(b / safe), -127, 127), np.float32(0))
    return (c * s).astype(np.float32).reshape(R, K)


def linear_int8(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray] = None) -> np.ndarray:
    """x @ quantize_dense_int8(bf16 w).T + b, band by band."""
    out = _banded(x, w.shape[0], w.shape[1],
                  lambda lo, hi: quantize_dense_int8(bf16_to_f32(w[lo:hi])))
    return out if b is None else out + b


def linear_mxfp4(x: np.ndarray, blocks: np.ndarray, scales: np.ndarray,
                 b: Optional[np.ndarray] = None) -> np.ndarray:
    """x [n, K] float32, blocks [R, K/32, 16], scales [R, K/32] -> x @ W.T + b."""
    rows, nb = scales.shape
    out = _banded(x, rows, nb * 32,
                  lambda lo, hi: mxfp4_dequantize(blocks[lo:hi], scales[lo:hi]))
    return out if b is None else out + b


# ---------------------------------------------------------------------------------------- ops
def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x [T, H] -> x * rsqrt(mean(x^2) + eps) * w, in float32."""
    x = x.astype(np.float32, copy=False)
    ms = np.mean(x * x, axis=-1, keepdims=True)
    return (x / np.sqrt(ms + np.float32(eps))) * w


def yarn_frequencies(cfg: Config) -> Tuple[np.ndarray, float]:
    """(inv_freq [head_dim/2] float64, concentration m) of YaRN (see apply_rope)."""
    d = cfg.head_dim
    i = np.arange(d // 2, dtype=np.float64)
    base = cfg.rope_theta ** (2.0 * i / d)
    s = cfg.rope_factor
    if s <= 1.0:
        return 1.0 / base, 1.0
    L0 = cfg.rope_original_context
    low = d * math.log(L0 / (cfg.rope_beta_fast * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
    high = d * math.log(L0 / (cfg.rope_beta_slow * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
    if cfg.rope_truncate:
        low, high = math.floor(low), math.ceil(high)
    if high == low:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    inv_freq = (1.0 / (s * base)) * ramp + (1.0 / base) * (1.0 - ramp)
    m = 0.1 * math.log(s) + 1.0
    return inv_freq, m


def rope_cos_sin(cfg: Config, positions: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [T, head_dim/2] float32 for `positions`, each scaled by m."""
    inv_freq, m = yarn_frequencies(cfg)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return (np.cos(ang) * m).astype(np.float32), (np.sin(ang) * m).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x [T, heads, d]; half-split (NeoX) rotation."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_pos: np.ndarray, k_pos: np.ndarray,
              sinks: np.ndarray, window: Optional[int], block: int = 256) -> np.ndarray:
    """Attention with learned sinks, GQA and an optional sliding window.

    q [T, Hq, d], k/v [S, Hkv, d], q_pos [T], k_pos [S] (absolute positions), sinks [Hq].
    Query head h reads kv head h // (Hq / Hkv). Key j is visible to query i when
    k_pos[j] <= q_pos[i] and, with a window W, k_pos[j] > q_pos[i] - W.
    Returns [T, Hq, d] float32.
    """
    T, Hq, d = q.shape
    S, Hkv, _ = k.shape
    G = Hq // Hkv
    scale = np.float32(1.0 / math.sqrt(d))
    kt = k.transpose(1, 2, 0)                                    # [Hkv, d, S]
    vt = v.transpose(1, 0, 2)                                    # [Hkv, S, d]
    sink = sinks.astype(np.float32).reshape(Hkv, G, 1, 1)
    out = np.empty((T, Hq, d), dtype=np.float32)
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        qb = q[t0:t1].reshape(t1 - t0, Hkv, G, d).transpose(1, 2, 0, 3)   # [Hkv, G, t, d]
        s = np.matmul(qb, kt[:, None]) * scale                   # [Hkv, G, t, S]
        qp = q_pos[t0:t1, None]
        visible = k_pos[None, :] <= qp
        if window is not None:
            visible &= k_pos[None, :] > qp - window
        s = np.where(visible[None, None], s, -np.inf)
        mx = np.maximum(s.max(axis=-1, keepdims=True), sink)
        p = np.exp(s - mx)
        denom = p.sum(axis=-1, keepdims=True) + np.exp(sink - mx)
        o = np.matmul(p / denom, vt[:, None])                    # [Hkv, G, t, d]
        out[t0:t1] = o.transpose(2, 0, 1, 3).reshape(t1 - t0, Hq, d)
    return out


def route(logits: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Router logits [T, E] -> (experts [T, k] int, weights [T, k] float32).

    The k largest logits (ties: lower expert index first), softmax over those k only.
    """
    idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    top = np.take_along_axis(logits, idx, axis=-1).astype(np.float32)
    top = top - top.max(axis=-1, keepdims=True)
    w = np.exp(top)
    return idx, (w / w.sum(axis=-1, keepdims=True)).astype(np.float32)


def swiglu(u: np.ndarray, alpha: float, limit: float) -> np.ndarray:
    """u [..., 2I] with gate on even and linear on odd columns -> [..., I]."""
    gate = np.minimum(u[..., 0::2], np.float32(limit))
    lin = np.clip(u[..., 1::2], np.float32(-limit), np.float32(limit))
    sig = 1.0 / (1.0 + np.exp(-np.float32(alpha) * gate))
    return gate * sig * (lin + np.float32(1.0))


# ---------------------------------------------------------------------------------------- engine
class _LayerCache:
    """K/V of one layer (after RoPE), with their positions. Sliding layers keep the last W."""

    def __init__(self, cfg: Config, window: Optional[int]):
        self.window = window
        self.k = np.zeros((0, cfg.num_kv_heads, cfg.head_dim), dtype=np.float32)
        self.v = np.zeros_like(self.k)
        self.pos = np.zeros((0,), dtype=np.int64)
        self._n = 0

    def view(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.k[:self._n], self.v[:self._n], self.pos[:self._n]

    def append(self, k: np.ndarray, v: np.ndarray, pos: np.ndarray) -> None:
        if self.window is not None:
            keep = self.window
            ks = np.concatenate([self.k[:self._n], k])[-keep:]
            vs = np.concatenate([self.v[:self._n], v])[-keep:]
            ps = np.concatenate([self.pos[:self._n], pos])[-keep:]
            self.k, self.v, self.pos, self._n = ks, vs, ps, len(ps)
            return
        need = self._n + len(pos)
        if need > len(self.pos):
            cap = max(need, 2 * len(self.pos), 64)
            for name in ("k", "v", "pos"):
                old = getattr(self, name)
                new = np.zeros((cap,) + old.shape[1:], dtype=old.dtype)
                new[:self._n] = old[:self._n]
                setattr(self, name, new)
        self.k[self._n:need] = k
        self.v[self._n:need] = v
        self.pos[self._n:need] = pos
        self._n = need

    def __len__(self):
        return self._n


class NumpyEngine:
    """One sequence: `prefill(tokens)` then `decode(token)`, with a KV cache.

    `prefill` continues from the current position, so a prompt may be fed in pieces; `reset()`
    starts a new sequence. Matrices are read from the mapped checkpoint band by band on every
    use (never copied whole); only the small vectors (norms, biases, sinks) are kept in float32.
    """

    name = "numpy"

    # the matrices dense_weights="int8" quantizes (the embedding stays as stored)
    INT8_ROLES = ("q_w", "k_w", "v_w", "out_w", "router_w", "unembedding")

    def __init__(self, weights, max_context: Optional[int] = None, kv_dtype: str = "auto",
                 dense_weights: str = "bf16"):
        if kv_dtype not in ("auto", "float32", "bf16"):
            raise ValueError(f"kv_dtype={kv_dtype!r}: must be 'auto', 'float32' or 'bf16'")
        if dense_weights not in ("bf16", "int8"):
            raise ValueError(f"dense_weights={dense_weights!r}: must be 'bf16' or 'int8'")
        self.dense_int8 = dense_weights == "int8"
        # "bf16": keys and values (after RoPE) are rounded to bf16 before any query reads them,
        # the chunk's own included, as the C++ engines' bf16 caches do; attention stays float32
        self.kv_bf16 = kv_dtype == "bf16"
        if getattr(weights, "hollow", None):
            raise ValueError(f"{weights.hollow}: a hollow checkpoint (its matrices are holes, "
                             "made for benchmarks): only backend 'cuda' runs it")
        self.weights = weights
        self.config: Config = weights.config
        self.max_context = min(max_context or self.config.max_context, self.config.max_context)
        self._vec: Dict[Tuple[str, Optional[int]], np.ndarray] = {}
        self.reset()

    # ---------------------------------------------------------------- weights
    def _v(self, role: str, layer: Optional[int] = None) -> np.ndarray:
        """A small tensor (norm, bias, sinks) in float32, converted once."""
        key = (role, layer)
        a = self._vec.get(key)
        if a is None:
            a = self._vec[key] = self.weights.f32(role, layer)
        return a

    def _linear(self, x: np.ndarray, role: str, layer: Optional[int] = None,
                bias: Optional[str] = None) -> np.ndarray:
        W = self.weights
        b = self._v(bias, layer) if bias else None
        if self.dense_int8 and role in self.INT8_ROLES:
            if W.dtype(role, layer) != "BF16":
                raise ValueError(f"dense_weights='int8': {role} is {W.dtype(role, layer)}, not bf16")
            return linear_int8(x, W.raw(role, layer), b)
        return linear(x, W.raw(role, layer), b, W.dtype(role, layer))

    # ---------------------------------------------------------------- state
    def reset(self) -> None:
        cfg = self.config
        self.position = 0
        self.caches = [_LayerCache(cfg, cfg.window_of(l)) for l in range(cfg.num_layers)]

    # ---------------------------------------------------------------- forward
    def _check_tokens(self, tokens: np.ndarray) -> None:
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be a 1-D sequence of ids, got shape {tokens.shape}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            bad = int(tokens[(tokens < 0) | (tokens >= self.config.vocab_size)][0])
            raise ValueError(f"token id {bad} is out of range [0, {self.config.vocab_size})")
        if self.position + tokens.size > self.max_context:
            raise ValueError(f"context limit: {self.position} cached + {tokens.size} new tokens "
                             f"exceeds max_context {self.max_context}")

    def prefill(self, tokens: Sequence[int], all_logits: bool = True) -> np.ndarray:
        """Feed `tokens` after what is cached; logits [T, V] (or [V] for the last if not all)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        self._check_tokens(tokens)
        if tokens.size == 0:
            raise ValueError("tokens is empty")
        x = self._forward(tokens)
        if not all_logits:
            x = x[-1:]
        t = rmsnorm(x, self._v("final_norm"), self.config.rms_norm_eps)
        logits = self._linear(t, "unembedding")
        return logits if all_logits else logits[0]

    def decode(self, token: int) -> np.ndarray:
        """Feed one token; logits [V]."""
        return self.prefill([int(token)], all_logits=False)

    def _forward(self, tokens: np.ndarray) -> np.ndarray:
        cfg = self.config
        T = tokens.size
        pos = np.arange(self.position, self.position + T, dtype=np.int64)
        cos, sin = rope_cos_sin(cfg, pos)
        emb = self.weights.raw("embedding")[tokens]
        x = bf16_to_f32(emb) if self.weights.dtype("embedding") == "BF16" else \
            emb.astype(np.float32)
        for l in range(cfg.num_layers):
            x = x + self._attention_block(l, x, pos, cos, sin)
            x = x + self._moe_block(l, x)
        self.position += T
        return x

    def _attention_block(self, l, x, pos, cos, sin):
        cfg = self.config
        T = x.shape[0]
        t = rmsnorm(x, self._v("attn_norm", l), cfg.rms_norm_eps)
        q = self._linear(t, "q_w", l, "q_b").reshape(T, cfg.num_heads, cfg.head_dim)
        k = self._linear(t, "k_w", l, "k_b").reshape(T, cfg.num_kv_heads, cfg.head_dim)
        v = self._linear(t, "v_w", l, "v_b").reshape(T, cfg.num_kv_heads, cfg.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_bf16:
            k, v = bf16_to_f32(f32_to_bf16(k)), bf16_to_f32(f32_to_bf16(v))
        cache = self.caches[l]
        ck, cv, cp = cache.view()
        keys = np.concatenate([ck, k]) if len(ck) else k
        vals = np.concatenate([cv, v]) if len(cv) else v
        kpos = np.concatenate([cp, pos]) if len(cp) else pos
        o = attention(q, keys, vals, pos, kpos, self._v("sinks", l), cfg.window_of(l))
        cache.append(k, v, pos)
        return self._linear(o.reshape(T, cfg.q_width), "out_w", l, "out_b")

    def _moe_block(self, l, x):
        cfg = self.config
        W = self.weights
        t = rmsnorm(x, self._v("mlp_norm", l), cfg.rms_norm_eps)
        g = self._linear(t, "router_w", l, "router_b")
        experts, weights = route(g, cfg.experts_per_token)
        out = np.zeros_like(t)
        w1b, w1s, w2b, w2s = (W.raw(r, l) for r in ("w1_blocks", "w1_scales",
                                                     "w2_blocks", "w2_scales"))
        b1, b2 = self._v("w1_bias", l), self._v("w2_bias", l)
        # group tokens by expert: each chosen expert is read once for all its tokens
        for e in np.unique(experts):
            rows, slot = np.nonzero(experts == e)
            u = linear_mxfp4(t[rows], w1b[e], w1s[e], b1[e])          # [n, 2I]
            a = swiglu(u, cfg.swiglu_alpha, cfg.swiglu_limit)           # [n, I]
            y = linear_mxfp4(a, w2b[e], w2s[e], b2[e])                  # [n, H]
            out[rows] += weights[rows, slot][:, None] * y
        return out
