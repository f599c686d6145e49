"""Model.generate and the Sampler: greedy, seeds, stop tokens, limits, argument errors."""
import numpy as np
import pytest

from gptoss import Model, Sampler


@pytest.fixture(scope="module")
def model(tiny_hf):
    return Model.from_pretrained(tiny_hf, backend="numpy")


def test_greedy_is_the_argmax_chain(model):
    prompt = [13225, 2375]
    gen = model.generate(prompt, max_new_tokens=6, temperature=0, stop_tokens=[])
    toks = [t.id for t in gen]
    assert gen.stop_reason == "max_new_tokens" and len(toks) == 6
    seq = list(prompt)
    for t in toks:
        assert t == int(np.argmax(model.forward(seq)[-1]))
        seq.append(t)


def test_text_stream_matches_decode(model):
    gen = model.generate("Hello", max_new_tokens=8, temperature=0, stop_tokens=[]).run()
    assert gen.text == model.tokenizer.decode(gen.tokens)


def test_seed_reproducible_and_seeds_differ(model):
    a = model.generate("Hi", max_new_tokens=8, temperature=1.0, seed=5, stop_tokens=[]).run()
    b = model.generate("Hi", max_new_tokens=8, temperature=1.0, seed=5, stop_tokens=[]).run()
    c = model.generate("Hi", max_new_tokens=8, temperature=1.0, seed=6, stop_tokens=[]).run()
    assert a.tokens == b.tokens and a.tokens != c.tokens


def test_stop_token_ends_and_is_not_yielded(model):
    first = model.generate("Hello", max_new_tokens=3, temperature=0, stop_tokens=[]).run().tokens
    gen = model.generate("Hello", max_new_tokens=10, temperature=0, stop_tokens=[first[1]]).run()
    assert gen.tokens == first[:1]
    assert gen.stop_reason == "stop_token" and gen.stop_token == first[1]


def test_context_limit(tiny_hf):
    m = Model.from_pretrained(tiny_hf, backend="numpy", max_context=6)
    gen = m.generate([1, 2, 3, 4], max_new_tokens=10, temperature=0, stop_tokens=[]).run()
    # 4 prompt tokens + 2 fed back fill the 6 positions; the 3rd new token ends generation
    assert len(gen.tokens) == 3 and gen.stop_reason == "context_limit"
    with pytest.raises(ValueError, match="no room in the context"):
        m.generate([1] * 6, max_new_tokens=1)


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens")])
def test_bad_arguments(model, kw, match):
    with pytest.raises(ValueError, match=match):
        model.generate("Hi", **kw)


def test_bad_prompt_tokens(model):
    with pytest.raises(ValueError, match="out of range"):
        model.generate([5, 300000])
    with pytest.raises(ValueError, match="empty"):
        model.generate([])


def test_sampler_top_k_and_top_p_restrict_support():
    logits = np.array([5.0, 4.0, 3.0, 0.0, -1.0, -2.0])
    s = Sampler(temperature=1.0, top_k=2, seed=0)
    assert {s(logits) for _ in range(200)} == {0, 1}
    s = Sampler(temperature=1.0, top_p=0.5, seed=0)     # p(0) = 0.66 > 0.5: only token 0
    assert {s(logits) for _ in range(100)} == {0}
    assert Sampler(temperature=0)(logits) == 0


def test_sampler_follows_the_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.2]))
    s = Sampler(temperature=1.0, seed=1)
    counts = np.bincount([s(logits) for _ in range(6000)], minlength=3) / 6000
    # binomial standard error at n=6000 is under 0.0065: 5 sigma
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.033)
    hot = Sampler(temperature=0.5, seed=1)
    counts = np.bincount([hot(logits) for _ in range(6000)], minlength=3) / 6000
    p = np.array([0.5, 0.3, 0.2]) ** 2
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.033)


def test_sampler_rejects_nonfinite_logits():
    with pytest.raises(FloatingPointError, match="non-finite"):
        Sampler(temperature=0)(np.array([0.0, np.nan]))


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_generate_batch_matches_one_at_a_time(tiny_hf, backend):
    pytest.importorskip("gptoss._C") if backend == "cpu" else None
    m = Model.from_pretrained(tiny_hf, backend=backend)
    prompts = ["Hello", [200006, 1428, 200008, 13225], "A much longer prompt " * 12]
    batch = m.generate_batch(prompts, max_new_tokens=7, temperature=0, stop_tokens=[])
    for p, g in zip(prompts, batch):
        solo = m.generate(p, max_new_tokens=7, temperature=0, stop_tokens=[]).run()
        assert g.tokens == solo.tokens and g.text == solo.text
        assert g.stop_reason == "max_new_tokens"
    # a stop token ends only its own sequence
    first = batch[0].tokens
    gens = m.generate_batch(prompts[:2], max_new_tokens=7, temperature=0, stop_tokens=[first[2]])
    assert gens[0].tokens == first[:2] and gens[0].stop_reason == "stop_token"
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        m.generate_batch(["a", []])


def test_same_seed_same_tokens_on_every_backend(tiny_hf):
    """Sampling is one counter-based algorithm everywhere: the NumPy engine samples with the
    NumPy mirror, the C++ engine on its device (only token ids come back); with logits equal to
    float32 accuracy the same seed gives the same tokens."""
    prompt = [200006, 1428, 200008, 13225, 2375]
    outs = {}
    for backend in ("numpy", "cpu"):
        m = Model.from_pretrained(tiny_hf, backend=backend)
        outs[backend] = m.generate(prompt, max_new_tokens=12, temperature=0.9, top_p=0.95,
                                   top_k=200, seed=11, stop_tokens=[]).run().tokens
    assert outs["numpy"] == outs["cpu"]
    gens = Model.from_pretrained(tiny_hf, backend="cpu").generate_batch(
        [prompt, prompt[:3]], max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=200, seed=11,
        stop_tokens=[])
    assert gens[0].tokens == outs["cpu"]         # sequence 0 of a batch samples with seed + 0
