"""Continuous batching for the server: requests join and leave a running batch.

One scheduler thread owns the engine. A request gets a sequence of its own when there is room in
the batch (`max_batch`); its prompt is then fed in chunks of `prefill_chunk` tokens, one chunk per
step, between the steps of the sequences already decoding, so a long prompt delays their next
token by one chunk's time rather than by the whole prompt's. Every step decodes one token for each
decoding sequence in a single `decode_batch_sample` (the weights are read once for all of them,
each sampled with its own settings) and hands the token to the request's stream. A stream that is
closed (the client went away), past its deadline, or still running at `shutdown_at` leaves the
batch at the next step. Needs an engine with sequences (the C++ engine); the server queues requests
otherwise.
"""
from __future__ import annotations

import codecs
import collections
import queue
import threading
import time
from typing import Iterable, List, Optional, Sequence

from .model import DEFAULT_STOP_TOKENS, GeneratedToken, Generation
from .sampling import Sampler


class BatchStream(Generation):
    """A `Generation` fed by the scheduler thread; `close()` withdraws the request."""

    def __init__(self, prompt_tokens: List[int]):
        super().__init__(iter(()), prompt_tokens)
        self._q: "queue.Queue" = queue.Queue()
        self.cancelled = threading.Event()
        self.deadline: Optional[float] = None   # time.monotonic(): past it, stop ("timeout")
        self.steps: List[int] = []              # the scheduler step of each token
        self._it = self._receive()

    def _receive(self):
        while True:
            item = self._q.get()
            kind, a, b = item[:3]
            if kind == "token":
                yield GeneratedToken(a, b, item[3] if len(item) > 3 else None)
            elif kind == "error":
                raise a
            else:
                self.stop_reason, self.stop_token = a, b
                return

    def close(self) -> None:
        self.cancelled.set()
        super().close()


class _Active:
    __slots__ = ("stream", "seq", "sampler", "logits", "sampled", "next", "forced", "n", "max_new",
                 "stops", "dec", "fed", "steer")


