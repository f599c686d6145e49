"""Per-request steering of a generation: token constraints and log-probabilities.

The generation loops (`Model._stream`, batching.BatchScheduler) sample on the engine's device
and see only token ids. A `Steer` handed to `generate(..., steer=)` changes that for the tokens
it needs: while `wants_logits()` is true the loop takes the logits of the next position back
from the engine and calls `choose()` to sample (with a constraint's mask applied), and every
emitted token, forced or sampled, goes through `observe()`, which advances the constraint and
returns the token's log-probabilities when they were asked for.

Sampling on the host uses `gptoss.sampling.sample_gumbel`, the counter-based draw of the C++
and CUDA samplers, with the same (seed, counter = position) pairs, so a seed means the same
thing constrained or not: an unconstrained row sampled here gives the token the device would
have given. A mask restricts the draw to the allowed ids (`sample_gumbel(ids=...)`), which is
exactly the draw with every other logit at -inf.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from .sampling import sample_gumbel

MAX_TOP_LOGPROBS = 20


class SteeringError(RuntimeError):
    """What a request asked of its tokens (a response format, strict tool arguments,
    log-probabilities) could not be done; the generation is not returned as if it had been."""


def steering_failure(steer) -> Optional[str]:
    """Why `steer` (a Steer or None) did not do what it was asked, if it did not."""
    if steer is None:
        return None
    if steer.error:
        return steer.error
    return getattr(steer.constraint, "failed", None) if steer.constraint is not None else None


class Steer:
    """constraint: an object with `active()`, `allowed()` (ascending token ids allowed next, or
    None for no limit), `observe(token)` and optionally `prepare()` (start computing the next
    mask, off the critical path), e.g. structured.HarmonyConstraint. logprobs: None (off) or
    how many top alternatives to report per token (0..20)."""

    def __init__(self, constraint=None, logprobs: Optional[int] = None,
                 presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                 logit_bias: Optional[Dict[int, float]] = None):
        if logprobs is not None and not (isinstance(logprobs, int) and
                                         0 <= logprobs <= MAX_TOP_LOGPROBS):
            raise ValueError(f"logprobs={logprobs!r}: must be an integer in [0, "
                             f"{MAX_TOP_LOGPROBS}]")
        self.constraint = constraint
        self.logprobs = logprobs
        # OpenAI's penalties over the tokens generated so far, and a fixed bias per token id
        self.presence = float(presence_penalty)
        self.frequency = float(frequency_penalty)
        self.bias = dict(logit_bias or {})
        self._counts: Dict[int, int] = {}

    def wants_logits(self) -> bool:
        """Whether the next token needs the engine's logits on the host."""
        return self.logprobs is not None or self.adjusts() or (
            self.constraint is not None and self.constraint.active())

    def adjusts(self) -> bool:
        return bool(self.presence or self.frequency or self.bias)

    def choose(self, logits: np.ndarray, sampler, counter: int) -> int:
        """Sample the next token from a row of logits with `sampler`'s settings. Never raises
        for the steering's sake (it runs on the batch thread): a failure is kept in `error` and
        the token is drawn unsteered."""
        try:
            return self._choose(logits, sampler, counter)
        except Exception as e:   # noqa: BLE001
            self.error = f"steering failed: {e}"
            self.constraint = None
            return sampler(logits, counter=counter)

    error: Optional[str] = None

    def _choose(self, logits: np.ndarray, sampler, counter: int) -> int:
        ids = None
        if self.constraint is not None and self.constraint.active():
            ids = self.constraint.allowed()
        if self.adjusts():
            logits = np.array(logits, dtype=np.float32).reshape(-1)
            for t, c in self._counts.items():
                logits[t] -= self.presence + self.frequency * c
            for t, b in self.bias.items():
                logits[t] += b
        return host_sample(logits, sampler, counter, ids)

    def observe(self, token: int, logits: Optional[np.ndarray] = None) -> Optional[Dict]:
        """A token was emitted (`logits`: the row it was drawn from, if the loop has it).
        Returns its log-probabilities ({"logprob", "top": [(id, logprob), ...]}) when asked."""
        lp = None
        if self.logprobs is not None and logits is not None:
            try:
                lp = token_logprobs(logits, token, self.logprobs)
            except Exception as e:   # noqa: BLE001 - see choose()
                self.error = f"logprobs failed: {e}"
        if self.presence or self.frequency:
            self._counts[int(token)] = self._counts.get(int(token), 0) + 1
        if self.constraint is not None:
            self.constraint.observe(int(token))
            prep = getattr(self.constraint, "prepare", None)
            if prep is not None:
                prep()
        return lp


