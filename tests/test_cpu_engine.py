"""The C++ engine (backend="cpu") against the NumPy engine on tiny random checkpoints of both
layouts: a prefill past the sliding window, 20+ decode steps, greedy generation, errors.

Tolerance: every MXFP4 product carries the two-level activation quantization error (relative
bound Q2 per product, see test_cpu_kernels.py) and every float32 reduction its rounding; through
L layers of two expert products each, the logits' relative error is bounded by
2 * L * (Q2 + f32 bound), the errors adding at worst linearly with depth.
"""
import math
import os
import shutil

import numpy as np
import pytest

from gptoss import Model, Weights
from gptoss.backends.numpy import NumpyEngine

from conftest import rel_err
from test_cpu_kernels import EPS32, Q2_BOUND, f32_bound

C = pytest.importorskip("gptoss._C", reason="extension not built")
from gptoss.backends.native import NativeEngine  # noqa: E402


def bound(cfg):
    return 2 * cfg.num_layers * (Q2_BOUND + f32_bound(max(cfg.hidden_size, cfg.q_width,
                                                            2 * cfg.intermediate_size)))


@pytest.mark.parametrize("ck", ["tiny_hf", "tiny_original", "tiny_sharded"])
def test_prefill_and_decode_match_numpy(ck, request):
    path = request.getfixturevalue(ck)
    w = Weights(path)
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, 199998, 230).tolist()
    ref_e, nat = NumpyEngine(w), NativeEngine(w)
    want = ref_e.prefill(tokens[:210])
    got = nat.prefill(tokens[:210])
    assert got.shape == want.shape == (210, 201088)
    assert rel_err(got, want) < bound(w.config), rel_err(got, want)
    for t in tokens[210:]:
        a, b = ref_e.decode(t), nat.decode(t)
        assert rel_err(b, a) < bound(w.config)
    assert nat.position == ref_e.position == 230


def test_long_prompt_in_chunks_equals_decode_path(tiny_hf):
    """600 tokens go through in 512-token chunks; the sliding ring must keep the right keys."""
    w = Weights(tiny_hf)
    tokens = np.random.default_rng(3).integers(0, 199998, 600).tolist()
    full = NativeEngine(w).prefill(tokens, all_logits=True)
    e = NativeEngine(w)
    e.prefill(tokens[:300], all_logits=False)
    steps = np.stack([e.decode(t) for t in tokens[300:]])
    assert rel_err(steps, full[300:]) < 64 * EPS32 + bound(w.config) / 4
    want = NumpyEngine(w).prefill(tokens)[-1]
    assert rel_err(full[-1], want) < bound(w.config)


def test_greedy_generation_agrees_token_for_token(tiny_hf, tiny_original):
    for path in (tiny_hf, tiny_original):
        a = Model.from_pretrained(path, backend="numpy")
        b = Model.from_pretrained(path, backend="cpu")
        assert b.backend == "cpu"
        prompt = [200006, 1428, 200008, 13225, 2375, 200007, 200006]
        ga = a.generate(prompt, max_new_tokens=24, temperature=0, stop_tokens=[]).run()
        gb = b.generate(prompt, max_new_tokens=24, temperature=0, stop_tokens=[]).run()
        assert ga.tokens == gb.tokens


def test_auto_picks_cpu_and_says_why(tiny_hf):
    m = Model.from_pretrained(tiny_hf)
    assert m.backend == "cpu" and "not cuda" in m.backend_note


def test_engine_errors(tiny_hf):
    e = NativeEngine(Weights(tiny_hf), max_context=10)
    with pytest.raises(ValueError, match="out of range"):
        e.prefill([1, 201088])
    with pytest.raises(ValueError, match="empty"):
        e.prefill([])
    e.prefill([1] * 8)
    with pytest.raises(ValueError, match="context limit"):
        e.prefill([1] * 3)
    assert e.position == 8
    e.decode(1)
    e.decode(2)
    with pytest.raises(ValueError, match="context limit") as err:
        e.decode(3)
    assert "engine.cpp:" in str(err.value)     # file and line of the failing check


def test_cpp_loader_reports_bad_checkpoints(tiny_hf, tmp_path):
    ck = str(tmp_path / "ck")
    shutil.copytree(tiny_hf, ck)
    p = os.path.join(ck, "model.safetensors")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 100)
    with pytest.raises(ValueError, match=r"truncated.*lm_head.weight|lm_head.weight.*truncated"):
        C.Engine(ck)
    with pytest.raises(ValueError, match="not a directory"):
        C.Engine(str(tmp_path / "missing"))


