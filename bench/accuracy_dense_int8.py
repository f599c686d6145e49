"""What dense_weights="int8" costs in accuracy, on one checkpoint:

    python bench/accuracy_dense_int8.py --model random:20b [--prompt 64] [--numpy-tokens 16]

- the relative logit error ||a - b|| / ||b|| of the C++ CPU engine with int8 dense weights against
  the NumPy engine (bf16, the reference) and against the NumPy engine's int8 spec, over the first
  --numpy-tokens prompt positions (the NumPy engine is slow on 20b), and the C++ bf16 engine's own
  error against the NumPy reference for scale;
- greedy agreement: over a --prompt token prompt, teacher-forced, the fraction of positions where
  the int8 engine's argmax equals the bf16 engine's (both C++), and the relative logit error
  between them over all positions; and for scale the same two numbers for activation_levels=1
  (int8 activations for the experts, an error of the same size per product) against the default.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_json  # noqa: E402


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="random:20b")
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--numpy-tokens", type=int, default=16)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    from gptoss import Model
    from gptoss.backends.numpy import NumpyEngine
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 199998, a.prompt).tolist()
    bf = Model.from_pretrained(a.model, backend="cpu", progress=True, prefix_cache_gb=0)
    i8 = Model.from_pretrained(a.model, backend="cpu", prefix_cache_gb=0, dense_weights="int8")
    lb = bf.engine.prefill(toks, all_logits=True)
    li = i8.engine.prefill(toks, all_logits=True)
    del i8
    l1 = Model.from_pretrained(a.model, backend="cpu", prefix_cache_gb=0,
                               activation_levels=1).engine.prefill(toks, all_logits=True)
    res = {"model": a.model, "prompt": a.prompt,
           "int8_vs_bf16_cpp_rel_err": rel(li, lb),
           "greedy_agreement_teacher_forced": float((li.argmax(-1) == lb.argmax(-1)).mean()),
           "for_scale_activation_levels_1_vs_2_rel_err": rel(l1, lb),
           "for_scale_activation_levels_1_greedy_agreement": float((l1.argmax(-1) == lb.argmax(-1)).mean())}
    if a.numpy_tokens:
        n = a.numpy_tokens
        ref = NumpyEngine(bf.weights).prefill(toks[:n])
        ref8 = NumpyEngine(bf.weights, dense_weights="int8").prefill(toks[:n])
        res.update({"numpy_tokens": n,
                    "int8_cpp_vs_numpy_bf16": rel(li[:n], ref),
                    "int8_cpp_vs_numpy_int8_spec": rel(li[:n], ref8),
                    "bf16_cpp_vs_numpy_bf16": rel(lb[:n], ref),
                    "numpy_int8_vs_numpy_bf16": rel(ref8, ref)})
    print(json.dumps(res, indent=1))
    out = a.out or os.path.join(os.path.dirname(__file__), "results",
                                f"accuracy_dense_int8_{a.model.replace(':', '_')}.json")
    write_json(out, res)


if __name__ == "__main__":
    main()
