"""Model configuration: read from a checkpoint's config.json (Hugging Face or `original/` layout).

Every value is read from the file; the published models' constants (the defaults below) are used only where a key
is absent. Every value is validated and a bad one raises ConfigError naming the key and file.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional


class ConfigError(ValueError):
    """A config.json value is missing, malformed or out of range."""


@dataclasses.dataclass(frozen=True)
class Config:
    num_layers: int = 24
    hidden_size: int = 2880
    num_heads: int = 64
    num_kv_heads: int = 8
    head_dim: int = 64
    num_experts: int = 32
    experts_per_token: int = 4
    intermediate_size: int = 2880
    vocab_size: int = 201088
    sliding_window: int = 128
    # per layer: True where the layer uses the sliding window (the published models: even layers)
    layer_sliding: tuple = ()
    rope_theta: float = 150000.0
    rope_factor: float = 32.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_original_context: int = 4096
    rope_truncate: bool = False
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    rms_norm_eps: float = 1e-5
    max_context: int = 131072

    def __post_init__(self):
        if not self.layer_sliding:
            object.__setattr__(self, "layer_sliding",
                               tuple(l % 2 == 0 for l in range(self.num_layers)))
        else:
            object.__setattr__(self, "layer_sliding", tuple(bool(x) for x in self.layer_sliding))
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_width(self) -> int:
        return self.q_width + 2 * self.kv_width

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    def window_of(self, layer: int) -> Optional[int]:
        """The sliding window of `layer`, or None for full causal attention."""
        return self.sliding_window if self.layer_sliding[layer] else None

    def validate(self, source: str = "config") -> None:
        def need(cond: bool, key: str, msg: str):
            if not cond:
                raise ConfigError(f"{source}: {key} = {getattr(self, key)!r}: {msg}")

        for key in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                    "num_experts", "experts_per_token", "intermediate_size", "vocab_size",
                    "sliding_window", "rope_original_context", "max_context"):
            v = getattr(self, key)
            need(isinstance(v, int) and not isinstance(v, bool) and v > 0, key,
                 "must be a positive integer")
        need(self.hidden_size % 32 == 0, "hidden_size", "must be divisible by 32 (MXFP4 blocks)")
        need(self.intermediate_size % 32 == 0, "intermediate_size",
             "must be divisible by 32 (MXFP4 blocks)")
        need(self.num_heads % self.num_kv_heads == 0, "num_heads",
             f"must be divisible by num_kv_heads ({self.num_kv_heads})")
        need(self.head_dim % 2 == 0, "head_dim", "must be even (RoPE rotates halves)")
        need(self.experts_per_token <= self.num_experts, "experts_per_token",
             f"must not exceed num_experts ({self.num_experts})")
        need(len(self.layer_sliding) == self.num_layers, "layer_sliding",
             f"must have one entry per layer ({self.num_layers})")
        for key in ("rope_theta", "rope_factor", "rope_beta_fast", "rope_beta_slow",
                    "swiglu_limit", "swiglu_alpha", "rms_norm_eps"):
            v = getattr(self, key)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 and v > 0, key, "must be a positive finite number")
        need(self.rope_theta > 1, "rope_theta", "must be greater than 1")
        need(self.rope_factor >= 1, "rope_factor", "must be at least 1")
        need(self.rope_beta_fast > self.rope_beta_slow, "rope_beta_fast",
             f"must exceed rope_beta_slow ({self.rope_beta_slow})")

    # ------------------------------------------------------------------ serialisation
    def to_hf_dict(self) -> Dict[str, Any]:
        return {
            "architectures": ["GptOssForCausalLM"],
            "model_type": "gpt_oss",
            "num_hidden_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token,
            "experts_per_token": self.experts_per_token,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "sliding_window": self.sliding_window,
            "layer_types": ["sliding_attention" if s else "full_attention"
                            for s in self.layer_sliding],
            "rope_theta": self.rope_theta,
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": self.rope_factor,
                "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow,
                "original_max_position_embeddings": self.rope_original_context,
                "truncate": self.rope_truncate,
            },
            "swiglu_limit": self.swiglu_limit,
            "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_context,
            "attention_bias": True,
            "tie_word_embeddings": False,
            "eos_token_id": 200002,
            "pad_token_id": 199999,
            "quantization_config": {"quant_method": "mxfp4"},
        }

    def to_original_dict(self) -> Dict[str, Any]:
        d = {
            "num_hidden_layers": self.num_layers,
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit,
            "head_dim": self.head_dim,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "sliding_window": self.sliding_window,
            "initial_context_length": self.rope_original_context,
            "rope_theta": self.rope_theta,
            "rope_scaling_factor": self.rope_factor,
            "rope_ntk_alpha": self.rope_beta_slow,
            "rope_ntk_beta": self.rope_beta_fast,
        }
        if list(self.layer_sliding) != [l % 2 == 0 for l in range(self.num_layers)]:
            d["layer_types"] = ["sliding_attention" if s else "full_attention"
                                for s in self.layer_sliding]
        return d

    @classmethod
    def from_file(cls, path: str) -> "Config":
        try:
            with open(path, "r", encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a JSON object")
        return cls.from_dict(raw, source=path)

    @classmethod
    def from_dict(cls, raw: Dict[str, Any], source: str = "config") -> "Config":
        """Accepts either the HF keys or the `original/config.json` keys."""
        defaults = cls.__dataclass_fields__

        def get(*keys, default_field: str, kind=int, where: Optional[dict] = None):
            src = raw if where is None else where
            for k in keys:
                if k in src and src[k] is not None:
                    v = src[k]
                    if kind is int:
                        if isinstance(v, bool) or not isinstance(v, (int, float)) \
                                or float(v) != int(v):
                            raise ConfigError(f"{source}: {k} = {v!r}: must be an integer")
                        return int(v)
                    if kind is float:
                        if isinstance(v, bool) or not isinstance(v, (int, float)):
                            raise ConfigError(f"{source}: {k} = {v!r}: must be a number")
                        return float(v)
                    if kind is bool:
                        if not isinstance(v, bool):
                            raise ConfigError(f"{source}: {k} = {v!r}: must be true or false")
                        return v
            return defaults[default_field].default

        rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
        if not isinstance(rope, dict):
            raise ConfigError(f"{source}: rope_scaling = {rope!r}: must be a JSON object")
        rope_type = rope.get("rope_type", rope.get("type", "yarn"))
        if rope and rope_type not in ("yarn", None):
            raise ConfigError(f"{source}: rope_scaling.rope_type = {rope_type!r}: only 'yarn' "
                              "is supported")
        num_layers = get("num_hidden_layers", default_field="num_layers")
        layer_types = raw.get("layer_types")
        if layer_types is not None:
            if not isinstance(layer_types, list) or len(layer_types) != num_layers:
                raise ConfigError(f"{source}: layer_types must be a list of {num_layers} entries")
            bad = [t for t in layer_types if t not in ("sliding_attention", "full_attention")]
            if bad:
                raise ConfigError(f"{source}: layer_types has unknown entry {bad[0]!r} "
                                  "(expected 'sliding_attention' or 'full_attention')")
            sliding = tuple(t == "sliding_attention" for t in layer_types)
        else:
            sliding = tuple(l % 2 == 0 for l in range(num_layers))
        theta = get("rope_theta", default_field="rope_theta", kind=float)
        if "rope_theta" not in raw and "rope_theta" in rope:
            theta = get("rope_theta", default_field="rope_theta", kind=float, where=rope)
        original_ctx = get("original_max_position_embeddings", default_field="rope_original_context",
                           where=rope)
        if "original_max_position_embeddings" not in rope:
            original_ctx = get("initial_context_length", default_field="rope_original_context")
        factor = get("factor", default_field="rope_factor", kind=float, where=rope) \
            if "factor" in rope else get("rope_scaling_factor", default_field="rope_factor",
                                         kind=float)
        beta_fast = get("beta_fast", default_field="rope_beta_fast", kind=float, where=rope) \
            if "beta_fast" in rope else get("rope_ntk_beta", default_field="rope_beta_fast",
                                            kind=float)
        beta_slow = get("beta_slow", default_field="rope_beta_slow", kind=float, where=rope) \
            if "beta_slow" in rope else get("rope_ntk_alpha", default_field="rope_beta_slow",
                                            kind=float)
        truncate = get("truncate", default_field="rope_truncate", kind=bool, where=rope)
        try:
            cfg = cls(
                num_layers=num_layers,
                hidden_size=get("hidden_size", default_field="hidden_size"),
                num_heads=get("num_attention_heads", default_field="num_heads"),
                num_kv_heads=get("num_key_value_heads", default_field="num_kv_heads"),
                head_dim=get("head_dim", default_field="head_dim"),
                num_experts=get("num_local_experts", "num_experts", default_field="num_experts"),
                experts_per_token=get("num_experts_per_tok", "experts_per_token",
                                      default_field="experts_per_token"),
                intermediate_size=get("intermediate_size", default_field="intermediate_size"),
                vocab_size=get("vocab_size", default_field="vocab_size"),
                sliding_window=get("sliding_window", default_field="sliding_window"),
                layer_sliding=sliding,
                rope_theta=theta,
                rope_factor=factor,
                rope_beta_fast=beta_fast,
                rope_beta_slow=beta_slow,
                rope_original_context=original_ctx,
                rope_truncate=truncate,
                swiglu_limit=get("swiglu_limit", default_field="swiglu_limit", kind=float),
                rms_norm_eps=get("rms_norm_eps", default_field="rms_norm_eps", kind=float),
                max_context=get("max_position_embeddings", default_field="max_context")
                if "max_position_embeddings" in raw
                else int(round(original_ctx * factor)),
            )
        except ConfigError as e:
            msg = str(e)
            if msg.startswith("config:"):
                msg = source + msg[len("config"):]
            raise ConfigError(msg) from None
        return cfg


def write_config(cfg: Config, path: str, layout: str) -> None:
    d = cfg.to_hf_dict() if layout == "hf" else cfg.to_original_dict()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2)
