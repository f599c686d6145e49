"""Hollow checkpoints: random weights made in device memory for benchmarks (a 120b file would not
fit the GPU machine's disk). A hollow checkpoint (gptoss.testing, hollow=True) leaves the matrices
the CUDA backend binds as holes; the backend fills them on the device (csrc/cuda/fill.cu). Its
full twin (fill="hollow") writes the same bits on the host (gptoss.testing.hollow_fill), so the
CUDA backend on the hollow checkpoint must give bit-identical logits to the CUDA backend on the
twin, and the NumPy engine on the twin is the usual reference (test_cuda_engine's bound). Every
other engine refuses a hollow checkpoint, naming the file.
"""
import os

import numpy as np
import pytest

from gptoss import Weights
from gptoss.backends.numpy import NumpyEngine
from gptoss.testing import HOLLOW_ROLES, hollow_fill, write_random_checkpoint

from conftest import rel_err

C = pytest.importorskip("gptoss._C", reason="extension not built")
cuda_here = pytest.mark.skipif(
    not C.build_info()["cuda_backend"] or
    (not C.build_info()["cuda_emulated"] and C.cuda_device_count()[0] == 0),
    reason="no CUDA backend here")

from gptoss.backends.native import NativeEngine  # noqa: E402


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("hollow")
    kw = dict(preset="tiny", layout="hf", seed=3, vocab_size=4096)
    hollow = write_random_checkpoint(str(base / "hollow"), hollow=True, **kw)
    full = write_random_checkpoint(str(base / "full"), fill="hollow", **kw)
    return hollow, full


def test_hollow_file_is_sparse_and_marked(pair):
    hollow, full = pair
    f = os.path.join(hollow, "model.safetensors")
    st = os.stat(f)
    # the same tensors at the same sizes (the headers differ by the hollow mark)
    assert abs(st.st_size - os.stat(os.path.join(full, "model.safetensors")).st_size) < 256
    # the matrices are holes: far fewer blocks than the file's length
    assert st.st_blocks * 512 < st.st_size / 4, (st.st_blocks * 512, st.st_size)
    hw, fw = Weights(hollow), Weights(full)
    assert hw.hollow == f and fw.hollow is None
    # the small tensors are real and the same in both; the twin's matrices are the fill's
    cfg = fw.config
    for role in ("attn_norm", "q_b", "sinks", "w1_bias", "router_b"):
        assert np.array_equal(hw.raw(role, 1), fw.raw(role, 1))
        assert np.any(hw.raw(role, 1) != 0)
    src = fw._src
    for name in ("model.layers.0.mlp.experts.gate_up_proj_blocks",
                 "model.layers.2.mlp.experts.down_proj_scales", "model.embed_tokens.weight"):
        info = src.info(name)
        assert np.array_equal(src.get(name), hollow_fill(name, info.dtype, tuple(info.shape)))
    assert "w1_blocks" in HOLLOW_ROLES and cfg.num_layers == 4


def test_fill_magnitudes():
    """The fill keeps the random checkpoints' magnitudes: bf16 RMS 1/sqrt(K); codes uniform."""
    from gptoss.safetensors_io import bf16_to_f32
    w = bf16_to_f32(hollow_fill("x.weight", "BF16", (64, 2880)))
    assert abs(np.sqrt(np.mean(w ** 2)) * np.sqrt(2880) - 1) < 0.01
    codes = hollow_fill("b", "U8", (1000, 16))
    assert abs(codes.mean() - 127.5) < 2 and codes.min() == 0 and codes.max() == 255
    # fan-in 2880: E2M1 RMS 2.93 (uniform codes) * sqrt(2880) = 157, 2^-7 is nearest 1/157, so
    # scales 127 - 7 and one below, as the random checkpoints' experts have
    scales = hollow_fill("s", "U8", (1000, 90))
    assert set(np.unique(scales).tolist()) == {119, 120}


@cuda_here
def test_device_fill_equals_host_twin(pair):
    hollow, full = pair
    tokens = np.random.default_rng(4).integers(0, 4096, 27).tolist()
    a = NativeEngine(Weights(hollow), device="cuda")
    b = NativeEngine(Weights(full), device="cuda")
    pa, pb = a.prefill(tokens[:24]), b.prefill(tokens[:24])
    assert np.all(np.isfinite(pa)) and np.array_equal(pa, pb)
    for t in tokens[24:]:
        assert np.array_equal(a.decode(t), b.decode(t))
    # and the model they run is the one the NumPy engine runs on the twin
    ref = NumpyEngine(Weights(full))
    want = ref.prefill(tokens[:24])
    bound = 6 * 4 * 2.0 ** -9 + 2.0 ** -9
    assert rel_err(pa, want) < bound, rel_err(pa, want)


def test_hollow_refused_elsewhere(pair):
    hollow, _ = pair
    with pytest.raises(ValueError, match="hollow checkpoint.*only backend 'cuda'"):
        NumpyEngine(Weights(hollow))
    if C.build_info().get("cpu_engine", True):
        with pytest.raises(ValueError, match="only device 'cuda' makes random weights"):
            NativeEngine(Weights(hollow), device="cpu")
        with pytest.raises(ValueError, match="model.safetensors: a hollow checkpoint"):
            C.Engine(hollow, device="cpu")
    if C.build_info()["cuda_backend"]:
        with pytest.raises(ValueError, match="load it with random_device_weights"):
            C.Engine(hollow, device="cuda")
