"""The compiled extension: what it reports, and its kernels against the NumPy engine."""
import numpy as np
import pytest

import gptoss
from gptoss.backends.numpy import mxfp4_dequantize

C = pytest.importorskip("gptoss._C", reason="extension not built (GPTOSS_NATIVE=OFF install)")


def test_backends_report_reasons():
    infos = {b.name: b for b in gptoss.backends()}
    assert set(infos) == {"cuda", "cpu", "numpy"}
    assert infos["numpy"].available
    for b in infos.values():
        assert b.reason
    info = C.build_info()
    if not info["cuda_compiled"]:
        assert not infos["cuda"].available and "without CUDA" in infos["cuda"].reason


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (7, 5), (2, 3, 90)])
def test_native_mxfp4_dequantize_bit_exact(shape):
    rng = np.random.default_rng(sum(shape))
    blocks = rng.integers(0, 256, shape + (16,), dtype=np.uint8)
    scales = rng.integers(1, 250, shape, dtype=np.uint8)
    got = C.ops.mxfp4_dequantize(blocks, scales)
    want = mxfp4_dequantize(blocks, scales)
    assert got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_native_mxfp4_dequantize_checks_shapes():
    with pytest.raises(ValueError, match="16"):
        C.ops.mxfp4_dequantize(np.zeros((2, 3, 8), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        C.ops.mxfp4_dequantize(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        C.ops.mxfp4_dequantize(np.zeros((2, 3, 16), np.float32), np.zeros((2, 3), np.uint8))
