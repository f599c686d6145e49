"""Writes the seed corpus of tests/fuzz/fuzz_checkpoint.cpp into tests/fuzz/corpus/ (committed;
rerun after changing this file: `PYTHONPATH=python python tests/fuzz/make_corpus.py`).

  ok-*.safetensors    whole files the loader must accept: written by gptoss.testing's own
                      random checkpoint writer (a micro config, both layouts, shards, hollow)
                      plus a few hand-made edge cases (no tensors, empty dimensions, every dtype)
  bad-*.safetensors   files it must reject, each broken in one way (MESSAGES below: what the
                      error must say; tests/test_fuzz_checkpoint.py holds the engine to it)
  cfg-*.json          config.json files of both layouts, seeds for the config reader
fuzz_driver checks the ok-/bad- verdicts before it starts mutating.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

# the smallest config with every structural feature: GQA, two layers (sliding and full), experts
MICRO = dict(num_layers=2, hidden_size=32, num_heads=2, num_kv_heads=1, head_dim=8,
             num_experts=2, experts_per_token=1, intermediate_size=32, vocab_size=8)

# bad seed -> a regular expression the engine's error message must match (besides the file name)
MESSAGES = {
    "bad-short.safetensors": r"truncated: 3 bytes, shorter than the 8-byte header length",
    "bad-empty.safetensors": r"truncated: 0 bytes, shorter than the 8-byte header length",
    "bad-prefix-huge.safetensors": r"header length 18446744073709551615 is implausibly large",
    "bad-prefix-past-end.safetensors": r"truncated: header says 4096 bytes of JSON but the file holds",
    "bad-prefix-cuts-json.safetensors": r"invalid JSON at byte 12: unterminated string",
    "bad-trailing.safetensors": r"invalid JSON at byte \d+: trailing characters",
    "bad-unterminated.safetensors": r"invalid JSON at byte \d+: unterminated string",
    "bad-deep.safetensors": r"invalid JSON at byte 64: nested too deeply",
    "bad-dup-key.safetensors": r"invalid JSON: duplicate key 'a'",
    "bad-dup-field.safetensors": r"invalid JSON: duplicate key 'data_offsets'",
    "bad-lone-surrogate.safetensors": r"invalid JSON at byte \d+: lone surrogate",
    "bad-low-surrogate.safetensors": r"invalid JSON at byte \d+: lone low surrogate",
    "bad-utf8.safetensors": r"invalid JSON at byte \d+: invalid UTF-8 in string",
    "bad-overlong-utf8.safetensors": r"invalid JSON at byte \d+: invalid UTF-8 in string",
    "bad-control-char.safetensors": r"invalid JSON at byte \d+: control character in string",
    "bad-leading-zero.safetensors": r"invalid JSON at byte \d+: bad number \(leading zero\)",
    "bad-number-range.safetensors": r"invalid JSON at byte \d+: number out of the range of a double",
    "bad-number-dot.safetensors": r"invalid JSON at byte \d+: bad number \(no digits after '.'\)",
    "bad-not-object.safetensors": r"header must be a JSON object",
    "bad-metadata.safetensors": r"__metadata__ must be an object",
    "bad-entry.safetensors": r"tensor 'a': entry must be an object",
    "bad-no-dtype.safetensors": r"tensor 'a': missing dtype",
    "bad-dtype.safetensors": r"tensor 'a': unknown dtype F8_E4M3",
    "bad-shape-float.safetensors": r"tensor 'a': bad shape: must be a list of non-negative integers",
    "bad-shape-negative.safetensors": r"tensor 'a': bad shape: must be a list of non-negative integers",
    "bad-shape-overflow.safetensors": r"tensor 'a': shape \[4294967296, 4294967296\]: the element count overflows",
    "bad-bytes-overflow.safetensors": r"tensor 'a': shape \[4611686018427387904\] of F32: the byte count overflows",
    "bad-offsets-huge.safetensors": r"tensor 'a': bad data_offsets: must be a list of two integers \(below 2\^63\)",
    "bad-offsets-negative.safetensors": r"tensor 'a': bad data_offsets \[-4, 0\]: negative",
    "bad-offsets-reversed.safetensors": r"tensor 'a': bad data_offsets \[4, 0\]: out of order",
    "bad-offsets-three.safetensors": r"tensor 'a': bad data_offsets: must be a list of two integers",
    "bad-span.safetensors": r"tensor 'a': data_offsets \[0, 6\] span 6 bytes but F32\[1\] needs 4",
    "bad-past-end.safetensors": r"tensor 'b': truncated file: tensor ends at byte \d+ but the file has \d+ bytes",
    "bad-overlap.safetensors": r"tensors 'a' and 'b' overlap in the file",
    "bad-hf-truncated.safetensors": r"truncated file: tensor ends at byte",
}


def header_file(header, data=b"", raw=None, pad=True):
    """A safetensors file: the length prefix, the JSON header (padded to 8 with spaces), data."""
    h = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def handmade():
    ok = {
        "ok-no-tensors.safetensors": header_file({}),
        "ok-metadata-only.safetensors": header_file({"__metadata__": {"format": "pt"}}),
        "ok-empty-dims.safetensors": header_file({"a": t("F32", [0, 5], 0, 0), "b": t("U8", [], 0, 1),
                                                  "c": t("BF16", [3, 0], 1, 1)}, b"\x07"),
        "ok-dtypes.safetensors": header_file(
            {d: t(d, [2], 16 * i, 16 * i + 2 * s) for i, (d, s) in enumerate(
                [("BF16", 2), ("F16", 2), ("F32", 4), ("F64", 8), ("U8", 1), ("I8", 1), ("I16", 2),
                 ("U16", 2), ("I32", 4), ("U32", 4), ("I64", 8), ("U64", 8), ("BOOL", 1)])},
            bytes(range(208))),
        "ok-escapes.safetensors": header_file(None, bytes(4), raw=(
            b'{"\\u00e9\\ud83d\\ude00\\n\\"\\\\/ \xc3\xa9\xf0\x9f\x98\x80":'
            b'{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":[1.5e3,-0.25,true,null]}}')),
    }
    one = lambda extra=None: {"a": {**t("F32", [1], 0, 4), **(extra or {})}}
    bad = {
        "bad-short.safetensors": b"\x08\x00\x00",
        "bad-empty.safetensors": b"",
        "bad-prefix-huge.safetensors": b"\xff" * 8 + b"{}",
        "bad-prefix-past-end.safetensors": struct.pack("<Q", 4096) + b'{"a":1}',
        "bad-prefix-cuts-json.safetensors": struct.pack("<Q", 12) + json.dumps(one()).encode() + bytes(4),
        "bad-trailing.safetensors": header_file(None, bytes(4), raw=json.dumps(one()).encode() + b"}"),
        "bad-unterminated.safetensors": header_file(None, raw=b'{"a', pad=False),
        "bad-deep.safetensors": header_file(None, raw=b"[" * 100 + b"]" * 100),
        "bad-dup-key.safetensors": header_file(None, bytes(8), raw=(
            b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')),
        "bad-dup-field.safetensors": header_file(None, bytes(8), raw=(
            b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"data_offsets":[4,8]}}')),
        "bad-lone-surrogate.safetensors": header_file(None, bytes(4), raw=(
            b'{"\\ud800x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')),
        "bad-low-surrogate.safetensors": header_file(None, bytes(4), raw=(
            b'{"\\udc00":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')),
        "bad-utf8.safetensors": header_file(None, bytes(4), raw=(
            b'{"a\xff":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')),
        "bad-overlong-utf8.safetensors": header_file(None, bytes(4), raw=(
            b'{"\xc0\xaf":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')),
        "bad-control-char.safetensors": header_file(None, bytes(4), raw=(
            b'{"a\tb":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')),
        "bad-leading-zero.safetensors": header_file(None, bytes(4), raw=(
            b'{"a":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}}')),
        "bad-number-range.safetensors": header_file(None, bytes(4), raw=(
            b'{"a":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}}')),
        "bad-number-dot.safetensors": header_file(None, bytes(4), raw=(
            b'{"a":{"dtype":"F32","shape":[1.],"data_offsets":[0,4]}}')),
        "bad-not-object.safetensors": header_file([1, 2]),
        "bad-metadata.safetensors": header_file({"__metadata__": ["pt"], **one()}, bytes(4)),
        "bad-entry.safetensors": header_file({"a": [0, 4]}, bytes(4)),
        "bad-no-dtype.safetensors": header_file({"a": {"shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
        "bad-dtype.safetensors": header_file({"a": t("F8_E4M3", [4], 0, 4)}, bytes(4)),
        "bad-shape-float.safetensors": header_file({"a": t("F32", [1.5], 0, 4)}, bytes(4)),
        "bad-shape-negative.safetensors": header_file({"a": t("F32", [-1], 0, 4)}, bytes(4)),
        # 2^32 * 2^32 elements wrap to 0 in 64 bits: the span [0, 0] "fits"
        "bad-shape-overflow.safetensors": header_file({"a": t("F32", [1 << 32, 1 << 32], 0, 0)}),
        # 2^62 elements of 4 bytes wrap to 0 bytes
        "bad-bytes-overflow.safetensors": header_file({"a": t("F32", [1 << 62], 0, 0)}),
        "bad-offsets-huge.safetensors": header_file({"a": t("F32", [1], 0, 1 << 64)}, bytes(4)),
        "bad-offsets-negative.safetensors": header_file({"a": t("F32", [1], -4, 0)}, bytes(4)),
        "bad-offsets-reversed.safetensors": header_file({"a": t("F32", [1], 4, 0)}, bytes(4)),
        "bad-offsets-three.safetensors": header_file({"a": {"dtype": "F32", "shape": [1],
                                                            "data_offsets": [0, 4, 8]}}, bytes(8)),
        "bad-span.safetensors": header_file({"a": t("F32", [1], 0, 6)}, bytes(6)),
        "bad-past-end.safetensors": header_file({"a": t("F32", [1], 0, 4), "b": t("F32", [2], 4, 12)},
                                                bytes(11)),
        "bad-overlap.safetensors": header_file({"a": t("F32", [2], 0, 8), "b": t("F32", [2], 4, 12)},
                                               bytes(12)),
    }
    return ok, bad


def generated(tmp):
    """Files written by gptoss.testing.write_random_checkpoint (the project's own writer)."""
    from gptoss.testing import write_random_checkpoint
    out = {}
    hf = write_random_checkpoint(os.path.join(tmp, "hf"), "tiny", layout="hf", seed=5, **MICRO)
    orig = write_random_checkpoint(os.path.join(tmp, "orig"), "tiny", layout="original", seed=5,
                                   **MICRO)
    hol = write_random_checkpoint(os.path.join(tmp, "hollow"), "tiny", layout="hf", seed=5,
                                  hollow=True, **MICRO)
    sh = write_random_checkpoint(os.path.join(tmp, "shards"), "tiny", layout="hf", seed=5,
                                 max_shard_bytes=2048, **MICRO)
    read = lambda p: open(p, "rb").read()
    out["ok-hf.safetensors"] = read(os.path.join(hf, "model.safetensors"))
    out["ok-original.safetensors"] = read(os.path.join(orig, "model.safetensors"))
    out["ok-hollow.safetensors"] = read(os.path.join(hol, "model.safetensors"))
    shards = sorted(glob.glob(os.path.join(sh, "model-*.safetensors")))
    out["ok-shard-first.safetensors"] = read(shards[0])
    out["ok-shard-last.safetensors"] = read(shards[-1])
    # the real header with the data cut short: the last tensors lie past the end
    whole = out["ok-hf.safetensors"]
    out["bad-hf-truncated.safetensors"] = whole[:len(whole) - 100]
    out["cfg-hf.json"] = read(os.path.join(hf, "config.json"))
    out["cfg-original.json"] = read(os.path.join(orig, "config.json"))
    return out


def main():
    ok, bad = handmade()
    tmp = tempfile.mkdtemp()
    try:
        files = {**ok, **bad, **generated(tmp)}
    finally:
        shutil.rmtree(tmp)
    missing = {n for n in files if n.startswith("bad-")} ^ set(MESSAGES)
    assert not missing, f"bad seeds and MESSAGES differ: {sorted(missing)}"
    if os.path.isdir(CORPUS):
        shutil.rmtree(CORPUS)
    os.makedirs(CORPUS)
    for name, data in sorted(files.items()):
        with open(os.path.join(CORPUS, name), "wb") as f:
            f.write(data)
    total = sum(len(d) for d in files.values())
    print(f"{len(files)} seeds, {total} bytes in {CORPUS}")


if __name__ == "__main__":
    sys.exit(main())
