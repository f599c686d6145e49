"""CUDA kernels against the NumPy engine. Skipped where no GPU is usable (the normal case in CI,
which still compiles every .cu file for every default architecture)."""
import numpy as np
import pytest

from gptoss.backends.numpy import mxfp4_dequantize
from gptoss.safetensors_io import f32_to_bf16

C = pytest.importorskip("gptoss._C", reason="extension not built")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not C.build_info()["cuda_compiled"], reason="built without CUDA"),
    pytest.mark.skipif(C.cuda_device_count()[0] == 0, reason="no GPU here"),
]


@pytest.mark.parametrize("rows,nb", [(1, 1), (7, 3), (5760, 90), (2880, 90), (33, 5)])
def test_cuda_mxfp4_dequantize_bit_exact(rows, nb):
    rng = np.random.default_rng(rows + nb)
    blocks = rng.integers(0, 256, (rows, nb, 16), dtype=np.uint8)
    scales = rng.integers(100, 140, (rows, nb), dtype=np.uint8)
    got = C.ops.cuda_mxfp4_dequantize(blocks, scales)
    want = f32_to_bf16(mxfp4_dequantize(blocks, scales))     # exact in bf16
    assert np.array_equal(got, want)


def test_cuda_shape_errors():
    with pytest.raises(ValueError, match="scales"):
        C.ops.cuda_mxfp4_dequantize(np.zeros((2, 3, 16), np.uint8), np.zeros((2, 4), np.uint8))
