"""End-to-end prefill and decode speed of one engine on a random checkpoint, with peak memory.

    python bench/bench_engine.py --model random:20b --backend numpy --prompt 64 --decode 8

Decode speed is also given as achieved bytes/s against the floor in bench/common.py (bytes a step must read)
(bytes a decode step must read), measured against this machine's own read bandwidth.
"""
import argparse
import json
import os
import re
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import FLOOR_BYTES_PER_TOKEN, memory, write_json  # noqa: E402


def read_bandwidth(gb=2.0, repeats=5):
    """This machine's read bandwidth (GB/s): every core streams its own slice of a large array
    (the native probe when the extension is built: the best of `repeats` passes over a huge-page
    buffer; else NumPy's threaded dot products, the best pass)."""
    try:
        from gptoss import _C
        return _C.read_bandwidth(gb, repeats)
    except ImportError:
        pass
    from concurrent.futures import ThreadPoolExecutor
    n = os.cpu_count() or 1
    a = np.ones(int(gb * 1e9 / 4), dtype=np.float32)
    parts = np.array_split(a, n * 4)
    rates = []
    with ThreadPoolExecutor(n) as ex:
        for _ in range(repeats + 1):
            t = time.perf_counter()
            list(ex.map(lambda p: np.dot(p, p), parts))
            rates.append(a.nbytes / (time.perf_counter() - t) / 1e9)
    del a, parts
    return max(rates[1:])


