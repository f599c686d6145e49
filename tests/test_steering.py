"""Rows steered on the host inside the continuous batch (batching.py with steering.py): free
rows next to them get exactly the tokens they get alone, on both paths of
steering.decode_step_with_logits (one decode_batch with the free rows drawn on the host by the
reference sampler, or a second engine call keeping them on the device sampler)."""
import numpy as np
import pytest

from gptoss import Model, steering
from gptoss.sampling import sample_gumbel


@pytest.fixture(scope="module")
def model(tiny_hf):
    m = Model.from_pretrained(tiny_hf)
    if not hasattr(m.engine, "decode_batch"):
        pytest.skip("needs the C++ engine (continuous batching)")
    return m


@pytest.fixture(scope="module")
def scheduler(model):
    from gptoss.batching import BatchScheduler
    return BatchScheduler(model)


def run_together(scheduler, prompts, seeds, steer_first):
    streams = []
    for i, (p, s) in enumerate(zip(prompts, seeds)):
        st = steering.Steer(None, 2) if (steer_first and i == 0) else None
        streams.append(scheduler.generate(p, max_new_tokens=10, temperature=1.0, seed=s,
                                          steer=st))
    return [[t for t in g] for g in streams]


@pytest.mark.parametrize("path", ["one_call", "two_calls"])
def test_free_rows_unchanged_next_to_steered_rows(model, scheduler, monkeypatch, path):
    prompts = ["Alpha beta", "Gamma", "Delta epsilon zeta"]
    seeds = [1, 2, 3]
    alone = [[t.id for t in scheduler.generate(p, max_new_tokens=10, temperature=1.0, seed=s)]
             for p, s in zip(prompts, seeds)]
    if path == "one_call":      # the reference sampler's contract, in its NumPy mirror
        monkeypatch.setattr(steering, "_REF", lambda row, T, k, p, seed, counter:
                            sample_gumbel(row, T, k, p, seed, counter))
    else:
        monkeypatch.setattr(steering, "_REF", False)
    got = run_together(scheduler, prompts, seeds, steer_first=True)
    assert [[t.id for t in g] for g in got] == alone
    # the steered row reports log-probabilities of the engine's own distribution
    lps = [t.logprob for t in got[0]]
    assert all(lp is not None and lp["logprob"] <= 0 and len(lp["top"]) == 2 for lp in lps)
    assert scheduler.max_batch_seen >= 3


def test_host_sample_matches_device_sampler(model):
    """host_sample (any path) draws what the engine's own sampler draws."""
    from gptoss import Sampler
    eng = model.engine
    seq = eng.add_sequence()
    try:
        eng.prefill_sequence(seq, [1, 2, 3])
        s = Sampler(0.8, 0.9, 0, 77)
        pos = eng.sequence_position(seq)
        dev = int(eng.decode_batch_sample([seq], [5], [s])[0])
        eng.remove_sequence(seq)
        seq = eng.add_sequence()
        eng.prefill_sequence(seq, [1, 2, 3])
        logits = np.asarray(eng.decode_batch([seq], [5])[0])
        assert eng.sequence_position(seq) == pos + 1
        assert steering.host_sample(logits, s, pos + 1) == dev
    finally:
        eng.remove_sequence(seq)


@pytest.mark.parametrize("trial", range(24))
def test_masked_draw_is_the_draw_with_minus_inf(trial):
    """sample_gumbel(ids=) equals the full-row draw with every other logit at -inf."""
    rng = np.random.default_rng(trial)
    V = 3000
    logits = (rng.normal(size=V) * 3).astype(np.float32)
    ids = np.sort(rng.choice(V, size=int(rng.integers(1, V)), replace=False))
    masked = np.full_like(logits, -np.inf)
    masked[ids] = logits[ids]
    T = [0.0, 1.0, 0.7][trial % 3]
    k = [0, 5, 50, 10000][trial % 4]
    p = [1.0, 0.9, 0.5][(trial // 3) % 3]
    got = sample_gumbel(logits, T, k, p, 11, trial, ids=ids)
    assert got in set(ids.tolist())
    assert got == sample_gumbel(masked, T, k, p, 11, trial)
