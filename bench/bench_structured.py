"""What a constrained (or logprobs) token costs on top of a free one, piece by piece:

  mask      llguidance's token mask for the next position of a JSON schema (o200k_harmony)
  sample    the host draw from a full row of logits: the C++ reference sampler where the
            extension has it, the NumPy mirror otherwise; with a mask restricting it to the
            allowed ids (inside a JSON string nearly all of them, between keys a handful)
  logprobs  log-softmax of a row and its top 5
  step      one decode step of the model: ids sampled on the device (decode_batch_sample) vs
            logits taken back (decode_batch), for a batch of --batch rows

    python bench/bench_structured.py [--model random:tiny] [--batch 4] [--out FILE]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import machine, median_time, write_json  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:tiny")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from gptoss import Model, Sampler
    from gptoss.sampling import sample_gumbel
    from gptoss.steering import _reference_sampler, host_sample, token_logprobs
    from gptoss.structured import Grammar, ll_tokenizer
    from gptoss.tokenizer import get_tokenizer

    rows = {}
    enc = get_tokenizer()
    ll_tokenizer()
    schema = {"type": "object", "properties": {"name": {"type": "string"},
                                               "n": {"type": "integer"}},
              "required": ["name", "n"]}
    g = Grammar(schema, "bench")
    # positions: right after '{' (few tokens allowed) and inside a string (nearly all)
    for label, text in (("after_brace", "{"), ("in_string", '{"name": "ab')):
        m = g.matcher()
        assert m.consume_tokens(enc.encode(text)), m.get_error()
        rows[f"mask_{label}_ms"] = median_time(m.compute_bitmask, a.repeats)[0] * 1e3
        bits = m.compute_bitmask()
        ok = np.unpackbits(np.frombuffer(bits, np.uint8), bitorder="little")[:enc.n_vocab]
        rows[f"allowed_{label}"] = int(ok.sum())
        ids = np.flatnonzero(ok)
        logits = np.random.default_rng(0).normal(size=enc.n_vocab).astype(np.float32)
        for T in (0.0, 1.0):
            s = Sampler(T, 1.0, 0, 1)
            rows[f"sample_masked_{label}_T{T:g}_ms"] = median_time(
                lambda: host_sample(logits, s, 3, ids), a.repeats)[0] * 1e3
    logits = np.random.default_rng(0).normal(size=enc.n_vocab).astype(np.float32)
    for T in (0.0, 1.0):
        rows[f"sample_numpy_full_T{T:g}_ms"] = median_time(
            lambda: sample_gumbel(logits, T, 0, 1.0, 1, 3), a.repeats)[0] * 1e3
        s = Sampler(T, 1.0, 0, 1)
        rows[f"sample_host_full_T{T:g}_ms"] = median_time(
            lambda: host_sample(logits, s, 3), a.repeats)[0] * 1e3
    rows["host_sampler"] = "C++ reference" if _reference_sampler() else "NumPy mirror"
    rows["logprobs_top5_ms"] = median_time(lambda: token_logprobs(logits, 7, 5),
                                           a.repeats)[0] * 1e3
    model = Model.from_pretrained(a.model)
    eng = model.engine
    if hasattr(eng, "decode_batch"):
        seqs = [eng.add_sequence() for _ in range(a.batch)]
        for s in seqs:
            eng.prefill_sequence(s, [1, 2, 3])
        samplers = [Sampler(1.0, 1.0, 0, k) for k in range(a.batch)]
        toks = [5] * a.batch
        rows[f"step_device_sampled_b{a.batch}_ms"] = median_time(
            lambda: eng.decode_batch_sample(seqs, toks, samplers), a.repeats)[0] * 1e3
        rows[f"step_logits_back_b{a.batch}_ms"] = median_time(
            lambda: eng.decode_batch(seqs, toks), a.repeats)[0] * 1e3
        for s in seqs:
            eng.remove_sequence(s)
    for k, v in rows.items():
        print(f"{k:40s} {v:10.3f}" if isinstance(v, float) else f"{k:40s} {v}")
    if a.out:
        write_json(a.out, {"machine": machine(), "model": a.model, "results": rows})


if __name__ == "__main__":
    main()
