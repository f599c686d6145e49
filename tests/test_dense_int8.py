"""dense_weights="int8": the dense matrices (QKV, output, router, unembedding) quantized at load to
int8 per row and 32-block (csrc/cpu/dense_q8.cpp), against the NumPy engine's executable spec of
the same quantization (backends/numpy.py: quantize_dense_int8).

Tolerances. Against the quantized weights, a product carries only the int16 activation code's
error (relative bound Q16_BOUND, test_cpu_kernels.py) and float32 rounding; so the engine stays
within test_cpu_engine.bound plus one Q16_BOUND for each of the 3 L + 1 dense products. Against
the bf16 weights each dense product also carries the weights' own rounding, up to 1/254 of a
block's largest weight (the Q1_BOUND argument: relative bound Q1_BOUND per product), so the
logits stay within (3 L + 1) Q1_BOUND of the bf16 engine, and must be measurably farther from it
than from the int8 spec (the mode really changes the weights).
"""
import numpy as np
import pytest

from gptoss import Weights
from gptoss.backends.numpy import NumpyEngine, bf16_to_f32, f32_to_bf16, quantize_dense_int8

from conftest import rel_err
from test_cpu_kernels import Q1_BOUND, Q16_BOUND, f32_bound
from test_cpu_engine import bound

C = pytest.importorskip("gptoss._C", reason="extension not built")
from gptoss.backends.native import NativeEngine  # noqa: E402

ALL = ["plain", "avx2", "avx2vnni", "avx512bw", "avx512", "avx512bf16", "amx"]
# the position in a block that code byte e of pair j meets (Q16Act's order, mxfp4_r16.cpp)
POS = [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15,
       16, 18, 17, 19, 20, 22, 21, 23, 24, 26, 25, 27, 28, 30, 29, 31]


@pytest.fixture
def level(request):
    lv = request.param
    if lv not in C.simd_levels():
        pytest.skip(f"this processor lacks the {lv} level")
    C.force_simd(lv)
    yield lv
    C.force_simd(C.simd_levels()[-1])


def bf16_matrix(rng, R, K, scale=0.02):
    return f32_to_bf16((rng.standard_normal((R, K)) * scale).astype(np.float32))


def unpack(P, R):
    """The packed layout back to (codes [R, K] in block order, scales [R, K/32])."""
    G, nb, _ = P.shape
    codes = P[:, :, :512].view(np.int8).reshape(G, nb, 16, 16, 2)   # [g, b, j, row, e]
    scales = P[:, :, 512:].copy().view(np.float32).reshape(G, nb, 16)
    out = np.zeros((G * 16, nb, 32), np.int8)
    for j in range(16):
        for e in range(2):
            out[:, :, POS[2 * j + e]] = codes[:, :, j, :, e].transpose(0, 2, 1).reshape(G * 16, nb)
    return out.reshape(G * 16, nb * 32)[:R], scales.transpose(0, 2, 1).reshape(G * 16, nb)[:R]


@pytest.mark.parametrize("R,K", [(1, 32), (17, 64), (40, 2880), (5, 4096)])
def test_pack_holds_the_numpy_quantization(R, K):
    rng = np.random.default_rng(R + K)
    w = bf16_matrix(rng, R, K)
    w[0, :32] = 0                         # an all-zero block: scale 0, codes 0
    if R > 1:                             # a constant block hits -127
        w[-1, -32:] = f32_to_bf16(np.full(32, -3.0, np.float32))
    codes, scales = unpack(C.ops.q8_pack_r16(w), R)
    wf = bf16_to_f32(w)
    blocks = wf.reshape(R, K // 32, 32)
    want_s = np.abs(blocks).max(-1) / np.float32(127)
    assert np.array_equal(scales, want_s.astype(np.float32))
    assert np.array_equal(codes.astype(np.float32) * np.repeat(scales, 32, 1), quantize_dense_int8(wf))
    assert (codes[0, :32] == 0).all() and (R == 1 or (codes[-1, -32:] == -127).all())


@pytest.mark.parametrize("level", ALL, indirect=True)
@pytest.mark.parametrize("R,K,m", [(1, 32, 1), (16, 64, 3), (17, 96, 17), (33, 2880, 5),
                                   (7, 4096, 2), (48, 2880, 64)])
def test_kernel_against_the_quantized_weights(level, R, K, m):
    rng = np.random.default_rng(R * K + m)
    w = bf16_matrix(rng, R, K)
    x = rng.standard_normal((m, K)).astype(np.float32)
    bias = rng.standard_normal(R).astype(np.float32)
    P = C.ops.q8_pack_r16(w)
    got = C.ops.q8_r16_linear(x, P, R, bias)
    wq = quantize_dense_int8(bf16_to_f32(w)).astype(np.float64)
    want = x.astype(np.float64) @ wq.T
    assert rel_err(got - bias, want) < Q16_BOUND + f32_bound(K), rel_err(got - bias, want)
    # each token alone, and the plain code: the same bits
    one = np.concatenate([C.ops.q8_r16_linear(x[i:i + 1], P, R, bias) for i in range(m)])
    assert np.array_equal(one, got)
    C.force_simd("plain")
    assert np.array_equal(C.ops.q8_r16_linear(x, P, R, bias), got)


def test_kernel_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="multiple of 32"):
        C.ops.q8_pack_r16(bf16_matrix(rng, 4, 40))
    P = C.ops.q8_pack_r16(bf16_matrix(rng, 20, 64))
    with pytest.raises(ValueError, match="rows = 40"):
        C.ops.q8_r16_linear(np.zeros((1, 64), np.float32), P, 40)
    with pytest.raises(ValueError, match="x"):
        C.ops.q8_r16_linear(np.zeros((1, 96), np.float32), P, 20)


