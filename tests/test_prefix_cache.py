"""Prefix caching in the C++ engine (csrc/engine/engine.cpp) and batch invariance.

The CPU engine computes each row of a step in an order that does not depend on how many rows
share the step or where a chunk starts, so a sequence's logits are asserted bit-identical (not
within a tolerance) whether its prompt was prefilled at once, in chunks, from a cached prefix, or
decoded in a batch with other sequences; on tiny checkpoints of both layouts. That holds at every
SIMD level by default except amx, where an expert's 8 tokens or more take the AMX-BF16 tiles and
fewer the exact integer code: the engines here are opened with batch_invariant=True, which keeps
the integer code there too (and changes nothing at the other levels), and
test_cpu_default_at_the_amx_level_within_the_bound checks the default. Under the CUDA
backend (emulated or on a GPU) the prefill and decode paths round differently (bf16 activations in
the tensor-core GEMMs for more than 8 rows), so there a cached prefix is checked against the
uncached run with test_cuda_engine's derived bound instead, unless the backend is opened with
batch_invariant=True (Options::batch_invariant: the per-row paths for any number of rows), which
is asserted bit-identical the same way as the CPU engine.
"""
import numpy as np
import pytest

from gptoss import Model, Weights
from gptoss.testing import write_random_checkpoint

from conftest import rel_err

C = pytest.importorskip("gptoss._C", reason="extension not built")
from gptoss.backends.native import NativeEngine  # noqa: E402

V = 4096
PAGE = 256


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("prefix")
    hf = write_random_checkpoint(str(base / "hf"), "tiny", layout="hf", seed=8, vocab_size=V)
    orig = write_random_checkpoint(str(base / "orig"), "tiny", layout="original", seed=8,
                                   vocab_size=V)
    return {"hf": hf, "original": orig}


def toks(seed, n):
    return np.random.default_rng(seed).integers(0, V, n).astype(np.int64)


def engine(path, **kw):
    return C.Engine(path, device="cpu", batch_invariant=True, **kw)


def test_cpu_default_at_the_amx_level_within_the_bound(ckpts):
    """By default a prompt in chunks gives the logits it gets at once bit for bit below the amx
    level; at the amx level within the float32-class bound the engine is held to against NumPy
    (the tiles and the integer code each are), and batch_invariant=True is exact there too."""
    from test_cpu_engine import bound
    w = Weights(ckpts["hf"])
    t = toks(1, 300)
    for inv in (False, True):
        ref = C.Engine(ckpts["hf"], device="cpu", prefix_cache_gb=0, batch_invariant=inv).prefill(t, True)
        e = C.Engine(ckpts["hf"], device="cpu", prefix_cache_gb=0, batch_invariant=inv)
        got = np.concatenate([e.prefill(t[:150], True), e.prefill(t[150:299], True),
                              e.decode(int(t[299]))[None]])
        if inv or C.build_info()["simd"] != "amx":
            assert np.array_equal(got, ref), inv
        else:
            assert rel_err(got, ref) < 2 * bound(w.config), rel_err(got, ref)


@pytest.mark.parametrize("kv", ["float32", "bf16"])
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_chunked_and_decoded_prompts_are_bit_identical(ckpts, layout, kv):
    t = toks(1, 300)
    ref = engine(ckpts[layout], prefix_cache_gb=0, kv_dtype=kv).prefill(t, True)
    for chunks in ([150, 150], [7, 293], [256, 44], [299, 1], [290] + [1] * 10):
        e = engine(ckpts[layout], prefix_cache_gb=0, kv_dtype=kv)
        out, i = [], 0
        for c in chunks:
            out.append(e.decode(int(t[i]))[None] if c == 1 else e.prefill(t[i:i + c], True))
            i += c
        assert np.array_equal(np.concatenate(out), ref), chunks


@pytest.mark.parametrize("kv", ["float32", "bf16"])
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_cached_prefix_is_bit_identical(ckpts, layout, kv):
    system = toks(2, 2 * PAGE + 40)
    e = engine(ckpts[layout], kv_dtype=kv)
    ref = engine(ckpts[layout], prefix_cache_gb=0, kv_dtype=kv)
    e.prefill(system, False)
    assert e.cached_tokens() == 0
    st = e.prefix_cache_stats()
    assert st["cached_pages"] == 2 and st["hit_tokens"] == 0
    # the next turn: the same start, new tokens after it; the first turn's partial last page
    # (40 positions) is taken too, as far as the new prompt agrees with it (the prompt's last
    # token is always computed)
    for extra, want_cached in ((toks(3, 100), 2 * PAGE + 40), (np.zeros(0, np.int64), 2 * PAGE + 39),
                               (toks(4, 1), 2 * PAGE + 40)):
        turn = np.concatenate([system, extra])
        e.reset()
        got = e.prefill(turn, False)
        assert e.cached_tokens() == want_cached
        ref.reset()
        assert np.array_equal(got, ref.prefill(turn, False))
        for tok in (5, 17):  # decoding goes on identically from the shared pages
            assert np.array_equal(e.decode(tok), ref.decode(tok))
    # a prompt of exactly one page + 1: the page is reused, only the last token is computed
    e.reset()
    p = system[:PAGE + 1]
    got = e.prefill(p, False)
    assert e.cached_tokens() == PAGE
    ref.reset()
    assert np.array_equal(got, ref.prefill(p, False))
    # a prompt that diverges inside the first page takes nothing
    e.reset()
    q = system.copy()
    q[100] = (q[100] + 1) % V
    got = e.prefill(q, False)
    assert e.cached_tokens() == 0
    ref.reset()
    assert np.array_equal(got, ref.prefill(q, False))


