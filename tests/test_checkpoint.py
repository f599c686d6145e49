"""Config parsing, both layouts, and every documented error for bad checkpoints."""
import json
import os
import shutil
import struct

import numpy as np
import pytest

from gptoss import CheckpointError, Config, ConfigError, SafetensorsError, Weights
from gptoss.safetensors_io import SafetensorsFile, SafetensorsWriter, bf16_to_f32, f32_to_bf16
from gptoss.testing import preset_config, write_random_checkpoint


def copy(src, tmp_path, name="ck"):
    dst = str(tmp_path / name)
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------ config
def test_hf_and_original_configs_agree(tiny_hf, tiny_original):
    a = Config.from_file(os.path.join(tiny_hf, "config.json"))
    b = Config.from_file(os.path.join(tiny_original, "config.json"))
    assert a == b == preset_config("tiny")


def test_real_20b_config_values():
    hf = {"num_hidden_layers": 24, "hidden_size": 2880, "num_attention_heads": 64,
          "num_key_value_heads": 8, "head_dim": 64, "num_local_experts": 32,
          "num_experts_per_tok": 4, "intermediate_size": 2880, "vocab_size": 201088,
          "sliding_window": 128, "rope_theta": 150000,
          "layer_types": ["sliding_attention", "full_attention"] * 12,
          "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                           "original_max_position_embeddings": 4096, "rope_type": "yarn",
                           "truncate": False},
          "swiglu_limit": 7.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072}
    c = Config.from_dict(hf)
    assert c == preset_config("20b")
    newer = dict(hf)
    newer["rope_parameters"] = newer.pop("rope_scaling")
    assert Config.from_dict(newer) == c
    orig = {"num_hidden_layers": 24, "num_experts": 32, "experts_per_token": 4,
            "vocab_size": 201088, "hidden_size": 2880, "intermediate_size": 2880,
            "swiglu_limit": 7.0, "head_dim": 64, "num_attention_heads": 64,
            "num_key_value_heads": 8, "sliding_window": 128, "initial_context_length": 4096,
            "rope_theta": 150000, "rope_scaling_factor": 32.0, "rope_ntk_alpha": 1,
            "rope_ntk_beta": 32}
    assert Config.from_dict(orig) == c


def test_values_are_read_not_assumed():
    c = Config.from_dict({"rope_theta": 10000, "sliding_window": 64,
                          "rope_scaling": {"factor": 8.0, "beta_fast": 16, "beta_slow": 2,
                                           "original_max_position_embeddings": 2048}})
    assert (c.rope_theta, c.sliding_window, c.rope_factor, c.rope_beta_fast, c.rope_beta_slow,
            c.rope_original_context) == (10000, 64, 8.0, 16, 2, 2048)


@pytest.mark.parametrize("key,value,match", [
    ("hidden_size", 2881, "hidden_size.*divisible by 32"),
    ("intermediate_size", 100, "intermediate_size.*divisible by 32"),
    ("num_attention_heads", 63, "num_heads.*divisible by num_kv_heads"),
    ("sliding_window", 0, "sliding_window.*positive"),
    ("num_experts_per_tok", 64, "experts_per_token.*exceed"),
    ("hidden_size", "big", "hidden_size.*integer"),
    ("rope_theta", -1, "rope_theta"),
    ("layer_types", ["sliding_attention"], "layer_types"),
])
def test_bad_config_values_name_the_key(tmp_path, key, value, match):
    d = preset_config("tiny").to_hf_dict()
    d[key] = value
    p = tmp_path / "config.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=match) as e:
        Config.from_file(str(p))
    assert str(p) in str(e.value)


def test_config_not_json(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_file(str(p))


# ------------------------------------------------------------------------------ safetensors
def test_reads_files_written_by_the_safetensors_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.arange(10, dtype=np.uint8)
    st.save_file({"a": a, "b": b}, str(tmp_path / "x.safetensors"))
    f = SafetensorsFile(str(tmp_path / "x.safetensors"))
    assert np.array_equal(f.get("a"), a) and np.array_equal(f.get("b"), b)
    # and the library reads what our writer writes
    w = SafetensorsWriter(str(tmp_path / "y.safetensors"), [("a", "F32", a.shape), ("b", "U8", b.shape)])
    w.write("a", [a[:1], a[1:]])
    w.write("b", [b])
    w.close()
    back = st.load_file(str(tmp_path / "y.safetensors"))
    assert np.array_equal(back["a"], a) and np.array_equal(back["b"], b)


def test_bf16_roundtrip():
    x = np.array([1.0, -2.5, 3.14159, 1e-3, 65504.0, np.inf, 0.0], np.float32)
    b = f32_to_bf16(x)
    y = bf16_to_f32(b)
    assert y[0] == 1.0 and y[1] == -2.5 and np.isinf(y[5])
    assert np.all(np.abs(y[:5] - x[:5]) <= np.abs(x[:5]) * 2 ** -8)
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]


