"""The whole CUDA backend (backend="cuda") against the NumPy engine on tiny checkpoints of both
layouts: a prompt across the sliding window, decode across KV pages, a prompt longer than one
512-token chunk, batched decode equal to one sequence at a time, graph replay equal to eager
steps, device sampling, greedy agreement. Under emulation (GPTOSS_CUDA=EMULATE) every kernel runs
on the CPU; on a GPU the same tests run natively.

Tolerance (derived): the CUDA backend keeps K and V in bf16 and, for chunks of more than 8 tokens,
rounds the activations entering the tensor-core products to bf16 (unit roundoff u = 2^-9). Each
rounding perturbs a product's output by about u relative (independent errors over a dot product
do not grow with its length); per layer there are about 6 such products on the residual path
(qkv, scores, values, out, two expert products), and errors add at worst linearly over the L
layers, plus the unembedding: 6 * L * u + u. Decode steps (no bf16 activations, only the bf16
cache) fall well inside the same bound.
"""
import numpy as np
import pytest

from gptoss import Model, Weights
from gptoss.backends.numpy import NumpyEngine
from gptoss.testing import write_random_checkpoint

from conftest import rel_err

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = [
    pytest.mark.skipif(not C.build_info()["cuda_backend"], reason="built without the CUDA backend"),
    pytest.mark.skipif(not C.build_info()["cuda_emulated"] and C.cuda_device_count()[0] == 0,
                       reason="no GPU here"),
]
from gptoss.backends.native import NativeEngine  # noqa: E402

U = 2.0 ** -9


def bound(cfg):
    return 6 * cfg.num_layers * U + U


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """tiny shapes (GQA 16/2, head dim 64, 32 experts, 4 layers) with a 4096-token vocabulary, so
    the emulated unembedding stays cheap; both layouts, same weights."""
    base = tmp_path_factory.mktemp("cuda_small")
    hf = write_random_checkpoint(str(base / "hf"), "tiny", layout="hf", seed=5, vocab_size=4096)
    orig = write_random_checkpoint(str(base / "orig"), "tiny", layout="original", seed=5,
                                   vocab_size=4096)
    return hf, orig


def test_auto_never_picks_emulated_cuda(small):
    if not C.build_info()["cuda_emulated"]:
        pytest.skip("a real GPU build")
    m = Model.from_pretrained(small[0])
    assert m.backend == "cpu" and "emulated" in m.backend_note
    from gptoss.backends import backends
    info = {b.name: b for b in backends()}
    assert info["cuda"].available and info["cuda"].reason.startswith("EMULATED")


@pytest.mark.parametrize("layout", [0, 1])
def test_prefill_across_window_and_decode_match_numpy(small, layout):
    w = Weights(small[layout])
    tokens = np.random.default_rng(11).integers(0, 4096, 170).tolist()
    ref, cu = NumpyEngine(w), NativeEngine(w, device="cuda")
    want = ref.prefill(tokens[:150])          # 150 > the 128-token window, 9+ rows: GEMM paths
    got = cu.prefill(tokens[:150])
    assert got.shape == want.shape
    assert rel_err(got, want) < bound(w.config), rel_err(got, want)
    for t in tokens[150:]:                    # decode: GEMV paths, graphs from the 3rd step
        a, b = ref.decode(t), cu.decode(t)
        assert rel_err(b, a) < bound(w.config), rel_err(b, a)


def test_long_prompt_chunks_and_pages(small):
    """600 tokens: two chunks (512 + 88), pages of 256 positions crossed twice, the sliding ring
    reused; then decode steps continue from the cache."""
    w = Weights(small[0])
    tokens = np.random.default_rng(12).integers(0, 4096, 604).tolist()
    ref, cu = NumpyEngine(w), NativeEngine(w, device="cuda")
    a = ref.prefill(tokens[:600], all_logits=False)
    b = cu.prefill(tokens[:600], all_logits=False)
    assert rel_err(b, a) < bound(w.config), rel_err(b, a)
    for t in tokens[600:]:
        x, y = ref.decode(t), cu.decode(t)
        assert rel_err(y, x) < bound(w.config), rel_err(y, x)