@pytest.mark.parametrize("kv", ["float32", "bf16"])
def test_sharing_between_running_sequences_and_batched_decode(ckpts, kv):
    path = ckpts["hf"]
    e, ref = engine(path, kv_dtype=kv), engine(path, prefix_cache_gb=0, kv_dtype=kv)
    common = toks(5, PAGE + 10)
    a = e.add_sequence()
    b = e.add_sequence()
    ta = np.concatenate([common, toks(6, 30)])
    tb = np.concatenate([common, toks(7, 50)])
    la = e.prefill_sequence(a, ta, False)
    lb = e.prefill_sequence(b, tb, False)       # shares a's first page while a still runs
    assert e.cached_tokens(a) == 0 and e.cached_tokens(b) == PAGE
    ra = ref.add_sequence()
    rb = ref.add_sequence()
    assert np.array_equal(la, ref.prefill_sequence(ra, ta, False))
    assert np.array_equal(lb, ref.prefill_sequence(rb, tb, False))
    # batched decode equals one sequence at a time (and the engine without the cache)
    single = engine(path, prefix_cache_gb=0, kv_dtype=kv)
    want_a = [single.prefill(ta, False)]
    for step in range(PAGE):  # a crosses its second page boundary while decoding
        tok_a, tok_b = int(step * 7 % V), int(step * 11 % V)
        got = e.decode_batch(np.array([a, b]), np.array([tok_a, tok_b]))
        assert np.array_equal(got, ref.decode_batch(np.array([ra, rb]), np.array([tok_a, tok_b])))
        if step < 3:
            assert np.array_equal(got[0], single.decode(tok_a))
    # a page completed while decoding is cached too: a's prompt + its decoded tokens
    e.remove_sequence(a)
    c = e.add_sequence()
    decoded = np.array([step * 7 % V for step in range(PAGE)], np.int64)
    full = np.concatenate([ta, decoded])
    e.prefill_sequence(c, full, False)
    assert e.cached_tokens(c) == 2 * PAGE + 39  # and a's partial last page, but the last token


def test_start_from_cache_then_chunks(ckpts):
    path = ckpts["hf"]
    e, ref = engine(path), engine(path, prefix_cache_gb=0)
    prompt = toks(9, 3 * PAGE + 77)
    e.prefill(prompt[:2 * PAGE + 5], False)
    s = e.add_sequence()
    P = e.start_from_cache(s, prompt)
    assert P == 2 * PAGE and e.sequence_position(s) == P
    for i in range(P, len(prompt), 100):       # the rest in chunks, as a scheduler feeds it
        out = e.prefill_sequence(s, prompt[i:i + 100], False)
    assert np.array_equal(out, ref.prefill(prompt, False))
    with pytest.raises(ValueError, match="is at position"):
        e.start_from_cache(s, prompt)
    with pytest.raises(ValueError, match="out of range"):
        e.start_from_cache(e.add_sequence(), np.array([1, V]))
    # all-logits prefills compute every position (the caller wants their logits)
    e.reset()
    e.prefill(prompt, True)
    assert e.cached_tokens() == 0