def touch_weights(model):
    """Reads every page the engine will use once, so the timings measure the engine, not the
    disk. Where the CPU engine maps its experts from the weight cache (repacked), that file and the
    checkpoint's other tensors: reading the checkpoint's own experts too would push the cache out
    of the page cache on a machine whose memory holds one copy of the weights but not two."""
    if model.weights.hollow:   # made in device memory: nothing to read
        return
    note = getattr(model.engine, "weights_note", "") or ""
    cache = re.search(r"mapped (/\S+\.bin)", note)
    for f in model.weights.files:
        with open(f, "rb") as fh:
            if not cache:
                while fh.read(1 << 26):
                    pass
                continue
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            for name, info in header.items():
                if name == "__metadata__" or info["dtype"] == "U8":   # U8: the MXFP4 experts
                    continue
                a, b = info["data_offsets"]
                fh.seek(8 + n + a)
                left = b - a
                while left > 0:
                    left -= len(fh.read(min(left, 1 << 26)))
    if cache:
        with open(cache.group(1), "rb") as fh:
            while fh.read(1 << 26):
                pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:20b")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens for the prefill")
    p.add_argument("--decode", type=int, default=8, help="decode steps to time")
    p.add_argument("--repeats", type=int, default=1, help="prefill repeats (median)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--activation-levels", type=int, default=None,
                   help="C++ engine: 2 (float32-class, default) or 1 (int8 activations "
                        "for the experts; bf16 for the dense products at avx512bf16)")
    p.add_argument("--batch", type=int, default=0,
                   help="C++ engine: also time decode steps of this many sequences at once")
    p.add_argument("--simd", default=None,
                   help="pin the CPU kernels' SIMD level (plain, avx2, avx2vnni, avx512bw, avx512, avx512bf16, amx)")
    p.add_argument("--repack", default=None, choices=("auto", "memory", "off"),
                   help="C++ CPU engine: the AVX2 layout of the experts (auto: repacked once into "
                        "the weight cache and mapped; memory; off: the checkpoint's layout)")
    p.add_argument("--batch-invariant", action="store_const", const=True, default=None,
                   help="CUDA backend: the per-row (batch-invariant) kernels for any batch")
    p.add_argument("--kv-dtype", default=None, choices=("auto", "float32", "bf16"),
                   help="how the KV cache holds keys and values (auto: float32 on the CPU, bf16 "
                        "on CUDA)")
    p.add_argument("--dense-weights", default=None, choices=("bf16", "int8"),
                   help="C++ CPU engine: the dense matrices as bf16 (default) or int8 per 32-block "
                        "(the floor then counts their int8 bytes: 1.125 per weight)")
    p.add_argument("--out", default=None)
    a = p.parse_args()

    import gptoss
    from gptoss import Model
    t0 = time.perf_counter()
    if a.simd:
        from gptoss import _C
        _C.force_simd(a.simd)
    # the prefill repeats feed the same prompt: the prefix cache would serve it, so it is off
    model = Model.from_pretrained(a.model, backend=a.backend, progress=True, threads=a.threads,
                                  activation_levels=a.activation_levels,
                                  prefix_cache_gb=None if a.backend == "numpy" else 0,
                                  repack=a.repack, batch_invariant=a.batch_invariant,
                                  kv_dtype=a.kv_dtype, dense_weights=a.dense_weights)
    model_load_s = time.perf_counter() - t0
    # the first pass over a freshly written checkpoint may come from disk: touch every page once
    # so the timings measure the engine, not the disk (a hollow checkpoint's matrices are made in
    # device memory: nothing to touch)
    touch_weights(model)
    load_s = time.perf_counter() - t0
    preset = a.model.split(":")[1] if a.model.startswith("random:") else None
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 199998, a.prompt).tolist()

    # warm-up: one short prefill + decode touches (and, for numpy, converts) the dense weights
    model.engine.reset()
    model.engine.prefill(prompt[:4], all_logits=False)
    model.engine.decode(1)
    prefill_times = []
    for _ in range(a.repeats):
        model.engine.reset()
        t = time.perf_counter()
        logits = model.engine.prefill(prompt, all_logits=False)
        prefill_times.append(time.perf_counter() - t)
    tok = int(np.argmax(logits))
    decode_times = []
    # native engines: greedy sampling on the engine's device, only the token id comes back (the
    # generation path); numpy: logits and argmax
    greedy = gptoss.Sampler(temperature=0)
    on_device = hasattr(model.engine, "decode_sample")
    for _ in range(a.decode):
        t = time.perf_counter()
        if on_device:
            tok = model.engine.decode_sample(tok, greedy)
        else:
            tok = int(np.argmax(model.engine.decode(tok)))
        decode_times.append(time.perf_counter() - t)
    batch = None
    if a.batch > 1 and model.backend != "numpy":
        e = model.engine
        seqs = [0] + [e.add_sequence() for _ in range(a.batch - 1)]
        for s_ in seqs[1:]:
            e.prefill_sequence(s_, rng.integers(0, 199998, 16).tolist())
        toks = [tok] * a.batch
        times = []
        for _ in range(max(3, a.decode // 2)):
            t = time.perf_counter()
            out = e.decode_batch(seqs, toks)
            times.append(time.perf_counter() - t)
            toks = [int(np.argmax(r)) for r in out]
        bt = statistics.median(times)
        batch = {"sequences": a.batch, "step_s_median": bt, "tok_s": a.batch / bt}
    pre = statistics.median(prefill_times)
    dec = statistics.median(decode_times)
    mem = memory()
    if model.backend == "cuda":
        # the GPU's device-to-device copy rate, measured now (bytes read + written per second)
        bw = gptoss._C.ops.cuda_bench("copy", iters=10)["gb_s"]
    else:
        bw = read_bandwidth()
    res = {
        "model": a.model, "backend": model.backend, "backend_note": model.backend_note,
        "activation_levels": a.activation_levels, "load_s": load_s, "model_load_s": model_load_s,
        "repack": a.repack, "batch_invariant": bool(a.batch_invariant), "prompt_tokens": a.prompt,
        "prefill_s_median": pre, "prefill_tok_s": a.prompt / pre,
        "decode_steps": a.decode, "decode_s_median": dec, "decode_tok_s": 1.0 / dec,
        "decode_times": decode_times, "batched_decode": batch, "memory": mem,
        "machine_read_gb_s": bw,
        "simd": (a.simd or gptoss._C.build_info()["simd_best"]) if model.backend == "cpu" else None,
    }
    # the KV bytes a decode step reads at the decode steps' middle position: every visible
    # position's keys and values in every layer (full layers: all, window layers: the window)
    cfg = model.config
    kv_bf16 = a.kv_dtype == "bf16" or (model.backend == "cuda" and a.kv_dtype != "float32")
    per_pos = 2 * cfg.num_kv_heads * cfg.head_dim * (2 if kv_bf16 else 4)
    mid = a.prompt + a.decode // 2
    kv_bytes = sum(per_pos * (min(mid, cfg.window_of(l)) if cfg.window_of(l) else mid)
                   for l in range(cfg.num_layers))
    res.update({"kv_dtype": "bf16" if kv_bf16 else "float32", "kv_bytes_per_position_layer": per_pos,
                "kv_bytes_per_decode_step": kv_bytes})
    if preset in FLOOR_BYTES_PER_TOKEN:
        floor = FLOOR_BYTES_PER_TOKEN[preset]
        if a.dense_weights == "int8":
            # QKV, output, router and unembedding at 1 byte + a float32 scale per 32 instead of 2
            H = cfg.hidden_size
            dense = cfg.num_layers * (H * (cfg.q_width + 2 * cfg.num_kv_heads * cfg.head_dim)
                                      + cfg.q_width * H + cfg.num_experts * H) + cfg.vocab_size * H
            res["floor_bytes_per_token_bf16_dense"] = floor
            floor = floor - 2 * dense + 1.125 * dense
        res["floor_bytes_per_token"] = floor
        res["floor_tok_s_this_machine"] = bw * 1e9 / floor
        res["fraction_of_floor"] = (1.0 / dec) / res["floor_tok_s_this_machine"]
        # the same with the KV cache's bytes added (what a long context's steps must also read)
        res["floor_with_kv_tok_s_this_machine"] = bw * 1e9 / (floor + kv_bytes)
        res["fraction_of_floor_with_kv"] = (1.0 / dec) / res["floor_with_kv_tok_s_this_machine"]
    out = a.out or os.path.join(os.path.dirname(__file__), "results",
                                f"engine_{model.backend}_{(preset or 'ckpt')}"
                                f"{'_lv%d' % a.activation_levels if a.activation_levels else ''}"
                                f"{'_' + a.simd if a.simd else ''}"
                                f"{'_repack-' + a.repack if a.repack else ''}"
                                f"{'_kv-' + a.kv_dtype if a.kv_dtype else ''}"
                                f"{'_dense-' + a.dense_weights if a.dense_weights else ''}.json")
    write_json(out, res)
    if res["simd"]:
        print(f"SIMD level: {res['simd']}")
    print(f"weights: {model.backend_note}")
    print(f"{a.model} on {model.backend}: model load {model_load_s:.1f} s (then pages touched: "
          f"{load_s:.1f} s), prefill {a.prompt} tokens "
          f"{a.prompt / pre:.2f} tok/s, decode {1 / dec:.3f} tok/s (median of {a.decode})")
    if batch:
        print(f"batched decode of {batch['sequences']} sequences: {batch['tok_s']:.2f} tok/s in all "
              f"({batch['step_s_median'] * 1e3:.0f} ms a step)")
    print(f"peak RSS {mem['peak_rss_gb']:.2f} GB (anon {mem.get('RssAnon', float('nan')):.2f} GB "
          f"now, file-backed {mem.get('RssFile', float('nan')):.2f} GB now)")
    if "fraction_of_floor" in res:
        if "floor_bytes_per_token_bf16_dense" in res:
            print(f"dense weights int8: the floor counts {res['floor_bytes_per_token'] / 1e9:.2f} GB "
                  f"a token (bf16: {res['floor_bytes_per_token_bf16_dense'] / 1e9:.2f} GB)")
        print(f"floor on this machine ({bw:.1f} GB/s read): "
              f"{res['floor_tok_s_this_machine']:.2f} tok/s; achieved "
              f"{100 * res['fraction_of_floor']:.1f}% of it")
        print(f"KV cache ({res['kv_dtype']}): {kv_bytes / 1e9:.3f} GB read a decode step at "
              f"position {mid}; floor with it {res['floor_with_kv_tok_s_this_machine']:.2f} tok/s, "
              f"achieved {100 * res['fraction_of_floor_with_kv']:.1f}%")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
