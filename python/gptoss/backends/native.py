"""The C++ engine (gptoss._C) behind the same interface as the NumPy engine."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


class NativeEngine:
    """`prefill(tokens, all_logits)` / `decode(token)` / `reset()` on the C++ engine.

    The engine maps the checkpoint itself (the same files `Weights` validated) and keeps its own
    KV cache. Errors from C++ arrive as `gptoss._C.NativeError` (a ValueError) naming file and line.
    """

    def __init__(self, weights, device: str = "cpu", max_context: Optional[int] = None,
                 threads: int = 0, activation_levels: int = 2, prefix_cache_gb: float = 2.0,
                 repack: str = "auto", cache_dir: Optional[str] = None,
                 batch_invariant: bool = False, kv_dtype: str = "auto",
                 dense_weights: str = "bf16"):
        from .. import _C
        self.name = device
        self.weights = weights
        self.config = weights.config
        self._e = _C.Engine(weights.directory, layout=weights.layout,
                               max_context=int(max_context or 0), threads=int(threads),
                               activation_levels=int(activation_levels), device=device,
                               random_device_weights=bool(getattr(weights, "hollow", None)),
                               prefix_cache_gb=float(prefix_cache_gb), repack=str(repack),
                               cache_dir=str(cache_dir or ""),
                               batch_invariant=bool(batch_invariant), kv_dtype=str(kv_dtype),
                               dense_weights=str(dense_weights))
        self.max_context = self._e.max_context
        # how the engine holds the weights: e.g. the CPU backend's experts repacked for its
        # kernels and mapped from the weight cache (Options::repack in gptoss.h)
        self.weights_note = self._e.weights_note

    @property
    def position(self) -> int:
        return self._e.position

    def reset(self) -> None:
        self._e.reset()   # sequence 0

    def prefill(self, tokens: Sequence[int], all_logits: bool = True) -> np.ndarray:
        return self._e.prefill(np.asarray(tokens, dtype=np.int64), all_logits)

    def decode(self, token: int) -> np.ndarray:
        return self._e.decode(int(token))

    def decode_sample(self, token: int, sampler) -> int:
        """Feed `token` and sample the next one on the engine's device (only the id comes back),
        with `sampler`'s parameters and the next position as the counter (gptoss.Sampler)."""
        return int(self.decode_batch_sample([0], [token], [sampler])[0])

    def decode_batch_sample(self, seqs: Sequence[int], tokens: Sequence[int],
                            samplers) -> np.ndarray:
        """One step for len(seqs) sequences, each sampled on the device with its Sampler; the
        counter of each draw is the position of the token being sampled."""
        seqs = np.asarray(seqs, dtype=np.int64)
        counters = np.array([self._e.sequence_position(int(s)) + 1 for s in seqs], np.uint64)
        return self._e.decode_batch_sample(
            seqs, np.asarray(tokens, dtype=np.int64),
            np.array([s.temperature for s in samplers], np.float32),
            np.array([s.top_k for s in samplers], np.int64),
            np.array([s.top_p for s in samplers], np.float32),
            np.array([s.seed for s in samplers], np.uint64), counters)

    # -- several sequences (the C++ engine only) ------------------------------------------------
    def add_sequence(self) -> int:
        """A new sequence with its own KV cache; returns its id (sequence 0 always exists)."""
        return self._e.add_sequence()

    def remove_sequence(self, seq: int) -> None:
        self._e.remove_sequence(int(seq))

    def sequence_position(self, seq: int) -> int:
        return self._e.sequence_position(int(seq))

    # -- prefix caching ------------------------------------------------------------------------
    def start_from_cache(self, seq: int, tokens: Sequence[int]) -> int:
        """Start sequence `seq` (at position 0) from the longest cached prefix of tokens[:-1] and
        return its length P; feed tokens[P:] next (prefill_sequence, in chunks if wanted)."""
        return self._e.start_from_cache(int(seq), np.asarray(tokens, dtype=np.int64))

    def cached_tokens(self, seq: int = 0) -> int:
        """Positions of `seq` its last prefill from position 0 took from the prefix cache."""
        return self._e.cached_tokens(int(seq))

    def prefix_cache_stats(self) -> dict:
        return self._e.prefix_cache_stats()

    def prefill_sequence(self, seq: int, tokens: Sequence[int],
                         all_logits: bool = False) -> np.ndarray:
        return self._e.prefill_sequence(int(seq), np.asarray(tokens, dtype=np.int64), all_logits)

    def decode_batch(self, seqs: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """One token for each of len(seqs) distinct sequences in one step: logits [n, vocab]."""
        return self._e.decode_batch(np.asarray(seqs, dtype=np.int64),
                                    np.asarray(tokens, dtype=np.int64))
