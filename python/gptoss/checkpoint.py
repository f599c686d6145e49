"""Checkpoint directories in either published layout (Hugging Face or original/; README, Checkpoints), seen through one `Weights` view.

`Weights` names every tensor by role (`"embedding"`, `"q_w"`, `"w1_blocks"`, ...) and layer,
whatever the layout on disk. Tensors are zero-copy views of the memory-mapped files: bf16 comes
back as uint16 bits, MXFP4 blocks and scales as uint8. Every tensor's presence, dtype and shape
is checked against the config when the checkpoint is opened, before anything is computed.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from .config import Config, ConfigError
from .safetensors_io import SafetensorsError, SafetensorsFile, bf16_to_f32


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or tensors, or holds a tensor of the wrong shape."""


LAYOUTS = ("hf", "original")

# role -> (HF name, original name). "{l}" is the layer index. q/k/v are split views of the fused
# original tensor (see _QKV_SPLIT).
_GLOBAL_ROLES = {
    "embedding": ("model.embed_tokens.weight", "embedding.weight"),
    "final_norm": ("model.norm.weight", "norm.scale"),
    "unembedding": ("lm_head.weight", "unembedding.weight"),
}
_LAYER_ROLES = {
    "attn_norm": ("model.layers.{l}.input_layernorm.weight", "block.{l}.attn.norm.scale"),
    "q_w": ("model.layers.{l}.self_attn.q_proj.weight", "block.{l}.attn.qkv.weight"),
    "k_w": ("model.layers.{l}.self_attn.k_proj.weight", "block.{l}.attn.qkv.weight"),
    "v_w": ("model.layers.{l}.self_attn.v_proj.weight", "block.{l}.attn.qkv.weight"),
    "q_b": ("model.layers.{l}.self_attn.q_proj.bias", "block.{l}.attn.qkv.bias"),
    "k_b": ("model.layers.{l}.self_attn.k_proj.bias", "block.{l}.attn.qkv.bias"),
    "v_b": ("model.layers.{l}.self_attn.v_proj.bias", "block.{l}.attn.qkv.bias"),
    "sinks": ("model.layers.{l}.self_attn.sinks", "block.{l}.attn.sinks"),
    "out_w": ("model.layers.{l}.self_attn.o_proj.weight", "block.{l}.attn.out.weight"),
    "out_b": ("model.layers.{l}.self_attn.o_proj.bias", "block.{l}.attn.out.bias"),
    "mlp_norm": ("model.layers.{l}.post_attention_layernorm.weight", "block.{l}.mlp.norm.scale"),
    "router_w": ("model.layers.{l}.mlp.router.weight", "block.{l}.mlp.gate.weight"),
    "router_b": ("model.layers.{l}.mlp.router.bias", "block.{l}.mlp.gate.bias"),
    "w1_blocks": ("model.layers.{l}.mlp.experts.gate_up_proj_blocks",
                  "block.{l}.mlp.mlp1_weight.blocks"),
    "w1_scales": ("model.layers.{l}.mlp.experts.gate_up_proj_scales",
                  "block.{l}.mlp.mlp1_weight.scales"),
    "w1_bias": ("model.layers.{l}.mlp.experts.gate_up_proj_bias", "block.{l}.mlp.mlp1_bias"),
    "w2_blocks": ("model.layers.{l}.mlp.experts.down_proj_blocks",
                  "block.{l}.mlp.mlp2_weight.blocks"),
    "w2_scales": ("model.layers.{l}.mlp.experts.down_proj_scales",
                  "block.{l}.mlp.mlp2_weight.scales"),
    "w2_bias": ("model.layers.{l}.mlp.experts.down_proj_bias", "block.{l}.mlp.mlp2_bias"),
}
LAYER_ROLES = tuple(_LAYER_ROLES)
GLOBAL_ROLES = tuple(_GLOBAL_ROLES)
MXFP4_ROLES = ("w1_blocks", "w1_scales", "w2_blocks", "w2_scales")
DENSE_DTYPES = ("BF16", "F32", "F16")


