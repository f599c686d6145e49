"""A Hugging Face repository id resolves from the local hub cache, offline. The cache is built
here the way huggingface_hub lays it out (blobs, snapshots/<commit>/ of symlinks, refs/main)
around a tiny random checkpoint; the model found through it must compute exactly what the same
checkpoint opened by its directory computes."""
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from gptoss import Model, hub

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def make_cache(hub_dir, ckpt, repo="openai/gpt-oss-20b", commits=(COMMIT,), main=COMMIT):
    root = os.path.join(hub_dir, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
    for c in commits:
        snap = os.path.join(root, "snapshots", c)
        for dirpath, _, files in os.walk(ckpt):
            rel = os.path.relpath(dirpath, ckpt)
            for f in files:
                if f.startswith("."):
                    continue
                blob = os.path.join(root, "blobs", f"{c[:8]}-{rel.replace(os.sep, '_')}-{f}")
                if not os.path.exists(blob):
                    shutil.copyfile(os.path.join(dirpath, f), blob)
                dst = os.path.join(snap, rel, f)
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.symlink(os.path.relpath(blob, os.path.dirname(dst)), dst)
    if main:
        os.makedirs(os.path.join(root, "refs"), exist_ok=True)
        with open(os.path.join(root, "refs", "main"), "w") as f:
            f.write(main)
    return root


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("gptoss tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for k in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))    # the default cache, emptied
    return monkeypatch


def logits(model, toks=(1, 2, 3, 500, 9000)):
    return model.forward(list(toks))


def test_repo_id_from_hf_home(tiny_hf, tmp_path, clean_env, no_network):
    make_cache(str(tmp_path / "hf" / "hub"), tiny_hf)
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))
    m = Model.from_pretrained("openai/gpt-oss-20b", backend="numpy")
    assert m.weights.directory.startswith(str(tmp_path / "hf" / "hub"))
    assert COMMIT in m.weights.directory
    ref = Model.from_pretrained(tiny_hf, backend="numpy")
    np.testing.assert_array_equal(logits(m), logits(ref))


def test_hub_cache_env_wins_and_default_cache(tiny_hf, tmp_path, clean_env, no_network):
    make_cache(str(tmp_path / "xdg" / "huggingface" / "hub"), tiny_hf)
    assert COMMIT in hub.resolve_repo_id("openai/gpt-oss-20b")          # ~/.cache/huggingface/hub
    make_cache(str(tmp_path / "elsewhere"), tiny_hf, commits=(OTHER,), main=OTHER)
    clean_env.setenv("HF_HOME", str(tmp_path / "nothing-here"))
    clean_env.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert OTHER in hub.resolve_repo_id("openai/gpt-oss-20b")


def test_revisions(tiny_hf, tiny_original, tmp_path, clean_env, no_network):
    hub_dir = str(tmp_path / "c")
    root = make_cache(hub_dir, tiny_hf)
    make_cache(hub_dir, tiny_original, commits=(OTHER,), main=None)
    with open(os.path.join(root, "refs", "v2"), "w") as f:
        f.write(OTHER)
    clean_env.setenv("HF_HUB_CACHE", hub_dir)
    assert hub.resolve_repo_id("openai/gpt-oss-20b").endswith(COMMIT)
    assert hub.resolve_repo_id("openai/gpt-oss-20b@v2").endswith(OTHER)
    assert hub.resolve_repo_id(f"openai/gpt-oss-20b@{OTHER}").endswith(OTHER)
    m = Model.from_pretrained("openai/gpt-oss-20b@v2", backend="numpy")
    assert m.weights.layout == "original"
    with pytest.raises(hub.NotInCache, match="no ref or snapshot named 'v3'"):
        hub.resolve_repo_id("openai/gpt-oss-20b@v3")
    os.remove(os.path.join(root, "refs", "main"))      # two snapshots, no main: ambiguous
    with pytest.raises(hub.NotInCache, match="no refs/main and 2 snapshots"):
        hub.resolve_repo_id("openai/gpt-oss-20b")


def test_missing_repo_says_where_it_looked(tmp_path, clean_env, no_network):
    clean_env.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError) as e:
        Model.from_pretrained("openai/gpt-oss-120b")
    msg = str(e.value)
    assert os.path.join(str(tmp_path / "hf"), "hub", "models--openai--gpt-oss-120b",
                        "snapshots") in msg
    assert "$HF_HOME/hub" in msg and "huggingface-cli download openai/gpt-oss-120b" in msg


def test_a_directory_wins_over_a_repo_id(tiny_hf, tmp_path, monkeypatch, clean_env):
    (tmp_path / "openai").mkdir()
    os.symlink(tiny_hf, tmp_path / "openai" / "gpt-oss-20b")
    monkeypatch.chdir(tmp_path)
    clean_env.setenv("HF_HOME", str(tmp_path / "empty"))
    m = Model.from_pretrained("openai/gpt-oss-20b", backend="numpy")
    assert os.path.realpath(m.weights.directory) == os.path.realpath(tiny_hf)


def test_cli_model_repo_id(tiny_hf, tmp_path):
    make_cache(str(tmp_path / "hf" / "hub"), tiny_hf)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "gptoss", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=300)
    r = run("generate", "--model", "openai/gpt-oss-20b", "--backend", "numpy", "-n", "4", "Hi")
    ref = run("generate", "--model", tiny_hf, "--backend", "numpy", "-n", "4", "Hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ref.stdout and r.stdout.strip()
    r = run("info", "openai/gpt-oss-120b")
    assert r.returncode == 2 and "models--openai--gpt-oss-120b" in r.stderr
    assert "Traceback" not in r.stderr
