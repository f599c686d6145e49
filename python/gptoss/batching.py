"""Continuous batching for the server: requests join and leave a running batch.

One scheduler thread owns the engine. A request is prefilled into a sequence of its own when it
arrives; every step then decodes one token for each active sequence in a single `decode_batch`
(the weights are read once for all of them), samples each with its own settings, and hands the
token to the request's stream. A stream that is closed (the client went away) leaves the batch at
the next step. Needs an engine with sequences (the C++ engine); the server queues requests
otherwise.
"""
from __future__ import annotations

import codecs
import queue
import threading
from typing import Iterable, List, Optional, Sequence

from .model import DEFAULT_STOP_TOKENS, GeneratedToken, Generation
from .sampling import Sampler


class BatchStream(Generation):
    """A `Generation` fed by the scheduler thread; `close()` withdraws the request."""

    def __init__(self, prompt_tokens: List[int]):
        super().__init__(iter(()), prompt_tokens)
        self._q: "queue.Queue" = queue.Queue()
        self.cancelled = threading.Event()
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
    __slots__ = ("stream", "seq", "sampler", "logits", "sampled", "next", "forced", "n", "max_new", "stops",
                 "dec", "steer")


class BatchScheduler:
    def __init__(self, model, max_batch: int = 16):
        if not hasattr(model.engine, "decode_batch"):
            raise ValueError("continuous batching needs the C++ engine (backend cpu)")
        self.model = model
        self.max_batch = max_batch
        self.max_batch_seen = 0
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
        a.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        a.steer = steer
        self._pending.put(a)
        return a.stream

    # ------------------------------------------------------------------ the scheduler thread
    def _finish(self, a: _Active, reason: str, token: Optional[int] = None) -> None:
        a.stream._q.put(("done", reason, token))
        if a.seq is not None:
            self.model.engine.remove_sequence(a.seq)
            a.seq = None

    def _admit(self, a: _Active) -> bool:
        eng = self.model.engine
        a.seq = None
        if a.stream.cancelled.is_set():
            return False
        if a.max_new == 0:
            self._finish(a, "max_new_tokens")
            return False
        try:
            a.seq = eng.add_sequence()
            a.logits = eng.prefill_sequence(a.seq, a.stream.prompt_tokens)
            a.sampled = None
        except Exception as e:   # noqa: BLE001 - handed to the request, the batch goes on
            a.stream._q.put(("error", e, None))
            if a.seq is not None:
                eng.remove_sequence(a.seq)
            return False
        return True

    def _loop(self) -> None:
        eng = self.model.engine
        enc = self.model.tokenizer
        active: List[_Active] = []
        while True:
            try:
                while len(active) < self.max_batch:
                    a = self._pending.get(block=not active)
                    if self._admit(a):
                        active.append(a)
            except queue.Empty:
                pass
            feed: List[_Active] = []
            for a in active:
                if a.stream.cancelled.is_set():
                    self._finish(a, "cancelled")
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
            if not active:
                continue
            self.max_batch_seen = max(self.max_batch_seen, len(active))
            try:
                if any(a.steer is not None and a.steer.wants_logits() for a in active):
                    from .steering import decode_step_with_logits
                    decode_step_with_logits(eng, active)
                    continue
                ids = eng.decode_batch_sample([a.seq for a in active], [a.next for a in active],
                                              [a.sampler for a in active])
            except Exception as e:   # noqa: BLE001
                for a in active:
                    a.stream._q.put(("error", e, None))
                    eng.remove_sequence(a.seq)
                active = []
                continue
            for row, a in enumerate(active):
                a.logits, a.sampled = None, int(ids[row])
