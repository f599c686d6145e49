"""The gptoss command as a user runs it."""
import json
import os
import subprocess
import sys

import pytest


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gptoss", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def test_generate_random_tiny_streams_text():
    r = run("generate", "--model", "random:tiny", "Hello", "-n", "5", "-v")
    assert r.returncode == 0, r.stderr
    assert "stop: max_new_tokens" in r.stderr and "5 generated" in r.stderr
    assert r.stdout.strip()


def test_generate_is_deterministic_greedy(tiny_hf):
    a = run("generate", "--model", tiny_hf, "Hello", "-n", "6", "--backend", "numpy")
    b = run("generate", "--model", tiny_hf, "Hello", "-n", "6", "--backend", "numpy")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_info_reports_backends_and_checkpoint(tiny_original):
    r = run("info", tiny_original)
    assert r.returncode == 0, r.stderr
    assert "numpy  available" in r.stdout and "layout: original" in r.stdout
    assert "num_experts: 32" in r.stdout and "SFSF" in r.stdout


def test_make_random_checkpoint(tmp_path):
    out = str(tmp_path / "ck")
    r = run("make-random-checkpoint", out, "--layout", "original", "--seed", "3")
    assert r.returncode == 0, r.stderr
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["num_experts"] == 32 and os.path.exists(os.path.join(out, "model.safetensors"))


def test_errors_are_clean(tmp_path):
    r = run("generate", "--model", str(tmp_path / "missing"), "hi")
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr
    r = run("generate", "--model", "random:huge", "hi")
    assert r.returncode == 2 and "unknown preset" in r.stderr


def test_chat_cli_keeps_history_and_shows_reasoning_apart(tiny_hf):
    r = run("chat", "--model", tiny_hf, "--max-tokens", "6", "-t", "0", "-v",
            input="Hello\n/effort high\nAgain\n/quit\n")
    assert r.returncode == 0, r.stderr
    assert "[reasoning effort: high]" in r.stderr
    # two turns answered, each ending with a Done line carrying its stop reason
    assert r.stderr.count("[length; 6 tokens") == 2