class BatchScheduler:
    """max_batch: sequences in the batch at once (prefilling or decoding); the rest wait in
    arrival order. prefill_chunk: prompt tokens fed per step while others decode (0: a prompt is
    fed whole when it joins, and the running streams wait for it)."""

    def __init__(self, model, max_batch: int = 16, prefill_chunk: int = 256):
        if not hasattr(model.engine, "decode_batch"):
            raise ValueError("continuous batching needs the C++ engine (backend cpu)")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"max_batch={max_batch!r}: must be an integer >= 1")
        if not (isinstance(prefill_chunk, int) and prefill_chunk >= 0):
            raise ValueError(f"prefill_chunk={prefill_chunk!r}: must be an integer >= 0")
        self.model = model
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_batch_seen = 0
        # read by the server's metrics (written by the scheduler thread only)
        self.steps = 0            # loop iterations so far; each stream records the step of its tokens
        self.decoding = 0         # sequences producing tokens
        self.prefilling = 0       # sequences whose prompt is still being fed
        self.waiting = 0          # requests not yet in the batch
        self.kv_tokens = 0        # positions cached over all sequences
        self.prefix_stats = None  # the engine's prefix_cache_stats() as of the last step
        self._stop_at: Optional[float] = None
        self._closing = False
        self._pending: "queue.Queue" = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="gptoss-batch", daemon=True)
        self._thread.start()

    def generate(self, prompt, max_new_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: Optional[int] = None,
                 stop_tokens: Optional[Iterable[int]] = None,
                 forced_tokens: Optional[Sequence[int]] = None, steer=None) -> BatchStream:
        """Like `Model.generate`, but joins the running batch. Bad arguments raise here.
        A `steer` (steering.Steer) row takes its logits back from the engine while it needs
        them (a constraint's mask, log-probabilities) and is sampled on the host."""
        m = self.model
        toks = m._request(prompt, max_new_tokens)
        a = _Active()
        a.stream = BatchStream(toks)
        a.sampler = Sampler(temperature, top_p, top_k, seed)
        a.forced = m._as_tokens(list(forced_tokens)) if forced_tokens else []
        a.stops = set(DEFAULT_STOP_TOKENS if stop_tokens is None else (int(t) for t in stop_tokens))
        a.max_new = max_new_tokens
        a.n = 0
        a.fed = 0
        a.seq = None
        a.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        a.steer = steer
        self._pending.put(a)
        return a.stream

    def shutdown_at(self, when: float) -> None:
        """At time.monotonic() `when`, end every request (stop reason "shutdown"), and any that
        arrives later at once."""
        self._stop_at = when
        self._pending.put(None)     # wake the loop if it is idle

    def close(self, timeout: float = 10.0) -> None:
        """End every request ("shutdown") and stop the scheduler thread (so that no engine call
        is running when the process exits)."""
        self._closing = True
        self.shutdown_at(time.monotonic())
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        """Requests not yet in the batch (handed over, or waiting for room)."""
        return self.waiting + self._pending.qsize()

    # ------------------------------------------------------------------ the scheduler thread
    def _finish(self, a: _Active, reason: str, token: Optional[int] = None) -> None:
        a.stream._q.put(("done", reason, token))
        if a.seq is not None:
            self.model.engine.remove_sequence(a.seq)
            a.seq = None

    def _fail(self, a: _Active, e: Exception) -> None:
        a.stream._q.put(("error", e, None))
        if a.seq is not None:
            self.model.engine.remove_sequence(a.seq)
            a.seq = None

    def _ended(self, a: _Active, now: float) -> Optional[str]:
        """Why `a` must stop now without another token, if it must."""
        if a.stream.cancelled.is_set():
            return "cancelled"
        if self._stop_at is not None and now >= self._stop_at:
            return "shutdown"
        d = a.stream.deadline
        if d is not None and now >= d:
            return "timeout"
        return None

    def _loop(self) -> None:
        eng = self.model.engine
        enc = self.model.tokenizer
        waiting: "collections.deque[_Active]" = collections.deque()
        prefilling: List[_Active] = []    # have a sequence; prompt tokens [0, fed) are cached
        active: List[_Active] = []        # decoding
        while True:
            try:
                block = not (active or prefilling or waiting)
                while True:
                    a = self._pending.get(block=block)
                    block = False
                    if a is not None:
                        waiting.append(a)
            except queue.Empty:
                pass
            now = time.monotonic()
            self.steps += 1
            for a in list(waiting):
                why = self._ended(a, now)
                if why:
                    waiting.remove(a)
                    self._finish(a, why)
            while waiting and len(active) + len(prefilling) < self.max_batch:
                a = waiting.popleft()
                if a.max_new == 0:
                    self._finish(a, "max_new_tokens")
                    continue
                try:
                    a.seq = eng.add_sequence()
                    # the prefix cache (C++ engines): start from the longest cached prefix and
                    # feed only the rest
                    if hasattr(eng, "start_from_cache"):
                        a.fed = eng.start_from_cache(a.seq, a.stream.prompt_tokens)
                        a.stream.cached_tokens = a.fed
                except Exception as e:   # noqa: BLE001 - handed to the request, the batch goes on
                    self._fail(a, e)
                    continue
                a.logits, a.sampled = None, None
                prefilling.append(a)
            for a in list(prefilling):
                why = self._ended(a, now)
                if why:
                    prefilling.remove(a)
                    self._finish(a, why)
            feed: List[_Active] = []
            for a in active:
                why = self._ended(a, now)
                if why:
                    self._finish(a, why)
                    continue
                # the first token from the prefill's logits, later ones sampled on the device
                if a.n < len(a.forced):
                    nxt = a.forced[a.n]
                elif a.logits is not None:
                    pos = eng.sequence_position(a.seq)
                    nxt = a.steer.choose(a.logits, a.sampler, pos) if a.steer else \
                        a.sampler(a.logits, counter=pos)
                else:
                    nxt = a.sampled
                lp = a.steer.observe(nxt, a.logits) if a.steer else None
                if nxt in a.stops:
                    self._finish(a, "stop_token", nxt)
                    continue
                a.n += 1
                a.stream.steps.append(self.steps)
                a.stream._q.put(("token", nxt, a.dec.decode(enc.decode_single_token_bytes(nxt)),
                                 lp))
                if a.n >= a.max_new:
                    self._finish(a, "max_new_tokens")
                elif eng.sequence_position(a.seq) >= self.model.max_context:
                    self._finish(a, "context_limit")
                else:
                    a.next = nxt
                    feed.append(a)
            active = feed
            if active:
                self.max_batch_seen = max(self.max_batch_seen, len(active) + len(prefilling))
                try:
                    if any(a.steer is not None and a.steer.wants_logits() for a in active):
                        # some rows need their logits on the host (steering.py); it sets
                        # a.logits or a.sampled for every row
                        from .steering import decode_step_with_logits
                        decode_step_with_logits(eng, active)
                        ids = None
                    else:
                        ids = eng.decode_batch_sample([a.seq for a in active],
                                                      [a.next for a in active],
                                                      [a.sampler for a in active])
                except Exception as e:   # noqa: BLE001
                    for a in active:
                        self._fail(a, e)
                    active = []
                    ids = None
                if ids is not None:
                    for row, a in enumerate(active):
                        a.logits, a.sampled = None, int(ids[row])
            # prompts: a chunk's worth of tokens per step (oldest first), so the streams above
            # get a token between chunks; without chunking, every new prompt whole
            budget = self.prefill_chunk or None
            for a in list(prefilling):
                if budget is not None and budget <= 0:
                    break
                toks = a.stream.prompt_tokens
                n = len(toks) - a.fed if budget is None else min(budget, len(toks) - a.fed)
                try:
                    logits = eng.prefill_sequence(a.seq, toks[a.fed:a.fed + n])
                except Exception as e:   # noqa: BLE001
                    prefilling.remove(a)
                    self._fail(a, e)
                    continue
                a.fed += n
                if budget is not None:
                    budget -= n
                if a.fed == len(toks):
                    prefilling.remove(a)
                    a.logits = logits
                    active.append(a)
            self.max_batch_seen = max(self.max_batch_seen, len(active) + len(prefilling))
            self.decoding, self.prefilling, self.waiting = len(active), len(prefilling), len(waiting)
            self.kv_tokens = sum(eng.sequence_position(a.seq) for a in active + prefilling)
            if hasattr(eng, "prefix_cache_stats"):
                self.prefix_stats = eng.prefix_cache_stats()
            if self._closing and not (active or prefilling or waiting):
                return