def _reference_sampler():
    """The C++ host sampler (gptoss.ops.sample_reference) when the extension has it."""
    global _REF
    if _REF is None:
        from .backends import _native
        C, _ = _native()
        _REF = getattr(getattr(C, "ops", None), "sample_reference", False) if C else False
    return _REF or None


_REF = None


def host_sample(logits: np.ndarray, sampler, counter: int, ids=None) -> int:
    """The token the device sampler would draw from `logits` with `sampler`'s settings and this
    counter, restricted to `ids` (ascending) when given. The C++ reference sampler where the
    extension has it (a few ms for the full vocabulary), else the NumPy mirror (which, with
    `ids`, costs only len(ids) entries)."""
    ref = _reference_sampler()
    row = np.asarray(logits, dtype=np.float32).reshape(-1)
    if ref is not None:
        if ids is not None:
            masked = np.full_like(row, -np.inf)
            masked[ids] = row[ids]
            row = masked
        return int(ref(row, float(sampler.temperature), int(sampler.top_k),
                       float(sampler.top_p), int(sampler.seed), int(counter)))
    return sample_gumbel(row, sampler.temperature, sampler.top_k, sampler.top_p, sampler.seed,
                         int(counter), ids=ids)


def token_logprobs(logits: np.ndarray, token: int, top: int) -> Dict[str, Any]:
    """Natural-log probabilities of the model's own distribution (softmax of the raw logits,
    before temperature, top-p or a constraint's mask) for `token` and the `top` likeliest."""
    l = np.asarray(logits, dtype=np.float64).reshape(-1)
    m = float(l.max())
    lse = m + float(np.log(np.exp(l - m).sum()))
    out: Dict[str, Any] = {"logprob": float(l[int(token)] - lse), "top": []}
    if top > 0:
        part = np.argpartition(-l, top - 1)[:top]
        part = part[np.lexsort((part, -l[part]))]
        out["top"] = [(int(i), float(l[i] - lse)) for i in part]
    return out


# ------------------------------------------------------------------------------ OpenAI shapes
def _tok_bytes(enc, t: int) -> bytes:
    try:
        return enc.decode_single_token_bytes(t)
    except KeyError:
        return b""


def chat_logprob_item(enc, token: int, lp: Dict[str, Any]) -> Dict[str, Any]:
    """One entry of chat completions' `choices[].logprobs.content`."""
    def one(t, v):
        b = _tok_bytes(enc, t)
        return {"token": b.decode("utf-8", "replace"), "logprob": v, "bytes": list(b)}
    item = one(token, lp["logprob"])
    item["top_logprobs"] = [one(t, v) for t, v in lp["top"]]
    return item


def completion_logprobs(enc, tokens: List[int], lps: List[Dict[str, Any]],
                        offset0: int = 0) -> Dict[str, Any]:
    """Completions' `choices[].logprobs` for a run of tokens."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    off = offset0
    for t, lp in zip(tokens, lps):
        s = _tok_bytes(enc, t).decode("utf-8", "replace")
        out["tokens"].append(s)
        out["token_logprobs"].append(lp["logprob"])
        top: Dict[str, float] = {}
        for i, v in lp["top"]:
            top.setdefault(_tok_bytes(enc, i).decode("utf-8", "replace"), v)
        out["top_logprobs"].append(top)
        out["text_offset"].append(off)
        off += len(s)
    return out


# ------------------------------------------------------------------------------ batch steps
def decode_step_with_logits(eng, active) -> None:
    """One decode step of batching.BatchScheduler when some rows need their logits on the host.

    Rows whose steer wants logits get `a.logits` (sampled by the scheduler next, with the mask);
    the others get `a.sampled`. With the C++ reference sampler this is one `decode_batch` for all
    rows and the free rows are drawn on the host exactly as the device would; without it the
    free rows keep the device sampler in a second engine call (`decode_batch_sample`), which
    reads the weights once more that step.
    """
    host = [a for a in active if a.steer is not None and a.steer.wants_logits()]
    free = [a for a in active if not (a.steer is not None and a.steer.wants_logits())]
    if free and _reference_sampler() is None:
        ids = eng.decode_batch_sample([a.seq for a in free], [a.next for a in free],
                                      [a.sampler for a in free])
        for row, a in enumerate(free):
            a.logits, a.sampled = None, int(ids[row])
        rows = host
    else:
        rows = host + free
    logits = eng.decode_batch([a.seq for a in rows], [a.next for a in rows])
    for row, a in enumerate(rows):
        if a in host:
            a.logits, a.sampled = np.array(logits[row]), None
        else:
            a.logits = None
            a.sampled = host_sample(logits[row], a.sampler, eng.sequence_position(a.seq))
