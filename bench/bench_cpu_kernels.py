"""Each CPU kernel of gptoss._C at the real gpt-oss shapes (H = 2880, 64/8 heads of 64, 32 experts
of I = 2880), timed as the median of repeated runs, with achieved GB/s against this machine's read
bandwidth (measured here) or GFLOP/s for compute-bound shapes.

    python bench/bench_cpu_kernels.py [--repeats 9] [--simd avx512bf16] [--out FILE]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time, write_json  # noqa: E402

H, I, E, HQ, HKV, D = 2880, 2880, 32, 64, 8, 64


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--simd", default=None, help="pin a SIMD level (plain, avx2, avx512, ...)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from gptoss import _C
    if a.simd:
        _C.force_simd(a.simd)
    if a.threads:
        _C.set_num_threads(a.threads)
    info = _C.build_info()
    bw = _C.read_bandwidth(2.0, 7)
    rng = np.random.default_rng(0)
    rows = []

    def record(name, shape, seconds, nbytes=None, flops=None):
        r = {"kernel": name, "shape": shape, "median_s": seconds}
        line = f"{name:34s} {shape:34s} {seconds * 1e3:9.3f} ms"
        if nbytes:
            r["gb_s"] = nbytes / seconds / 1e9
            r["fraction_of_read_bw"] = r["gb_s"] / bw
            line += f"  {r['gb_s']:7.1f} GB/s ({100 * r['fraction_of_read_bw']:5.1f}% of {bw:.1f})"
        if flops:
            r["gflop_s"] = flops / seconds / 1e9
            line += f"  {r['gflop_s']:7.1f} GFLOP/s"
        rows.append(r)
        print(line, flush=True)

    bf16 = lambda shape: (rng.integers(0, 1 << 14, shape, dtype=np.uint16) | 0x3000).astype(np.uint16)
    # decode GEMV on matrices larger than the last-level cache: the unembedding, and the 24
    # layers' attention projections as one stream of distinct matrices
    U = bf16((201088, H))
    x1 = rng.standard_normal((1, H)).astype(np.float32)
    t, _ = median_time(lambda: _C.ops.bf16_linear(x1, U), a.repeats)
    record("bf16_linear (decode, unembedding)", "[1,2880] x [201088,2880]", t, U.nbytes)
    del U
    Q = [bf16((HQ * D, H)) for _ in range(24)]
    t, _ = median_time(lambda: [_C.ops.bf16_linear(x1, q) for q in Q], max(3, a.repeats // 3))
    record("bf16_linear (decode, 24 x q_proj)", "24 x [1,2880] x [4096,2880]", t,
           sum(q.nbytes for q in Q))
    x512 = rng.standard_normal((512, H)).astype(np.float32)
    t, _ = median_time(lambda: _C.ops.bf16_linear(x512, Q[0]), 3)
    record("bf16_linear (prefill 512, q_proj)", "[512,2880] x [4096,2880]", t,
           flops=2 * 512 * Q[0].size)
    # the same matrices with dense_weights="int8" (csrc/cpu/dense_q8.cpp)
    P8 = [_C.ops.q8_pack_r16(q) for q in Q]
    del Q
    t, _ = median_time(lambda: [_C.ops.q8_r16_linear(x1, p, HQ * D) for p in P8],
                       max(3, a.repeats // 3))
    record("q8_r16_linear (decode, 24 x q_proj)", "24 x [1,2880] x [4096,2880] int8", t,
           sum(p.nbytes for p in P8))
    t, _ = median_time(lambda: _C.ops.q8_r16_linear(x512, P8[0], HQ * D), 3)
    record("q8_r16_linear (prefill 512, q_proj)", "[512,2880] x [4096,2880] int8", t,
           flops=2 * 512 * HQ * D * H)
    del P8

    # MXFP4: the decode GEMV over all 32 experts of a layer (streamed), and the fused MoE
    B1 = rng.integers(0, 256, (E, 2 * I, H // 32, 16), dtype=np.uint8)
    S1 = (118 + rng.integers(0, 3, (E, 2 * I, H // 32))).astype(np.uint8)
    B2 = rng.integers(0, 256, (E, H, I // 32, 16), dtype=np.uint8)
    S2 = (118 + rng.integers(0, 3, (E, H, I // 32))).astype(np.uint8)
    b1 = np.zeros((E, 2 * I), np.float32)
    b2 = np.zeros((E, H), np.float32)
    x64 = rng.standard_normal((64, H)).astype(np.float32)
    for lv in (2, 1):
        t, _ = median_time(lambda: [_C.ops.mxfp4_linear(x1, B1[e], S1[e], levels=lv)
                                    for e in range(E)], max(3, a.repeats // 3))
        record(f"mxfp4_linear levels={lv} (decode)", "32 x [1,2880] x [5760,2880]", t,
               B1.nbytes + S1.nbytes)
        t, _ = median_time(lambda: [_C.ops.mxfp4_linear(x64, B1[e], S1[e], levels=lv)
                                    for e in range(4)], 3)
        record(f"mxfp4_linear levels={lv} (64 tokens)", "4 x [64,2880] x [5760,2880]", t,
               flops=4 * 2 * 64 * 2 * I * H)
    # the layout the engine repacks the experts into (mxfp4_r16.cpp): decode over the 32
    # experts, and one expert's product at the 64 tokens an expert sees in a 512-token prefill
    P1 = [_C.ops.mxfp4_pack_r16(B1[e], S1[e]) for e in range(E)]
    for lv in (2, 1):  # int16 activations (the default), int8 (activation_levels=1)
        t, _ = median_time(lambda: [_C.ops.mxfp4_r16_linear(x1, P1[e], 2 * I, levels=lv)
                                    for e in range(E)], max(3, a.repeats // 3))
        record(f"mxfp4_r16_linear levels={lv} (decode)", "32 x [1,2880] x [5760,2880]", t,
               sum(p.nbytes for p in P1))
        t, _ = median_time(lambda: [_C.ops.mxfp4_r16_linear(x64, P1[e], 2 * I, levels=lv)
                                    for e in range(4)], 3)
        record(f"mxfp4_r16_linear levels={lv} (64 tokens)", "4 x [64,2880] x [5760,2880]", t,
               flops=4 * 2 * 64 * 2 * I * H)
    # tokens per call: where the AMX-BF16 tiles (the amx level, 8 tokens or more: mxfp4_r16.cpp's
    # kAmxMinTokens) overtake the AVX-512 code, and the tiles' rate as tokens grow
    for m in (1, 2, 4, 6, 8, 16, 128):
        xm = rng.standard_normal((m, H)).astype(np.float32)
        t, _ = median_time(lambda: [_C.ops.mxfp4_r16_linear(xm, P1[e], 2 * I) for e in range(4)], 3)
        record(f"mxfp4_r16_linear ({m} tokens)", f"4 x [{m},2880] x [5760,2880]", t,
               flops=4 * 2 * m * 2 * I * H)
    del P1
    per_expert = B1[0].nbytes + S1[0].nbytes + B2[0].nbytes + S2[0].nbytes
    ex = [np.array([[4 * j, 4 * j + 1, 4 * j + 2, 4 * j + 3]], np.int32) for j in range(8)]
    w = np.full((1, 4), 0.25, np.float32)
    t, _ = median_time(lambda: [_C.ops.moe(x1, e, w, B1, S1, b1, B2, S2, b2) for e in ex],
                       max(3, a.repeats // 3))
    record("moe (decode, 4 of 32 experts)", "8 x [1,2880] -> 4 experts", t / 8,
           4 * per_expert)
    tp = rng.standard_normal((512, H)).astype(np.float32)
    exp = np.stack([rng.choice(E, 4, replace=False) for _ in range(512)]).astype(np.int32)
    wp = np.full((512, 4), 0.25, np.float32)
    t, _ = median_time(lambda: _C.ops.moe(tp, exp, wp, B1, S1, b1, B2, S2, b2), 3)
    record("moe (prefill 512 tokens)", "[512,2880], 4 of 32 experts", t,
           flops=512 * 4 * 2 * (2 * I * H + H * I))
    del B1, B2

    # attention: decode against a 128-slot window and a 4096-token context; prefill 512
    for S, win in ((128, 128), (4096, 0)):
        k = rng.standard_normal((S, HKV, D)).astype(np.float32)
        v = rng.standard_normal((S, HKV, D)).astype(np.float32)
        q = rng.standard_normal((1, HQ, D)).astype(np.float32)
        sinks = rng.standard_normal(HQ).astype(np.float32)
        t, _ = median_time(lambda: _C.ops.attention(q, k, v, np.array([S - 1]), sinks, win),
                           a.repeats)
        record(f"attention (decode, window={win or 'full'})", f"1 query, {S} keys", t,
               k.nbytes + v.nbytes)
    S = 512
    k = rng.standard_normal((S, HKV, D)).astype(np.float32)
    q = rng.standard_normal((S, HQ, D)).astype(np.float32)
    t, _ = median_time(lambda: _C.ops.attention(q, k, k, np.arange(S), sinks, 0), 3)
    record("attention (prefill 512, full)", "512 queries x 512 keys", t,
           flops=2 * 2 * HQ * D * S * S / 2)
    x = rng.standard_normal((512, H)).astype(np.float32)
    t, _ = median_time(lambda: _C.ops.rmsnorm(x, np.ones(H, np.float32)), a.repeats)
    record("rmsnorm", "[512,2880]", t, 2 * x.nbytes)
    g = rng.standard_normal((512, 128)).astype(np.float32)
    t, _ = median_time(lambda: _C.ops.topk_softmax(g, 4), a.repeats)
    record("topk_softmax (E=128)", "[512,128]", t, g.nbytes)

    out = a.out or os.path.join(os.path.dirname(__file__), "results",
                                f"cpu_kernels_{info['simd']}.json")
    write_json(out, {"simd": info["simd"], "threads": info["threads"],
                     "machine_read_gb_s": bw, "kernels": rows})
    print(f"read bandwidth {bw:.1f} GB/s; SIMD {info['simd']}, {info['threads']} threads; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
