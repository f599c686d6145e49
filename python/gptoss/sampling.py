"""Token sampling: greedy at temperature 0, else temperature, top-k and top-p (nucleus)."""
from __future__ import annotations

from typing import Optional

import numpy as np


class Sampler:
    """Picks the next token from a row of logits; reproducible for a given seed."""

    def __init__(self, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 seed: Optional[int] = None):
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature={temperature!r}: must be a number >= 0")
        if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            raise ValueError(f"top_p={top_p!r}: must be in (0, 1]")
        if not (isinstance(top_k, int) and top_k >= 0):
            raise ValueError(f"top_k={top_k!r}: must be an integer >= 0 (0 = no limit)")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        if not np.all(np.isfinite(logits)):
            bad = np.flatnonzero(~np.isfinite(logits))
            raise FloatingPointError(f"logits hold {bad.size} non-finite values "
                                     f"(first at id {int(bad[0])}); the model output is broken")
        if self.temperature == 0.0:
            return int(np.argmax(logits))
        z = logits / self.temperature
        if self.top_k and self.top_k < z.size:
            cand = np.argpartition(-z, self.top_k - 1)[:self.top_k]
        else:
            cand = np.arange(z.size)
        order = cand[np.argsort(-z[cand], kind="stable")]
        p = np.exp(z[order] - z[order[0]])
        p /= p.sum()
        if self.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), self.top_p) + 1)
            order, p = order[:keep], p[:keep] / p[:keep].sum()
        return int(order[self.rng.choice(p.size, p=p)])