def test_mapping_is_zero_copy(tiny_hf):
    w = Weights(tiny_hf)
    a = w.raw("w1_blocks", 0)
    assert not a.flags.owndata and not a.flags.writeable
    assert a.dtype == np.uint8 and a.shape == (32, 192, 4, 16)


def _single_file(ck):
    return os.path.join(ck, "model.safetensors")


def test_truncated_file(tiny_hf, tmp_path):
    ck = copy(tiny_hf, tmp_path)
    p = _single_file(ck)
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) - 1000)
    with pytest.raises(SafetensorsError, match=r"truncated.*") as e:
        Weights(ck)
    assert "model.safetensors" in str(e.value) and "lm_head.weight" in str(e.value)


def test_truncated_header(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(SafetensorsError, match="truncated"):
        SafetensorsFile(str(p))
    p.write_bytes(b"abc")
    with pytest.raises(SafetensorsError, match="truncated"):
        SafetensorsFile(str(p))


def _rewrite_header(path, edit):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        rest = f.read()
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + rest)


def test_header_lies_about_size(tiny_hf, tmp_path):
    ck = copy(tiny_hf, tmp_path)

    def edit(h):
        h["model.norm.weight"]["data_offsets"][1] += 2
    _rewrite_header(_single_file(ck), edit)
    with pytest.raises(SafetensorsError, match="model.norm.weight.*span"):
        Weights(ck)


def test_header_overlapping_tensors(tiny_hf, tmp_path):
    ck = copy(tiny_hf, tmp_path)

    def edit(h):
        a = h["model.norm.weight"]["data_offsets"]
        b = h["model.layers.0.input_layernorm.weight"]
        b["data_offsets"] = [a[0], a[1]]
    _rewrite_header(_single_file(ck), edit)
    with pytest.raises(SafetensorsError, match="overlap"):
        Weights(ck)


def test_header_not_json(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        SafetensorsFile(str(p))


def test_missing_tensor(tiny_hf, tmp_path):
    ck = copy(tiny_hf, tmp_path)
    _rewrite_header(_single_file(ck), lambda h: h.pop("model.layers.2.mlp.router.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.2.mlp.router.bias'"):
        Weights(ck)


def test_wrong_shape_against_config(tiny_hf, tmp_path):
    ck = copy(tiny_hf, tmp_path)
    cfg = json.load(open(os.path.join(ck, "config.json")))
    cfg["num_local_experts"] = 16
    json.dump(cfg, open(os.path.join(ck, "config.json"), "w"))
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.router.weight.*shape.*\[16, 128\]"):
        Weights(ck)


def test_wrong_dtype(tiny_hf, tmp_path):
    ck = copy(tiny_hf, tmp_path)

    def edit(h):
        h["model.layers.0.mlp.experts.gate_up_proj_scales"]["dtype"] = "I8"
    _rewrite_header(_single_file(ck), edit)
    with pytest.raises(CheckpointError, match="gate_up_proj_scales.*dtype I8"):
        Weights(ck)


def test_index_points_at_missing_shard(tiny_sharded, tmp_path):
    ck = copy(tiny_sharded, tmp_path)
    shards = sorted(f for f in os.listdir(ck) if f.endswith(".safetensors"))
    assert len(shards) > 1
    os.remove(os.path.join(ck, shards[-1]))
    with pytest.raises(CheckpointError, match="missing"):
        Weights(ck)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no .safetensors"):
        Weights(str(tmp_path))
    with pytest.raises(CheckpointError, match="not a directory"):
        Weights(str(tmp_path / "nope"))


def test_directory_with_both_layouts_picks_one_and_says_which(tmp_path):
    ck = write_random_checkpoint(str(tmp_path / "both"), "tiny", layout="both", seed=1)
    w = Weights(ck)
    assert w.layout == "hf" and "both layouts" in w.note
    w2 = Weights(ck, layout="original")
    assert w2.layout == "original" and w2.directory.endswith("original")
    assert np.array_equal(w.f32("q_w", 1), w2.f32("q_w", 1))
    assert np.array_equal(w.raw("w2_blocks", 3), w2.raw("w2_blocks", 3))
    with pytest.raises(CheckpointError, match="layout"):
        Weights(ck, layout="ggml")