def expected_shapes(cfg: Config) -> Dict[str, Tuple[int, ...]]:
    """Shape of every role (per layer for layer roles) as the config implies."""
    H, E, I = cfg.hidden_size, cfg.num_experts, cfg.intermediate_size
    return {
        "embedding": (cfg.vocab_size, H),
        "final_norm": (H,),
        "unembedding": (cfg.vocab_size, H),
        "attn_norm": (H,),
        "q_w": (cfg.q_width, H), "k_w": (cfg.kv_width, H), "v_w": (cfg.kv_width, H),
        "q_b": (cfg.q_width,), "k_b": (cfg.kv_width,), "v_b": (cfg.kv_width,),
        "sinks": (cfg.num_heads,),
        "out_w": (H, cfg.q_width), "out_b": (H,),
        "mlp_norm": (H,),
        "router_w": (E, H), "router_b": (E,),
        "w1_blocks": (E, 2 * I, H // 32, 16), "w1_scales": (E, 2 * I, H // 32),
        "w1_bias": (E, 2 * I),
        "w2_blocks": (E, H, I // 32, 16), "w2_scales": (E, H, I // 32), "w2_bias": (E, H),
    }


def tensor_name(role: str, layer: Optional[int], layout: str) -> str:
    col = LAYOUTS.index(layout)
    if role in _GLOBAL_ROLES:
        return _GLOBAL_ROLES[role][col]
    return _LAYER_ROLES[role][col].format(l=layer)


def _detect_layout(names) -> Optional[str]:
    names = set(names)
    if "model.embed_tokens.weight" in names or any(n.startswith("model.layers.") for n in names):
        return "hf"
    if "embedding.weight" in names or any(n.startswith("block.") for n in names):
        return "original"
    return None


class _Source:
    """The safetensors files of one layout in one directory, and which file holds each name."""

    def __init__(self, directory: str):
        self.directory = directory
        self.files: Dict[str, SafetensorsFile] = {}
        self.where: Dict[str, str] = {}
        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            try:
                with open(index, "r", encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: malformed index: {e}") from None
            for fname in sorted(set(weight_map.values())):
                if not isinstance(fname, str) or os.path.basename(fname) != fname:
                    raise CheckpointError(f"{index}: bad shard file name {fname!r}")
                path = os.path.join(directory, fname)
                if not os.path.exists(path):
                    raise CheckpointError(f"{index}: shard {fname} is missing from {directory}")
                self.files[fname] = SafetensorsFile(path)
            for name, fname in weight_map.items():
                if name not in self.files[fname]:
                    raise CheckpointError(f"{index}: says {name!r} is in {fname}, but "
                                          f"{os.path.join(directory, fname)} does not hold it")
                self.where[name] = fname
        else:
            shards = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
            if not shards:
                raise CheckpointError(f"{directory}: no .safetensors files")
            for fname in shards:
                sf = SafetensorsFile(os.path.join(directory, fname))
                self.files[fname] = sf
                for name in sf.keys():
                    if name in self.where:
                        raise CheckpointError(f"{directory}: tensor {name!r} is in both "
                                              f"{self.where[name]} and {fname}")
                    self.where[name] = fname
        self.layout = _detect_layout(self.where)

    def path_of(self, name: str) -> str:
        return os.path.join(self.directory, self.where[name])

    def info(self, name: str):
        return self.files[self.where[name]].tensors[name]

    def get(self, name: str) -> np.ndarray:
        return self.files[self.where[name]].get(name)


def find_checkpoint(path: str, layout: Optional[str] = None) -> Tuple[str, str, str]:
    """Resolve a checkpoint path to (tensor dir, config file, note)."""
    if layout is not None and layout not in LAYOUTS:
        raise CheckpointError(f"layout={layout!r}: must be one of {LAYOUTS} or None")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a checkpoint directory)")

    def has_tensors(d):
        return os.path.isdir(d) and any(f.endswith(".safetensors") for f in os.listdir(d))

    root_has = has_tensors(path)
    orig_dir = os.path.join(path, "original")
    orig_has = has_tensors(orig_dir)
    note = ""
    if layout == "original" and orig_has:
        tdir = orig_dir
    elif layout is None and root_has and orig_has:
        tdir = path
        note = (f"{path} holds both layouts; using the Hugging Face files at its root "
                "(pass layout='original' to use original/)")
    elif root_has:
        tdir = path
    elif orig_has:
        tdir = orig_dir
    else:
        raise CheckpointError(f"{path}: no .safetensors files here or in {orig_dir}")
    cfg_path = os.path.join(tdir, "config.json")
    if not os.path.exists(cfg_path) and tdir == orig_dir:
        cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{tdir}: no config.json beside the tensors")
    return tdir, cfg_path, note


class Weights:
    """Every tensor of a checkpoint by role, checked against the config, as mapped views."""

    def __init__(self, path: str, layout: Optional[str] = None):
        tdir, cfg_path, note = find_checkpoint(path, layout)
        self.path = path
        self.note = note
        self.config_path = cfg_path
        self.config = Config.from_file(cfg_path)
        self._src = _Source(tdir)
        detected = self._src.layout
        if detected is None:
            raise CheckpointError(f"{tdir}: cannot tell the layout: neither "
                                  "'model.embed_tokens.weight' nor 'embedding.weight' is present")
        if layout is not None and detected != layout:
            raise CheckpointError(f"{tdir}: asked for layout {layout!r} but the tensor names "
                                  f"are of the {detected!r} layout")
        self.layout = detected
        self.directory = tdir
        # a hollow checkpoint (gptoss.testing, hollow=True): its matrices are holes that only the
        # CUDA backend fills (in device memory); this names the first such file, else None
        self.hollow = next((os.path.join(tdir, f) for f, st in sorted(self._src.files.items())
                            if st.metadata.get("gptoss_hollow") == "1"), None)
        self._views: Dict[Tuple[str, Optional[int]], np.ndarray] = {}
        self._dtypes: Dict[Tuple[str, Optional[int]], str] = {}
        self._validate()

    # -------------------------------------------------------------------------------- checks
    def _validate(self):
        cfg = self.config
        shapes = expected_shapes(cfg)
        for role in GLOBAL_ROLES:
            self._check(role, None, shapes[role])
        for l in range(cfg.num_layers):
            for role in LAYER_ROLES:
                self._check(role, l, shapes[role])

    def _check(self, role: str, layer: Optional[int], shape: Tuple[int, ...]):
        name = tensor_name(role, layer, self.layout)
        if name not in self._src.where:
            raise CheckpointError(f"{self.directory}: missing tensor {name!r} "
                                  f"({role}{'' if layer is None else f' of layer {layer}'})")
        info = self._src.info(name)
        file = self._src.path_of(name)
        want_dtypes = ("U8",) if role in MXFP4_ROLES else DENSE_DTYPES
        if info.dtype not in want_dtypes:
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {info.dtype}, expected "
                                  f"{' or '.join(want_dtypes)}")
        if self.layout == "original" and role in ("q_w", "k_w", "v_w", "q_b", "k_b", "v_b"):
            cfg = self.config
            fused = (cfg.qkv_width,) + shape[1:]
            if info.shape != fused:
                raise CheckpointError(f"{file}: tensor {name!r} has shape {list(info.shape)}, "
                                      f"config implies {list(fused)}")
            lo, hi = self._qkv_rows(role)
            view = self._src.get(name)[lo:hi]
        else:
            if info.shape != tuple(shape):
                raise CheckpointError(f"{file}: tensor {name!r} has shape {list(info.shape)}, "
                                      f"config implies {list(shape)}")
            view = self._src.get(name)
        self._views[(role, layer)] = view
        self._dtypes[(role, layer)] = info.dtype

    def _qkv_rows(self, role: str) -> Tuple[int, int]:
        cfg = self.config
        part = role[0]
        q, kv = cfg.q_width, cfg.kv_width
        return {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}[part]

    # -------------------------------------------------------------------------------- access
    def raw(self, role: str, layer: Optional[int] = None) -> np.ndarray:
        """The stored bits as a read-only view (bf16 as uint16, MXFP4 as uint8)."""
        try:
            return self._views[(role, layer)]
        except KeyError:
            raise KeyError(f"no tensor for role {role!r} layer {layer}") from None

    def dtype(self, role: str, layer: Optional[int] = None) -> str:
        return self._dtypes[(role, layer)]

    def f32(self, role: str, layer: Optional[int] = None) -> np.ndarray:
        """The tensor converted to float32 (a new array)."""
        a = self.raw(role, layer)
        dt = self.dtype(role, layer)
        if dt == "BF16":
            return bf16_to_f32(a)
        return a.astype(np.float32)

    def name(self, role: str, layer: Optional[int] = None) -> str:
        return tensor_name(role, layer, self.layout)

    def file_of(self, role: str, layer: Optional[int] = None) -> str:
        return self._src.path_of(self.name(role, layer))

    @property
    def files(self) -> List[str]:
        return [os.path.join(self._src.directory, f) for f in self._src.files]

    def nbytes(self) -> int:
        return sum(sf.size for sf in self._src.files.values())


__all__ = ["Weights", "CheckpointError", "SafetensorsError", "ConfigError", "expected_shapes",
           "tensor_name", "LAYER_ROLES", "GLOBAL_ROLES", "MXFP4_ROLES"]
