"""Which engines this installation can run, and why the others cannot.

numpy: always (the specification and the fallback). cpu: the C++ engine in the compiled extension
`gptoss._C`. cuda: the same engine with the CUDA kernels, where the extension was compiled with
CUDA and a GPU is present, or compiled with GPTOSS_CUDA=EMULATE: then every CUDA kernel runs on
the CPU under our emulation of the CUDA execution model, for testing (slow), and `auto` never
picks it.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

ORDER = ("cuda", "cpu", "numpy")


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    name: str
    available: bool
    reason: str

    def __str__(self):
        return f"{self.name:6s} {'available' if self.available else 'unavailable'}: {self.reason}"


def _native() -> Tuple[Optional[object], str]:
    try:
        from .. import _C  # type: ignore[attr-defined]
    except ImportError as e:
        import glob
        import os
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if not glob.glob(os.path.join(here, "_C.*")):
            return None, ("this installation has no compiled extension (installed with "
                          "GPTOSS_NATIVE=OFF, or from a source tree that was not built)")
        return None, f"the compiled extension gptoss._C could not be loaded ({e})"
    return _C, ""


def backends() -> List[BackendInfo]:
    """Every backend, fastest first, each with whether it is available and why (not)."""
    out = []
    C, why = _native()
    if C is None:
        out.append(BackendInfo("cuda", False, why))
        out.append(BackendInfo("cpu", False, why))
    else:
        info = C.build_info()
        if not info["cuda_compiled"]:
            out.append(BackendInfo("cuda", False, "gptoss._C was built without CUDA "
                                   "(no nvcc at build time, or GPTOSS_CUDA=OFF)"))
        elif not info.get("cuda_backend"):
            out.append(BackendInfo("cuda", False, "gptoss._C has the CUDA kernels but not the "
                                   "CUDA engine backend (built with GPTOSS_CUDA_BACKEND=OFF)"))
        elif info["cuda_emulated"]:
            out.append(BackendInfo("cuda", True, "EMULATED: the CUDA kernels run on the CPU under "
                                   "gptoss's emulation of the CUDA execution model "
                                   "(GPTOSS_CUDA=EMULATE build), for testing only and very "
                                   "slow; backend='auto' never picks it"))
        else:
            n, err = C.cuda_device_count()
            if n <= 0:
                out.append(BackendInfo("cuda", False, f"built with CUDA, but no GPU is usable "
                                       f"here ({err or 'no devices'})"))
            else:
                out.append(BackendInfo("cuda", True, f"{n} GPU(s): {C.cuda_device_name(0)}"))
        out.append(BackendInfo("cpu", True, f"C++ engine, SIMD: {info['simd']}, "
                               f"{info['threads']} threads"))
    out.append(BackendInfo("numpy", True, "pure NumPy float32 reference engine"))
    return out


def make_engine(weights, backend: str = "auto", max_context: Optional[int] = None,
                **native_options):
    """(engine, note) for `backend`; `auto` takes the fastest available and says why.

    native_options (threads, activation_levels, ...) go to the C++ engine and are ignored by
    numpy, except kv_dtype and dense_weights, which every engine takes (CUDA refuses "int8").
    """
    infos = {b.name: b for b in backends()}
    if backend != "auto":
        if backend not in infos:
            raise ValueError(f"backend={backend!r}: must be 'auto' or one of {', '.join(ORDER)}")
        if not infos[backend].available:
            raise RuntimeError(f"backend {backend!r} is not available: {infos[backend].reason}")
        return _build(backend, weights, max_context, native_options), f"{backend} (asked for)"
    skipped = []
    for name in ORDER:
        b = infos[name]
        if name == "cuda" and b.available and b.reason.startswith("EMULATED"):
            skipped.append("cuda: emulated (ask for backend='cuda' explicitly to test it)")
            continue
        if not b.available:
            skipped.append(f"{name}: {b.reason}")
            continue
        try:
            eng = _build(name, weights, max_context, native_options)
        except (ValueError, RuntimeError) as e:
            skipped.append(f"{name}: {e}")
            continue
        note = name + (" (not " + "; not ".join(skipped) + ")" if skipped else "")
        return eng, note
    raise RuntimeError("no backend could run this model: " + "; ".join(skipped))


def _build(name: str, weights, max_context, native_options):
    if name == "numpy":
        if native_options.get("batch_invariant"):
            raise ValueError("batch_invariant=True: the numpy backend does not promise bit-identical "
                             "results across batch shapes (its matrix products are NumPy's); use "
                             "backend 'cpu' (always batch-invariant) or 'cuda'")
        from .numpy import NumpyEngine
        return NumpyEngine(weights, max_context=max_context,
                           kv_dtype=native_options.get("kv_dtype") or "auto",
                           dense_weights=native_options.get("dense_weights") or "bf16")
    from .native import NativeEngine
    opts = {k: v for k, v in native_options.items() if v is not None}
    return NativeEngine(weights, device=name, max_context=max_context, **opts)
