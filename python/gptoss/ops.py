"""Single kernels of the native engine, callable one by one (NumPy arrays in and out).

Each function takes NumPy arrays, or any array that exports DLPack on the CPU (a PyTorch CPU
tensor, say; it is viewed without a copy where the dtype and layout allow), and returns NumPy
arrays. Shapes:

    bf16_linear(x [m, K] f32, w [R, K] bf16 bits as uint16, bias [R] | None) -> [m, R]
    mxfp4_linear(x [m, K], blocks [R, K/32, 16] u8, scales [R, K/32] u8, bias, levels=2) -> [m, R]
    mxfp4_pack_r16(blocks [R, K/32, 16], scales [R, K/32]) -> u8 [ceil(R/16), K/32, 272], the
        repacked layout of the SIMD levels (16 rows of each 32-block together);
        mxfp4_r16_linear(x, packed, rows, bias, levels=2) -> [m, rows] computes with it on int16
        activations (levels=1: int8)
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
GPTOSS_CUDA=EMULATE), are the `cuda_*` functions (`cuda_names()` lists them; each has its shapes
in its docstring). Each array argument is either a host array (NumPy, or CPU DLPack), copied to
the device for the call with the results copied back as NumPy arrays, or a device array: a
`DeviceArray` (made by `to_device(array)` or returned by an earlier call) or any CUDA array that
exports DLPack (a torch or CuPy tensor), used in place with no copy. Where any argument is a
device array, the results are `DeviceArray`s (`numpy()` copies one back; `torch.from_dlpack` and
`cupy.from_dlpack` view it; under emulation `numpy.from_dlpack` does), and the functions that
update an argument (`cuda_rope_kv_write`'s qkv and caches, `cuda_add_rmsnorm`'s x) update a
device argument in place, as the engine does; a host argument is never modified:

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

_NAMES = ("bf16_linear", "mxfp4_linear", "mxfp4_pack_r16", "mxfp4_r16_linear", "mxfp4_dequantize", "moe", "attention", "rmsnorm",
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


def _on_device(a):
    """A device array (ours, or a CUDA DLPack exporter) that the cuda_* kernels take in place."""
    if type(a).__name__ == "DeviceArray":
        return True
    dev = getattr(a, "__dlpack_device__", None)
    if dev is None or isinstance(a, np.ndarray):
        return False
    try:
        return dev()[0] != 1  # 1: kDLCPU
    except Exception:
        return False


def _wrap(name):
    cuda = name.startswith("cuda_")

    def arg(a):
        return a if cuda and _on_device(a) else _as_numpy(a)

    @functools.wraps(getattr(_module().ops, name))
    def call(*args, **kwargs):
        fn = getattr(_module().ops, name)
        return fn(*[arg(a) for a in args], **{k: arg(v) for k, v in kwargs.items()})
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
    if name in ("to_device", "DeviceArray"):
        ops = _module().ops
        if not hasattr(ops, name):
            raise AttributeError(f"gptoss.ops.{name} needs an extension built with CUDA "
                                 "(GPTOSS_CUDA=ON, or EMULATE for the CPU emulation)")
        return getattr(ops, name)
    raise AttributeError(f"module 'gptoss.ops' has no attribute {name!r}")


def __dir__():
    return sorted(_NAMES + ("force_simd", "simd_levels", "read_bandwidth", "set_num_threads",
                            "sample_reference", "cuda_names", "to_device", "DeviceArray")
                  + cuda_names())