def test_threads_setting_gives_same_logits(tiny_hf):
    w = Weights(tiny_hf)
    toks = list(range(300, 340))
    a = NativeEngine(w, threads=1).prefill(toks)
    C.set_num_threads(os.cpu_count() or 1)
    b = NativeEngine(w).prefill(toks)
    # thread count changes no reduction order (rows are split, never a dot product)
    assert np.array_equal(a, b)


def test_one_level_activations_within_their_bound(tiny_hf):
    """activation_levels=1 (int8 activations for the experts): logits within the bound derived
    from the one-level quantization error."""
    from test_cpu_kernels import Q1_BOUND
    w = Weights(tiny_hf)
    toks = np.random.default_rng(1).integers(0, 199998, 150).tolist()
    want = NumpyEngine(w).prefill(toks)
    got = NativeEngine(w, activation_levels=1).prefill(toks)
    cfg = w.config
    b1 = 2 * cfg.num_layers * (Q1_BOUND + f32_bound(max(cfg.hidden_size, 2 * cfg.intermediate_size)))
    assert rel_err(got, want) < b1, rel_err(got, want)
    # and it is genuinely coarser than the default two levels (the option does something)
    assert rel_err(got, want) > rel_err(NativeEngine(w).prefill(toks), want)
    with pytest.raises(ValueError, match="activation_levels"):
        NativeEngine(w, activation_levels=3)


@pytest.mark.parametrize("level", ["avx2", "avx2vnni", "avx512"])
def test_one_level_r16_bound_and_batch_invariant(tiny_hf, level):
    """At every SIMD level activation_levels=1 runs the int8 r16 kernels on the repacked experts
    (AVX2 vpmaddubsw, AVX-VNNI and AVX-512 VNNI vpdpbusd): within the one-level bound of the NumPy engine, and
    a prompt fed whole, in chunks or token by token gives the same bits."""
    if level not in C.simd_levels():
        pytest.skip(f"this processor lacks the {level} level")
    from test_cpu_kernels import Q1_BOUND
    w = Weights(tiny_hf)
    cfg = w.config
    toks = np.random.default_rng(5).integers(0, 199998, 40).tolist()
    C.force_simd(level)
    try:
        e = NativeEngine(w, activation_levels=1)
        assert f"repacked for the {level} kernels" in e.weights_note, e.weights_note
        whole = e.prefill(toks, all_logits=True)
        e2 = NativeEngine(w, activation_levels=1)
        parts = [e2.prefill(toks[:17], all_logits=True), e2.prefill(toks[17:30], all_logits=True)]
        parts += [e2.decode(t)[None] for t in toks[30:]]
    finally:
        C.force_simd(C.simd_levels()[-1])
    assert np.array_equal(np.concatenate(parts), whole)
    want = NumpyEngine(w).prefill(toks)
    b1 = 2 * cfg.num_layers * (Q1_BOUND + f32_bound(max(cfg.hidden_size, 2 * cfg.intermediate_size)))
    assert rel_err(whole, want) < b1, rel_err(whole, want)


def test_prompt_crossing_a_cache_page(tiny_original):
    """1100 positions: three prefill chunks (512) and the second 1024-position KV page."""
    w = Weights(tiny_original)
    toks = np.random.default_rng(11).integers(0, 199998, 1100).tolist()
    want = NumpyEngine(w).prefill(toks, all_logits=False)
    e = NativeEngine(w)
    got = e.prefill(toks[:1020], all_logits=False)
    for t in toks[1020:]:
        got = e.decode(t)
    assert rel_err(got, want) < bound(w.config)
    assert rel_err(NativeEngine(w).prefill(toks, all_logits=False), want) < bound(w.config)