def test_graph_replay_equals_eager_steps(small, monkeypatch):
    """Decode steps replayed from a captured graph give bit-identical logits to eager steps
    (GPTOSS_CUDA_GRAPHS=0): reductions have a fixed order and the step buffers a fixed address."""
    w = Weights(small[0])
    toks = np.random.default_rng(13).integers(0, 4096, 20).tolist()
    outs = []
    for graphs in ("1", "0"):
        monkeypatch.setenv("GPTOSS_CUDA_GRAPHS", graphs)
        e = NativeEngine(w, device="cuda")
        e.prefill(toks[:12], all_logits=False)
        outs.append(np.stack([e.decode(t) for t in toks[12:]]))
    assert np.array_equal(outs[0], outs[1])


def test_batched_decode_equals_one_at_a_time(small):
    w = Weights(small[0])
    rng = np.random.default_rng(14)
    prompts = [rng.integers(0, 4096, n).tolist() for n in (5, 20, 140)]
    nxt = [int(t) for t in rng.integers(0, 4096, 3)]
    one = []
    for p, t in zip(prompts, nxt):
        e = NativeEngine(w, device="cuda")
        e.prefill(p, all_logits=False)
        one.append([e.decode(t), e.decode(t + 1)])
    e = NativeEngine(w, device="cuda")
    seqs = [0, e.add_sequence(), e.add_sequence()]
    for s, p in zip(seqs, prompts):
        e.prefill_sequence(s, p)
    b1 = e.decode_batch(seqs, nxt)
    b2 = e.decode_batch(seqs, [t + 1 for t in nxt])
    for i in range(3):
        # the same kernels on the same rows: batch-invariant up to the GEMV's per-row order
        assert rel_err(b1[i], one[i][0]) < 1e-5 and rel_err(b2[i], one[i][1]) < 1e-5


def test_device_sampling(small):
    w = Weights(small[0])
    e = NativeEngine(w, device="cuda")
    seqs = [0, e.add_sequence()]
    e.prefill_sequence(0, [1, 2, 3])
    e.prefill_sequence(seqs[1], [4, 5, 6, 7])
    ref = NativeEngine(w, device="cuda")
    rs = [0, ref.add_sequence()]
    ref.prefill_sequence(0, [1, 2, 3])
    ref.prefill_sequence(rs[1], [4, 5, 6, 7])
    logits = ref.decode_batch(rs, [8, 9])
    got = e._e.decode_batch_sample(np.array(seqs), np.array([8, 9]),
                                   np.array([0.0, 0.7], np.float32), np.array([0, 50]),
                                   np.array([1.0, 0.9], np.float32),
                                   np.array([0, 42], np.uint64), np.array([0, 4], np.uint64))
    assert got[0] == int(np.argmax(logits[0]))   # greedy: the argmax of the same step
    want = C.ops.sample_reference(logits[1], 0.7, 50, 0.9, 42, 4)
    assert got[1] == want                        # sampled: the host reference, same draw


@pytest.mark.parametrize("layout", [0, 1])
def test_greedy_generation_agrees_over_64_tokens(small, layout):
    ref = Model.from_pretrained(small[layout], backend="numpy")
    cu = Model.from_pretrained(small[layout], backend="cuda")
    assert cu.backend == "cuda"
    prompt = [200, 1428, 3008, 1322, 2375]
    a = ref.generate(prompt, max_new_tokens=64, temperature=0, stop_tokens=[]).run().tokens
    b = cu.generate(prompt, max_new_tokens=64, temperature=0, stop_tokens=[]).run().tokens
    assert a == b
    # and the logits of the whole teacher-forced sequence (one 69-row prefill) within the bound
    w = Weights(small[layout])
    assert rel_err(cu.forward(prompt + a), ref.forward(prompt + a)) < bound(w.config)


def test_kv_dtype_on_cuda(small):
    """The CUDA backend keeps K and V in bf16: kv_dtype 'bf16' is its default ('auto'), and
    'float32' is refused by name rather than silently run in bf16."""
    w = Weights(small[0])
    toks = np.random.default_rng(21).integers(0, 4096, 12).tolist()
    a = NativeEngine(w, device="cuda").prefill(toks, all_logits=False)
    b = NativeEngine(w, device="cuda", kv_dtype="bf16").prefill(toks, all_logits=False)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="kv_dtype = 'float32'.*bf16"):
        NativeEngine(w, device="cuda", kv_dtype="float32")
