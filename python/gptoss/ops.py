"""Single kernels of the native engine, callable one by one (NumPy arrays in and out).

Each function takes NumPy arrays, or any array that exports DLPack on the CPU (a PyTorch CPU
tensor, say; it is viewed without a copy where the dtype and layout allow), and returns NumPy
arrays. Shapes:

    bf16_linear(x [m, K] f32, w [R, K] bf16 bits as uint16, bias [R] | None) -> [m, R]
    mxfp4_linear(x [m, K], blocks [R, K/32, 16] u8, scales [R, K/32] u8, bias, levels=2) -> [m, R]
    mxfp4_dequantize(blocks [..., nb, 16] u8, scales [..., nb] u8) -> f32 [..., nb * 32]
    moe(t [n, H], experts [n, k], weights [n, k], w1_blocks, w1_scales, w1_bias, w2_blocks,
        w2_scales, w2_bias, alpha=1.702, limit=7.0, levels=2) -> [n, H]
    attention(q [n, Hq, d], k [S, Hkv, d], v [S, Hkv, d], qpos [n], sinks [Hq], window=0) -> [n, Hq, d]
    rmsnorm(x [n, H], w [H], eps) -> [n, H];  rope(x [n, heads, d], cos [n, d/2], sin) -> rotated
    topk_softmax(logits [n, E], k=4) -> (experts [n, k] int32, weights [n, k])
    swiglu(u [m, 2I], alpha, limit) -> [m, I]

Which SIMD variant runs is chosen at run time; `force_simd("plain"|"avx2"|"avx512"|...)` pins one
(`simd_levels()` lists what this processor has).

The CUDA kernels, where the extension was built with CUDA (on a GPU, or emulated on the CPU with
GPTOSS_CUDA=EMULATE), are the `cuda_*` functions: host arrays in, copied to the device, the
kernel run, the result copied back (`cuda_names()` lists them; each has its shapes in its
docstring):

    cuda_bf16_linear / cuda_bf16_gemv / cuda_bf16_gemm, cuda_add_rmsnorm, cuda_embed,
    cuda_rope_kv_write, cuda_attention, cuda_topk_softmax, cuda_moe, cuda_sample,
    cuda_mxfp4_dequantize, and cuda_bench(name, n, E, ctx, iters) for device-resident timing.

`sample_reference(logits, temperature, top_k, top_p, seed, counter)` is the host sampler that
the CUDA sampler matches token for token.
"""
from __future__ import annotations

import functools

import numpy as np

from .backends import _native

_NAMES = ("bf16_linear", "mxfp4_linear", "mxfp4_dequantize", "moe", "attention", "rmsnorm",
          "rope", "topk_softmax", "swiglu")


def _module():
    C, why = _native()
    if C is None:
        raise ImportError(f"gptoss.ops needs the compiled extension: {why}")
    return C


def _as_numpy(a):
    if isinstance(a, np.ndarray) or a is None or np.isscalar(a):
        return a
    if hasattr(a, "__dlpack__"):
        try:
            return np.from_dlpack(a)
        except (TypeError, RuntimeError, BufferError) as e:
            raise TypeError(f"cannot view {type(a).__name__} as a CPU array: {e}") from None
    return np.asarray(a)


def _wrap(name):
    @functools.wraps(getattr(_module().ops, name))
    def call(*args, **kwargs):
        fn = getattr(_module().ops, name)
        return fn(*[_as_numpy(a) for a in args], **{k: _as_numpy(v) for k, v in kwargs.items()})
    return call


def cuda_names():
    """The CUDA kernels this build can call (empty without CUDA)."""
    C, _ = _native()
    if C is None:
        return ()
    return tuple(n for n in dir(C.ops) if n.startswith("cuda_") and "selftest" not in n)


def __getattr__(name):
    if name in _NAMES or name == "sample_reference" or (name.startswith("cuda_")
                                                         and name in cuda_names()):
        f = _wrap(name)
        globals()[name] = f
        return f
    if name in ("force_simd", "simd_levels", "read_bandwidth", "set_num_threads"):
        return getattr(_module(), name)
    raise AttributeError(f"module 'gptoss.ops' has no attribute {name!r}")


def __dir__():
    return sorted(_NAMES + ("force_simd", "simd_levels", "read_bandwidth", "set_num_threads",
                            "sample_reference", "cuda_names") + cuda_names())