def test_batched_decode_equals_one_sequence_at_a_time(tiny_hf):
    """Three sequences of different lengths (below, across and far past the window) decoded in
    one batch give the logits each gets on its own."""
    w = Weights(tiny_hf)
    rng = np.random.default_rng(5)
    prompts = [rng.integers(0, 199998, n).tolist() for n in (10, 150, 300)]
    e = NativeEngine(w)
    seqs = [0, e.add_sequence(), e.add_sequence()]
    nxt = [int(np.argmax(e.prefill_sequence(s, p))) for s, p in zip(seqs, prompts)]
    batched = []
    for _ in range(8):
        logits = e.decode_batch(seqs, nxt)
        batched.append(logits)
        nxt = [int(np.argmax(r)) for r in logits]
    assert [e.sequence_position(s) for s in seqs] == [18, 158, 308]
    for k, p in enumerate(prompts):
        solo = NativeEngine(w)
        t = int(np.argmax(solo.prefill(p, all_logits=False)))
        for step in range(8):
            row = solo.decode(t)
            # the same rows through the same kernels: only the batch's float32 summation grouping
            # may differ
            assert rel_err(batched[step][k], row) < 64 * EPS32
            t = int(np.argmax(row))
    # a finished sequence can be dropped and its slot reused; bad batches are refused
    e.remove_sequence(seqs[1])
    s3 = e.add_sequence()
    assert s3 == seqs[1] and e.sequence_position(s3) == 0
    with pytest.raises(ValueError, match="appears twice"):
        e.decode_batch([0, 0], [1, 2])
    with pytest.raises(ValueError, match="no sequence"):
        e.decode_batch([0, 99], [1, 2])
    with pytest.raises(ValueError, match="sequence 0"):
        e.remove_sequence(0)


@pytest.mark.parametrize("ck", ["tiny_hf", "tiny_original"])
def test_bf16_kv_cache_matches_numpy_bf16(ck, request):
    """kv_dtype="bf16": K and V (after RoPE) rounded to bf16 in the cache, attention in float32,
    against NumpyEngine(kv_dtype="bf16"), which rounds the same way before any query reads them.

    Bound (derived): the two engines' K and V before rounding differ by at most the float32-cache
    bound d = bound(cfg); rounding to nearest turns a difference d into one bf16 ulp (2^-8
    relative) on at most a fraction d / 2^-8 of the values, an rms of sqrt(d * 2^-8) per value;
    K and V in each of L layers add up linearly: 2 L sqrt(d 2^-8). And the rounding must be the
    spec's: the C++ bf16 engine is far closer to NumPy's bf16 engine than to its float32 one."""
    path = request.getfixturevalue(ck)
    w = Weights(path)
    cfg = w.config
    tokens = np.random.default_rng(7).integers(0, 199998, 200).tolist()
    nb, nf = NumpyEngine(w, kv_dtype="bf16"), NumpyEngine(w)
    cb = NativeEngine(w, kv_dtype="bf16")
    b = 2 * cfg.num_layers * math.sqrt(bound(cfg) * 2.0 ** -8)
    got, want, want32 = cb.prefill(tokens[:180]), nb.prefill(tokens[:180]), nf.prefill(tokens[:180])
    assert rel_err(got, want) < b, rel_err(got, want)
    assert rel_err(got, want) < rel_err(got, want32) / 4, (rel_err(got, want), rel_err(got, want32))
    steps = [(cb.decode(t), nb.decode(t), nf.decode(t)) for t in tokens[180:]]
    got, want, want32 = (np.stack(x) for x in zip(*steps))
    assert rel_err(got, want) < b
    assert rel_err(got, want) < rel_err(got, want32) / 3, (rel_err(got, want), rel_err(got, want32))
    # the float32 and bf16 NumPy engines differ by the rounding alone: K and V each relative
    # u = 2^-9 per layer, through L layers
    assert 0 < rel_err(want, want32) < 2 * cfg.num_layers * 2.0 ** -9 * 4
    # the cache holds half the bytes: the prefix cache's page size says so
    assert cb._e.prefix_cache_stats()["page_bytes"] * 2 == \
        NativeEngine(w)._e.prefix_cache_stats()["page_bytes"]


def test_kv_dtype_is_checked(tiny_hf):
    w = Weights(tiny_hf)
    with pytest.raises(ValueError, match="kv_dtype"):
        NativeEngine(w, kv_dtype="fp8")
    with pytest.raises(ValueError, match="kv_dtype"):
        NumpyEngine(w, kv_dtype="float16")
    with pytest.raises(ValueError, match="kv_dtype"):
        Model.from_pretrained(tiny_hf, backend="cpu", kv_dtype="int8")
    # "auto" is float32 on the CPU: bit-identical to asking for it
    toks = list(range(100, 140))
    assert np.array_equal(NativeEngine(w, kv_dtype="auto").prefill(toks),
                          NativeEngine(w, kv_dtype="float32").prefill(toks))
    m = Model.from_pretrained(tiny_hf, backend="numpy", kv_dtype="bf16")
    assert m.engine.kv_bf16
