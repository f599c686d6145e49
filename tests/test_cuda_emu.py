"""The CUDA layer's primitives against plain loops: warp shuffles and votes, block barriers,
mma.sync fragments, ldmatrix, cp.async. Under emulation (GPTOSS_CUDA=EMULATE) this tests the
emulator; on a GPU the same kernels test the hardware path, so the two can be compared. The
`bad_*` kernels break a rule on purpose and the emulator must say so (a GPU would not)."""
import numpy as np
import pytest

from gptoss.safetensors_io import bf16_to_f32, f32_to_bf16

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = [
    pytest.mark.skipif(not C.build_info()["cuda_compiled"], reason="built without CUDA"),
    pytest.mark.skipif(C.cuda_device_count()[0] == 0, reason="no CUDA device (real or emulated)"),
]
EMULATED = C.build_info()["cuda_compiled"] and C.build_info()["cuda_emulated"]


def test_warp_and_block_primitives():
    x = (np.arange(64, dtype=np.int64) * 37 % 101).astype(np.int32)
    out = C.ops.cuda_selftest_warp(x)
    lane = np.arange(64) % 32
    warp = np.arange(64) // 32
    wsum = np.array([x[w * 32:(w + 1) * 32].sum() for w in range(2)])
    assert np.array_equal(out[:, 0], wsum[warp])
    # shfl_down by 3: lanes 29..31 keep their own value; shfl_up by 5: lanes 0..4 keep theirs
    down = np.where(lane + 3 < 32, x[np.minimum(np.arange(64) + 3, 63)], x)
    up = np.where(lane >= 5, x[np.maximum(np.arange(64) - 5, 0)], x)
    assert np.array_equal(out[:, 1], down)
    assert np.array_equal(out[:, 2], up)
    assert np.array_equal(out[:, 3], x[warp * 32 + 7])
    ballot = sum(1 << l for l in range(32) if l % 3 == 0)
    assert np.array_equal(out[:, 4].astype(np.uint32), np.full(64, ballot, np.uint32))
    assert np.all(out[:, 5] == x.sum())
    assert np.all(out[:, 6] == 32)
    assert np.all(out[:, 7] == max(l * 7 % 32 for l in range(32)))


def _bf16(rng, shape):
    return f32_to_bf16(rng.standard_normal(shape).astype(np.float32))


def test_mma_fragment_layout():
    # D = A @ B with bf16 inputs: every product is exact in f32 and the 16-term sums of these
    # magnitudes round at most 16 * eps32 * sum|a*b|, far below the 1e-5 bound used
    rng = np.random.default_rng(1)
    for _ in range(3):
        A, B = _bf16(rng, (16, 16)), _bf16(rng, (16, 8))
        ref = bf16_to_f32(A).astype(np.float64) @ bf16_to_f32(B).astype(np.float64)
        got = C.ops.cuda_selftest_mma(A, B)
        assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())
    # a one-hot A row picks exactly one B row: checks the element mapping itself, bit for bit
    for r in range(16):
        for c in (0, 5, 9, 15):
            A = np.zeros((16, 16), np.uint16)
            A[r, c] = 0x3F80                        # 1.0 in bf16
            B = _bf16(rng, (16, 8))
            got = C.ops.cuda_selftest_mma(A, B)
            want = np.zeros((16, 8), np.float32)
            want[r] = bf16_to_f32(B[c])
            assert np.array_equal(got, want), (r, c)


def test_mma_with_ldmatrix_and_cp_async():
    rng = np.random.default_rng(2)
    A, W = _bf16(rng, (16, 16)), _bf16(rng, (8, 16))
    ref = bf16_to_f32(A).astype(np.float64) @ bf16_to_f32(W).astype(np.float64).T
    got = C.ops.cuda_selftest_mma_ldmatrix(A, W)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_layout(trans):
    M = np.arange(4 * 64, dtype=np.uint16).reshape(4, 8, 8)
    got = C.ops.cuda_selftest_ldmatrix(M, trans)
    want = np.zeros((32, 4), np.uint32)
    for l in range(32):
        g, t = l // 4, l % 4
        for m in range(4):
            T = M[m].T if trans else M[m]
            want[l, m] = int(T[g, 2 * t]) | (int(T[g, 2 * t + 1]) << 16)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("n,partial", [(1, 0), (7, 5), (64, 16), (33, 0)])
def test_cp_async(n, partial):
    x = np.random.default_rng(n).integers(0, 256, (n, 16), dtype=np.uint8)
    got = C.ops.cuda_selftest_cp_async(x, partial)
    want = x.copy()
    if partial:
        want[-1, 16 - partial:] = 0
    assert np.array_equal(got, want)


@pytest.mark.skipif(not EMULATED, reason="only the emulator reports these")
@pytest.mark.parametrize("which,match", [
    ("lane_exited", "exited while named in the mask"),
    ("divergent_barrier", "__syncthreads at .* while other threads wait at"),
    ("mixed_collectives", "different collectives"),
    ("smem_limit", "cudaFuncSetAttribute"),
])
def test_emulator_reports_misuse(which, match):
    with pytest.raises(ValueError, match=match):
        C.ops.cuda_selftest_bad(which)


@pytest.mark.skipif(not EMULATED, reason="only the emulator poisons shared memory")
def test_emulator_poisons_shared_memory():
    assert np.isnan(C.ops.cuda_selftest_bad("uninitialised_smem"))
    if "fiber" in C.cuda_device_name(0):
        # fibers run in order until a barrier: without one the neighbour's value is not there
        # yet and the read sees poison (with OS threads it is a race, which ThreadSanitizer
        # reports: see tests/test_cuda_sanitizers.py)
        assert np.isnan(C.ops.cuda_selftest_bad("racy"))


def test_mxfp4_dequantize_bit_exact():
    from gptoss.backends.numpy import mxfp4_dequantize
    for rows, nb in [(1, 1), (7, 3), (33, 5), (64, 90)]:
        rng = np.random.default_rng(rows + nb)
        blocks = rng.integers(0, 256, (rows, nb, 16), dtype=np.uint8)
        scales = rng.integers(100, 140, (rows, nb), dtype=np.uint8)
        got = C.ops.cuda_mxfp4_dequantize(blocks, scales)
        assert np.array_equal(got, f32_to_bf16(mxfp4_dequantize(blocks, scales)))
    with pytest.raises(ValueError, match="scales"):
        C.ops.cuda_mxfp4_dequantize(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))