@pytest.mark.parametrize("kv", ["float32", "bf16"])
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_partial_last_pages_are_reused_bit_identically(ckpts, layout, kv):
    """A finished sequence's partial last page is kept (a tail): a later prompt agreeing with it
    up to any point inside it resumes there from a copy of the page, with the ring layers' window
    restored from its snapshots (before and past the first 128 positions of the page), and gets
    the bits of an uncached prefill; the copy is the new sequence's own, so the tail stays intact
    for the next one."""
    path = ckpts[layout]
    e, ref = engine(path, kv_dtype=kv), engine(path, prefix_cache_gb=0, kv_dtype=kv)
    base = toks(20, PAGE + 200)                 # one full page and a tail of 200 positions
    e.prefill(base, False)
    e.reset()
    st = e.prefix_cache_stats()
    assert st["tails"] == 1 and st["tail_pages"] == 2, st   # the page and one aux snapshot id
    for agree in (PAGE + 20, PAGE + 127, PAGE + 128, PAGE + 150, PAGE + 200):
        turn = np.concatenate([base[:agree], toks(agree, 30)])
        e.reset()
        got = e.prefill(turn, False)
        assert e.cached_tokens() == agree, agree
        ref.reset()
        assert np.array_equal(got, ref.prefill(turn, False)), agree
        for tok in (3, 9):
            assert np.array_equal(e.decode(tok), ref.decode(tok)), agree
    # a short conversation (no full page at all): its tail is reused from position 0
    short = toks(21, 90)
    e.reset()
    e.prefill(short, False)
    e.reset()
    turn = np.concatenate([short, toks(22, 12)])
    got = e.prefill(turn, False)
    assert e.cached_tokens() == 90
    ref.reset()
    assert np.array_equal(got, ref.prefill(turn, False))
    # a tail shorter than 16 positions is not kept; a prompt that diverges before 16 takes none
    e.reset()
    e.prefill(toks(23, PAGE + 10), False)
    e.reset()
    e.prefill(np.concatenate([toks(23, PAGE + 10), toks(24, 5)]), False)
    assert e.cached_tokens() == PAGE
    e.reset()
    e.prefill(np.concatenate([short[:10], toks(25, 40)]), False)
    assert e.cached_tokens() == 0


def test_tails_are_evicted_within_the_bound(ckpts):
    path = ckpts["hf"]
    page_bytes = engine(path).prefix_cache_stats()["page_bytes"]
    e = engine(path, prefix_cache_gb=3.5 * page_bytes / 1e9)   # three idle page ids at most
    ref = engine(path, prefix_cache_gb=0)

    def turn(t, want_cached):
        e.reset()
        got = e.prefill(t, False)
        assert e.cached_tokens() == want_cached
        ref.reset()
        assert np.array_equal(got, ref.prefill(t, False))

    a, b, c = toks(30, 100), toks(31, 200), toks(32, 100)
    turn(a, 0)
    turn(b, 0)
    e.reset()                                # tails of 1 and 2 page ids (b needs an aux one)
    st = e.prefix_cache_stats()
    assert st["tails"] == 2 and st["tail_pages"] == 3 and st["evictions"] == 0, st
    turn(c, 0)
    e.reset()                                # a third tail: the least recently used (a) goes
    st = e.prefix_cache_stats()
    assert st["tails"] == 2 and st["tail_pages"] == 3 and st["evictions"] == 1, st
    b5 = np.concatenate([b, toks(33, 5)])
    turn(b5, 200)
    e.reset()                                # b + 5 extends b's tail and replaces it
    st = e.prefix_cache_stats()
    assert st["tails"] == 2 and st["tail_pages"] == 3 and st["evictions"] == 1, st
    turn(np.concatenate([a, toks(34, 5)]), 0)   # a was evicted: recomputed, and still right
    e.reset()                                # its tail evicts c, now the least recently used
    st = e.prefix_cache_stats()
    assert st["tails"] == 2 and st["tail_pages"] == 3 and st["evictions"] == 2, st
    turn(np.concatenate([b5, toks(35, 3)]), 205)
    turn(np.concatenate([c, toks(36, 3)]), 0)


def test_eviction_is_lru_and_bounded(ckpts):
    path = ckpts["hf"]
    page_bytes = engine(path).prefix_cache_stats()["page_bytes"]
    e = engine(path, prefix_cache_gb=2.5 * page_bytes / 1e9)   # two idle pages at most
    ref = engine(path, prefix_cache_gb=0)
    first, second = toks(10, 2 * PAGE + 1), toks(11, 2 * PAGE + 1)
    e.prefill(first, False)
    e.reset()                                  # first's two pages idle
    e.prefill(second, False)
    e.reset()                                  # second's two pages idle: first's are evicted
    st = e.prefix_cache_stats()
    assert st["idle_pages"] == 2 and st["evictions"] == 2 and st["cached_pages"] == 2
    got = e.prefill(first, False)
    assert e.cached_tokens() == 0              # evicted: recomputed, and still right
    assert np.array_equal(got, ref.prefill(first, False))
    e.reset()
    got = e.prefill(first, False)
    assert e.cached_tokens() == 2 * PAGE
    ref.reset()
    assert np.array_equal(got, ref.prefill(first, False))
    with pytest.raises(ValueError, match="prefix_cache_gb"):
        engine(path, prefix_cache_gb=-1)