def int8_bound(cfg):
    return bound(cfg) + (3 * cfg.num_layers + 1) * Q16_BOUND


@pytest.mark.parametrize("level", ALL, indirect=True)
@pytest.mark.parametrize("ck", ["tiny_hf", "tiny_original"])
def test_engine_against_the_numpy_spec(level, ck, request, tmp_path):
    w = Weights(request.getfixturevalue(ck))
    cfg = w.config
    toks = np.random.default_rng(11).integers(0, 199998, 40).tolist()
    e = NativeEngine(w, dense_weights="int8", cache_dir=str(tmp_path))
    assert "dense weights int8 (dense-q8r16-v1): built" in e.weights_note, e.weights_note
    whole = e.prefill(toks)
    ref8 = NumpyEngine(w, dense_weights="int8").prefill(toks)
    assert rel_err(whole, ref8) < int8_bound(cfg), rel_err(whole, ref8)
    ref = NumpyEngine(w).prefill(toks)
    far = rel_err(whole, ref)
    assert far < (3 * cfg.num_layers + 1) * Q1_BOUND, far
    assert far > 10 * rel_err(whole, ref8), (far, rel_err(whole, ref8))
    # a second engine maps the cache; a prompt in pieces and token by token: the same bits
    e2 = NativeEngine(w, dense_weights="int8", cache_dir=str(tmp_path))
    assert "dense weights int8 (dense-q8r16-v1): mapped" in e2.weights_note, e2.weights_note
    parts = [e2.prefill(toks[:17]), e2.prefill(toks[17:30])]
    parts += [e2.decode(t)[None] for t in toks[30:]]
    assert np.array_equal(np.concatenate(parts), whole)


def test_in_memory_and_errors(tiny_hf, tmp_path):
    w = Weights(tiny_hf)
    toks = [5, 17, 4000, 9]
    mem = NativeEngine(w, dense_weights="int8", repack="memory")
    assert "dense weights int8 (dense-q8r16-v1): quantized into memory" in mem.weights_note
    mapped = NativeEngine(w, dense_weights="int8", cache_dir=str(tmp_path))
    assert np.array_equal(mem.prefill(toks), mapped.prefill(toks))
    with pytest.raises(ValueError, match="dense_weights = 'fp4'"):
        NativeEngine(w, dense_weights="fp4")
    with pytest.raises(ValueError, match="dense_weights='fp4'"):
        NumpyEngine(w, dense_weights="fp4")
    with pytest.raises(ValueError, match="dense_weights = 'int8': device 'cuda'"):
        NativeEngine(w, device="cuda", dense_weights="int8")


def test_model_and_cli_take_it(tiny_hf, tmp_path):
    from gptoss import Model
    from gptoss.cli import build_parser
    m = Model.from_pretrained(tiny_hf, backend="cpu", dense_weights="int8", cache_dir=str(tmp_path))
    assert "dense weights int8" in m.backend_note
    with pytest.raises(ValueError, match="dense_weights='int4'"):
        Model.from_pretrained(tiny_hf, backend="cpu", dense_weights="int4")
    args = build_parser().parse_args(["generate", "--model", tiny_hf, "hi", "--dense-weights", "int8"])
    assert args.dense_weights == "int8"
