"""Each CUDA kernel family at the real shapes of gpt-oss, device-resident (gptoss._C.ops.cuda_bench),
against the device's measured copy bandwidth and, for the compute-bound cases, its FLOP rate:

    python bench/bench_cuda_kernels.py [--iters 20] [--out bench/results/cuda_kernels.json]

Medians of `iters` timed launches (CUDA events) after one warm-up. Meant for a GPU; under the
emulation (GPTOSS_CUDA=EMULATE) these shapes take hours: use the tests there instead.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json  # noqa: E402

CASES = [
    ("gemv qkv [1x2880]x[5120x2880]", dict(name="gemv", n=1, E=5120)),
    ("gemv out [1x4096->2880] (as 2880 rows of 2880)", dict(name="gemv", n=1, E=2880)),
    ("gemv unembedding [1x2880]x[201088x2880]", dict(name="gemv", n=1, E=201088)),
    ("gemv qkv, 8 tokens", dict(name="gemv", n=8, E=5120)),
    ("gemm qkv, 2048 tokens", dict(name="gemm", n=2048, E=5120)),
    ("moe decode, 4 of 32 experts", dict(name="moe", n=1, E=32)),
    ("moe decode, 4 of 128 experts", dict(name="moe", n=1, E=128)),
    ("moe prefill, 2048 tokens, 32 experts", dict(name="moe", n=2048, E=32)),
    ("attention decode, 4096 keys", dict(name="attention", n=1, ctx=4096)),
    ("attention decode, 32768 keys", dict(name="attention", n=1, ctx=32768)),
    ("attention prefill, 2048 tokens", dict(name="attention", n=2048, ctx=2048)),
    ("sample greedy", dict(name="sample", n=1, E=0)),
    ("sample top-p 0.9", dict(name="sample", n=1, E=1)),
]


def run(iters=20):
    from gptoss import _C
    if not _C.build_info()["cuda_compiled"]:
        raise SystemExit("gptoss._C was built without CUDA")
    out = {"device": _C.cuda_device_name(0), "emulated": _C.build_info()["cuda_emulated"]}
    copy = _C.ops.cuda_bench("copy", iters=max(3, iters // 2))
    out["copy (read + write)"] = copy
    for label, kw in CASES:
        try:
            r = _C.ops.cuda_bench(iters=iters, **kw)
            r["of_copy_bw"] = r["gb_s"] / copy["gb_s"]
            out[label] = r
        except Exception as e:  # noqa: BLE001 - reported, the others still run
            out[label] = {"error": str(e)[:500]}
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                 "cuda_kernels.json"))
    a = p.parse_args()
    res = run(a.iters)
    write_json(a.out, res)
    print(f"device: {res['device']}")
    for k, v in res.items():
        if isinstance(v, dict) and "ms" in v:
            print(f"  {k:48s} {v['ms']:9.4f} ms {v['gb_s']:8.0f} GB/s "
                  f"({100 * v.get('of_copy_bw', 1):5.1f}% of copy) {v['tflop_s']:7.1f} TFLOP/s")
        elif isinstance(v, dict):
            print(f"  {k:48s} {v.get('error')}")
    print(json.dumps({"wrote": a.out}))


if __name__ == "__main__":
    main()