def test_model_api_reuses_prefixes(ckpts):
    m = Model.from_pretrained(ckpts["hf"], backend="cpu")
    p = toks(12, PAGE + 20).tolist()
    a = m.generate(p, max_new_tokens=4, temperature=0).run().tokens
    b = m.generate(p, max_new_tokens=4, temperature=0).run().tokens
    # the first run's partial last page is kept too: all but the prompt's last token are reused
    assert len(a) == 4 and a == b and m.engine.cached_tokens() == len(p) - 1
    off = Model.from_pretrained(ckpts["hf"], backend="cpu", prefix_cache_gb=0)
    assert off.generate(p, max_new_tokens=4, temperature=0).run().tokens == a
    assert off.engine.cached_tokens() == 0
    with pytest.raises(ValueError, match="prefix_cache_gb"):
        Model.from_pretrained(ckpts["hf"], backend="cpu", prefix_cache_gb=-2)


@pytest.mark.skipif(not C.build_info()["cuda_backend"] or
                    (not C.build_info()["cuda_emulated"] and C.cuda_device_count()[0] == 0),
                    reason="no CUDA backend here")
def test_cuda_cached_prefix_within_bound(ckpts):
    w = Weights(ckpts["hf"])
    cu = NativeEngine(w, device="cuda")
    ref = NativeEngine(w, device="cuda", prefix_cache_gb=0)
    system = toks(13, PAGE + 30)
    cu.prefill(system.tolist(), all_logits=False)
    cu.reset()
    turn = np.concatenate([system, toks(14, 20)]).tolist()
    got = cu.prefill(turn, all_logits=False)
    assert cu.cached_tokens() == PAGE + 30  # the full page and the first run's partial one
    want = ref.prefill(turn, all_logits=False)
    bound = 6 * w.config.num_layers * 2.0 ** -9 + 2.0 ** -9
    assert rel_err(got, want) < bound, rel_err(got, want)


@pytest.mark.skipif(not C.build_info()["cuda_backend"] or
                    (not C.build_info()["cuda_emulated"] and C.cuda_device_count()[0] == 0),
                    reason="no CUDA backend here")
@pytest.mark.parametrize("layout", ["hf", "original"])
def test_cuda_batch_invariant_mode_is_bit_identical(tmp_path, layout):
    # Two layers (one banded, one full) with an 8-token window, so 70 positions cross it; the
    # emulated per-row paths cost about 0.1 s a row, so the prompt stays short. A cached prefix
    # is the same computation as a prefill in two chunks split at the page boundary (the pages
    # are copied exactly), which the chunked runs cover.
    path = write_random_checkpoint(str(tmp_path), "tiny", layout=layout, seed=8, vocab_size=1024,
                                   num_layers=2, sliding_window=8)

    def cu():
        return C.Engine(path, device="cuda", batch_invariant=True, prefix_cache_gb=0)
    whole = cu()
    assert "batch-invariant" in whole.device
    t = np.random.default_rng(15).integers(0, 1024, 70).astype(np.int64)
    ref = whole.prefill(t, True)
    # chunks of every kind: by default more than 8 rows take the tensor-core products and more
    # than 64 the prefill attention kernel, and decode splits its keys by the batch's size
    for chunks in ([66, 4], [60] + [1] * 10):
        e = cu()
        out, i = [], 0
        for c in chunks:
            out.append(e.decode(int(t[i]))[None] if c == 1 else e.prefill(t[i:i + c], True))
            i += c
        assert np.array_equal(np.concatenate(out), ref), chunks
    # a batched decode step equals each sequence decoded alone
    e = cu()
    e.prefill(t, False)
    a = e.add_sequence()
    e.prefill_sequence(a, t[:12], False)
    single = cu()
    single.prefill(t[:12], False)
    for step in range(2):
        got = e.decode_batch(np.array([0, a]), np.array([step + 3, step + 9]))
        assert np.array_equal(got[1], single.decode(step + 9))
        assert np.array_equal(got[0], whole.decode(step + 3))


def test_batch_invariant_option_across_the_apis(ckpts):
    # the CPU engine is always batch-invariant and takes either value; NumPy's products promise
    # nothing of the kind, so the numpy backend refuses the option by name
    m = Model.from_pretrained(ckpts["hf"], backend="cpu", batch_invariant=True)
    assert m.engine.name == "cpu"
    with pytest.raises(ValueError, match="batch_invariant=True: the numpy backend"):
        Model.from_pretrained(ckpts["hf"], backend="numpy", batch_invariant=True)
    from gptoss.cli import build_parser
    for cmd in ("generate", "chat", "serve"):
        extra = ["x"] if cmd == "generate" else []
        a = build_parser().parse_args([cmd, "--model", "m", "--batch-invariant", *extra])
        assert a.batch_invariant is True
        assert build_parser().parse_args([cmd, "--model", "m", *extra]).batch_invariant is None
    ray_serve = pytest.importorskip("gptoss.ray_serve")
    with pytest.raises(ValueError, match="'batch_invariant' must be true or false"):
        ray_serve.app_builder({"model": "random:tiny", "batch_invariant": "maybe"})
