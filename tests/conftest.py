import os

import numpy as np
import pytest

from gptoss.testing import preset_config, write_random_checkpoint


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """random:PRESET checkpoints go to a per-session folder, never the user's cache."""
    old = os.environ.get("GPTOSS_CACHE")
    os.environ["GPTOSS_CACHE"] = str(tmp_path_factory.mktemp("gptoss-cache"))
    yield
    if old is None:
        os.environ.pop("GPTOSS_CACHE", None)
    else:
        os.environ["GPTOSS_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny_hf")), "tiny", layout="hf",
                                   seed=1)


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory):
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny_orig")), "tiny",
                                   layout="original", seed=1)


@pytest.fixture(scope="session")
def tiny_sharded(tmp_path_factory):
    """The HF layout split into shards with an index, same weights as tiny_hf."""
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny_shards")), "tiny",
                                   layout="hf", seed=1, max_shard_bytes=20 << 20)


@pytest.fixture(scope="session")
def small_window(tmp_path_factory):
    """Tiny with a 4-token window, so short sequences cross it."""
    return write_random_checkpoint(str(tmp_path_factory.mktemp("tiny_w4")), "tiny", layout="hf",
                                   seed=2, sliding_window=4, num_layers=3)


def rel_err(out, ref):
    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


@pytest.fixture(scope="module")
def henc(tmp_path_factory):
    """openai-harmony's gpt-oss encoding, reading our vocabulary file (never downloading it)."""
    import shutil
    from gptoss.tokenizer import vocab_path
    H = pytest.importorskip("openai_harmony")
    d = tmp_path_factory.mktemp("vocab")
    shutil.copy(vocab_path(), d / "o200k_base.tiktoken")
    old = os.environ.get("TIKTOKEN_ENCODINGS_BASE")
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(d)
    try:
        yield H.load_harmony_encoding(H.HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_ENCODINGS_BASE", None)
        else:
            os.environ["TIKTOKEN_ENCODINGS_BASE"] = old
