"""Random checkpoints at any size, in either layout, written as a stream with bounded memory.

Values are drawn per role, layer and chunk from seeded generators, so the same seed gives the
same weights whatever the layout or sharding (the two layouts of one seed give identical logits).
Magnitudes keep activations in a realistic range: unit-RMS embeddings, projections scaled by
1/sqrt(fan_in), MXFP4 scales chosen so the decoded experts have RMS about 1/sqrt(fan_in), and
router weights that spread tokens over all experts. The text such a model writes is meaningless.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .checkpoint import GLOBAL_ROLES, LAYER_ROLES, MXFP4_ROLES, expected_shapes, tensor_name
from .config import Config, write_config
from .safetensors_io import SafetensorsWriter, f32_to_bf16

PRESETS: Dict[str, Dict] = {
    # A few layers and small widths: fast in tests, every structural feature present
    # (sliding and full layers, GQA with 8 query heads per kv head, 32 experts, real vocab).
    "tiny": dict(num_layers=4, hidden_size=128, num_heads=16, num_kv_heads=2, head_dim=64,
                 num_experts=32, experts_per_token=4, intermediate_size=96),
    "20b": dict(num_layers=24, hidden_size=2880, num_heads=64, num_kv_heads=8, head_dim=64,
                num_experts=32, experts_per_token=4, intermediate_size=2880),
    "120b": dict(num_layers=36, hidden_size=2880, num_heads=64, num_kv_heads=8, head_dim=64,
                 num_experts=128, experts_per_token=4, intermediate_size=2880),
}

# Mean square of the 16 E2M1 values when every code is equally likely.
_E2M1_RMS = math.sqrt(np.mean(np.array([0, .5, 1, 1.5, 2, 3, 4, 6]) ** 2))
_ROLE_IDS = {r: i for i, r in enumerate(GLOBAL_ROLES + LAYER_ROLES)}
CHUNK_ELEMS = 1 << 23


def preset_config(preset: str = "tiny", **overrides) -> Config:
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}: must be one of {sorted(PRESETS)}")
    return Config(**{**PRESETS[preset], **overrides})


def _rng(seed: int, role: str, layer: Optional[int], chunk: int) -> np.random.Generator:
    return np.random.default_rng([seed, _ROLE_IDS[role], 0 if layer is None else layer + 1, chunk])


def _dense_spec(cfg: Config, role: str) -> Tuple[str, float, float]:
    """(kind, a, b): 'normal' with mean a, std b; or 'uniform' on [a, b]."""
    H = cfg.hidden_size
    if role in ("attn_norm", "mlp_norm", "final_norm"):
        return "uniform", 0.75, 1.25
    return {
        "embedding": ("normal", 0.0, 1.0),
        "unembedding": ("normal", 0.0, 1.0 / math.sqrt(H)),
        "q_w": ("normal", 0.0, 1.0 / math.sqrt(H)),
        "k_w": ("normal", 0.0, 1.0 / math.sqrt(H)),
        "v_w": ("normal", 0.0, 1.0 / math.sqrt(H)),
        "q_b": ("normal", 0.0, 0.2), "k_b": ("normal", 0.0, 0.2), "v_b": ("normal", 0.0, 0.2),
        "sinks": ("normal", 0.0, 1.0),
        "out_w": ("normal", 0.0, 1.0 / math.sqrt(cfg.q_width)),
        "out_b": ("normal", 0.0, 0.05),
        "router_w": ("normal", 0.0, 2.0 / math.sqrt(H)),
        "router_b": ("normal", 0.0, 0.1),
        "w1_bias": ("normal", 0.0, 0.2),
        "w2_bias": ("normal", 0.0, 0.05),
    }[role]


def _produce(cfg: Config, seed: int, role: str, layer: Optional[int]) -> Iterator[np.ndarray]:
    """The stored bits of one role, in row-major order, in bounded chunks."""
    shape = expected_shapes(cfg)[role]
    if role in MXFP4_ROLES:
        E = shape[0]
        for e in range(E):
            rng = _rng(seed, role, layer, e)
            n = int(np.prod(shape[1:]))
            if role.endswith("blocks"):
                yield np.frombuffer(rng.bytes(n), dtype=np.uint8)
            else:
                fan_in = cfg.hidden_size if role.startswith("w1") else cfg.intermediate_size
                e2 = round(math.log2(1.0 / (_E2M1_RMS * math.sqrt(fan_in))))
                yield (127 + e2 - rng.integers(0, 2, size=n)).astype(np.uint8)
        return
    kind, a, b = _dense_spec(cfg, role)
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, CHUNK_ELEMS // cols)
    for ci, r0 in enumerate(range(0, rows, step)):
        n = (min(rows, r0 + step) - r0) * cols
        rng = _rng(seed, role, layer, ci)
        if kind == "normal":
            x = rng.standard_normal(n, dtype=np.float32)
            x *= np.float32(b)
            x += np.float32(a)
        else:
            x = rng.uniform(a, b, size=n).astype(np.float32)
        yield f32_to_bf16(x)


def _entries(cfg: Config, layout: str) -> List[Tuple[str, str, Tuple[int, ...], List]]:
    """(name, dtype, shape, [(role, layer), ...]) for every tensor of the layout, in file order."""
    shapes = expected_shapes(cfg)
    out = []

    def add(role, layer):
        if layout == "original" and role[0] in "qkv" and role[1:] in ("_w", "_b"):
            if role[0] != "q":
                return
            kind = role[1:]
            shape = (cfg.qkv_width,) + shapes[role][1:]
            out.append((tensor_name(role, layer, layout), "BF16", shape,
                        [("q" + kind, layer), ("k" + kind, layer), ("v" + kind, layer)]))
            return
        dtype = "U8" if role in MXFP4_ROLES else "BF16"
        out.append((tensor_name(role, layer, layout), dtype, shapes[role], [(role, layer)]))

    add("embedding", None)
    for l in range(cfg.num_layers):
        for role in LAYER_ROLES:
            add(role, l)
    add("final_norm", None)
    add("unembedding", None)
    return out


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape)) * (1 if dtype == "U8" else 2)


# The tensors a hollow checkpoint leaves as holes: every matrix the CUDA backend copies to the
# device at load (csrc/cuda/backend_cuda.cu, bind), which it makes there instead.
HOLLOW_ROLES = ("embedding", "unembedding", "q_w", "k_w", "v_w", "out_w", "router_w") + MXFP4_ROLES


def hollow_fill(name: str, dtype: str, shape: Tuple[int, ...]) -> np.ndarray:
    """The stored bits the CUDA backend makes for tensor `name` of a hollow checkpoint
    (csrc/cuda/fill.cu with the parameters of CudaBackend::fill): value i is a hash of the name
    and i. bf16 matrices: uniform on [-a, a) with a = sqrt(3 / row length) (RMS 1/sqrt(row
    length)); MXFP4 codes: uniform bytes; scales: base or base - 1 with base chosen so the decoded
    experts have RMS about 1/sqrt(fan-in), as the random checkpoints' experts do."""
    key = 0xCBF29CE484222325
    for c in name.encode():
        key = ((key ^ c) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    n = int(np.prod(shape))
    with np.errstate(over="ignore"):
        z = np.uint64(key) + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    if dtype == "BF16":
        row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        a = np.float32(math.sqrt(3.0 / row))
        u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
        return f32_to_bf16((np.float32(2.0) * u - np.float32(1.0)) * a).reshape(shape)
    if shape[-1] == 16:  # MXFP4 codes
        return (z & np.uint64(0xFF)).astype(np.uint8).reshape(shape)
    fan_in = shape[-1] * 32
    base = 127 + int(np.rint(math.log2(1.0 / (_E2M1_RMS * math.sqrt(fan_in)))))
    return (base - (z & np.uint64(1)).astype(np.int64)).astype(np.uint8).reshape(shape)


def write_random_checkpoint(path: str, preset: str = "tiny", layout: str = "hf", seed: int = 0,
                            max_shard_bytes: Optional[int] = None,
                            config: Optional[Config] = None,
                            progress: Optional[Callable[[int, int], None]] = None,
                            hollow: bool = False, fill: str = "random",
                            **overrides) -> str:
    """Write a random checkpoint to `path` (a directory) and return `path`.

    layout: "hf" (config.json + model.safetensors, or shards with an index when the weights
    exceed `max_shard_bytes`), "original" (config.json + model.safetensors as in original/), or
    "both" (HF at the root and the original layout in original/, as the published repos are).
    hollow: (benchmarks; "hf" only) the tensors of HOLLOW_ROLES are left as holes, so the files
    take almost no disk (a 120b checkpoint: a few MB), and are marked hollow; only the CUDA
    backend runs them, making those matrices in device memory (Options::random_device_weights).
    fill="hollow": write the matrices of HOLLOW_ROLES as the CUDA backend would make them
    (hollow_fill), so a full checkpoint runs the same model as its hollow twin.
    """
    if layout not in ("hf", "original", "both"):
        raise ValueError(f"layout={layout!r}: must be 'hf', 'original' or 'both'")
    if (hollow or fill == "hollow") and layout != "hf":
        raise ValueError(f"hollow checkpoints (and fill='hollow') need layout='hf', got {layout!r}")
    if fill not in ("random", "hollow"):
        raise ValueError(f"fill={fill!r}: must be 'random' or 'hollow'")
    cfg = config or preset_config(preset, **overrides)
    if layout == "both":
        write_random_checkpoint(path, layout="hf", seed=seed, max_shard_bytes=max_shard_bytes,
                                config=cfg, progress=progress)
        write_random_checkpoint(os.path.join(path, "original"), layout="original", seed=seed,
                                config=cfg, progress=progress)
        return path
    os.makedirs(path, exist_ok=True)
    entries = _entries(cfg, layout)
    total = sum(_nbytes(s, d) for _, d, s, _ in entries)
    if max_shard_bytes is None:
        max_shard_bytes = 4 << 30
    shards: List[List] = [[]]
    size = 0
    for ent in entries:
        nb = _nbytes(ent[2], ent[1])
        if layout == "hf" and shards[-1] and size + nb > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(ent)
        size += nb
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    done = 0
    for fname, shard in zip(names, shards):
        meta = {"format": "pt", "generator": f"gptoss.testing seed={seed}"}
        if hollow:
            meta["gptoss_hollow"] = "1"
        w = SafetensorsWriter(os.path.join(path, fname), [(n, d, s) for n, d, s, _ in shard],
                              metadata=meta)
        for name, dtype, shape, parts in shard:
            made_on_device = parts[0][0] in HOLLOW_ROLES
            if hollow and made_on_device:
                w.skip(name)
                done += _nbytes(shape, dtype)
                continue
            if fill == "hollow" and made_on_device:
                w.write(name, [hollow_fill(name, dtype, shape)])
                done += _nbytes(shape, dtype)
                continue

            def chunks():
                nonlocal done
                for role, layer in parts:
                    for c in _produce(cfg, seed, role, layer):
                        done += c.nbytes
                        if progress is not None:
                            progress(done, total)
                        yield c
            w.write(name, chunks())
        w.close()
    if len(shards) > 1:
        weight_map = {n: fname for fname, shard in zip(names, shards) for n, _, _, _ in shard}
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    write_config(cfg, os.path.join(path, "config.json"), layout)
    return path


def percent_progress(label: str) -> Callable[[int, int], None]:
    """A progress callback that rewrites one stderr line whenever the whole percentage changes."""
    last = [-1]

    def cb(done: int, total: int) -> None:
        pct = int(100 * done / total) if total else 100
        if pct != last[0]:
            last[0] = pct
            sys.stderr.write(f"\r{label}: {pct:3d}% of {total / 1e9:.2f} GB")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
    return cb


def cache_dir() -> str:
    base = os.environ.get("GPTOSS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "gptoss")
    return base


def random_checkpoint(preset: str, layout: str = "hf", seed: int = 0,
                      directory: Optional[str] = None, progress: bool = False,
                      hollow: bool = False) -> str:
    """A random checkpoint for `random:PRESET` (hollow: `random:PRESET:hollow`), written once into
    the cache and reused.

    The cache directory is $GPTOSS_CACHE (default ~/.cache/gptoss); a finished checkpoint carries
    a marker file, so an interrupted write is redone rather than used.
    """
    cfg = preset_config(preset)
    if hollow:
        layout = "hf"
    key = hashlib.sha256(json.dumps([dataclasses.asdict(cfg), layout, seed, 1] +
                                    (["hollow"] if hollow else []),
                                    sort_keys=True).encode()).hexdigest()[:12]
    kind = "hollow" if hollow else layout
    path = os.path.join(directory or cache_dir(), f"random-{preset}-{kind}-seed{seed}-{key}")
    marker = os.path.join(path, ".gptoss-complete")
    if os.path.exists(marker):
        return path
    if os.path.exists(path):
        shutil.rmtree(path)
    cb = percent_progress(f"writing random:{preset} checkpoint to {path}") if progress else None
    write_random_checkpoint(path, preset=preset, layout=layout, seed=seed, config=cfg, progress=cb,
                            hollow=hollow)
    with open(marker, "w") as f:
        f.write("ok\n")
    return path


def resolve_model_path(name: str, progress: bool = False) -> str:
    """`random:PRESET[:LAYOUT]` -> a cached random checkpoint (`random:PRESET:hollow`: a hollow
    one, for the CUDA backend's benchmarks); `owner/name[@rev]` that is not a directory -> its
    snapshot in the local Hugging Face cache (gptoss.hub; never the network); anything else is a
    path."""
    if name.startswith("random:"):
        parts = name.split(":")
        preset = parts[1]
        layout = parts[2] if len(parts) > 2 else "hf"
        if preset not in PRESETS:
            raise ValueError(f"model {name!r}: unknown preset {preset!r} "
                             f"(choose from {', '.join(sorted(PRESETS))})")
        if layout == "hollow":
            return random_checkpoint(preset, progress=progress, hollow=True)
        return random_checkpoint(preset, layout=layout, progress=progress)
    from . import hub
    if hub.looks_like_repo_id(name):
        return hub.resolve_repo_id(name)
    return name
