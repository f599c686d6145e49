"""The C++ checkpoint reader under hostile input (csrc/engine/json.cpp, parse_safetensors and
config_from_json in csrc/engine/checkpoint.cpp): a checkpoint is a file from the internet.

Fast tests (the built extension, no compiler): each broken seed of the fuzz corpus
(tests/fuzz/corpus/bad-*, made by tests/fuzz/make_corpus.py) put in a checkpoint directory makes
the engine's loader raise an error naming the file and the problem (make_corpus.MESSAGES); the
real seeds load; broken config.json values and non-files are refused by name; the committed
corpus is what make_corpus.py writes.

Slow tests: the fuzz target (tests/fuzz/fuzz_checkpoint.cpp with the driver fuzz_driver.cpp,
CMake target fuzz_checkpoint) built with AddressSanitizer + UBSan runs the corpus and a minute of
mutations; it must exit 0 with no sanitizer report. With clang the same target runs under
libFuzzer: see the comment at the top of fuzz_checkpoint.cpp and tests/fuzz/README.md.
"""
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import threading

import pytest

from gptoss.safetensors_io import SafetensorsFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "tests", "fuzz")
CORPUS = os.path.join(FUZZ, "corpus")

_spec = importlib.util.spec_from_file_location("make_corpus", os.path.join(FUZZ, "make_corpus.py"))
make_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_corpus)


def seed(name):
    with open(os.path.join(CORPUS, name), "rb") as f:
        return f.read()


def checkpoint(d, shard, config="cfg-hf.json", name="model.safetensors"):
    """A checkpoint directory d: the micro config of the corpus and one safetensors file."""
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "wb") as f:
        f.write(seed(config))
    with open(os.path.join(d, name), "wb") as f:
        f.write(shard)
    return str(d), os.path.join(str(d), name)


def native():
    return pytest.importorskip("gptoss._C", reason="extension not built")


# ------------------------------------------------------------------------------ the corpus
def test_corpus_is_what_make_corpus_writes(tmp_path):
    ok, bad = make_corpus.handmade()
    generated = make_corpus.generated(str(tmp_path))
    want = {**ok, **bad, **generated}
    have = sorted(os.listdir(CORPUS))
    assert have == sorted(want), "rerun tests/fuzz/make_corpus.py"
    for n in have:
        if n in generated and n.endswith(".safetensors"):
            # the random values may differ with NumPy's version; the header and size may not
            got, new = seed(n), want[n]
            k = 8 + int.from_bytes(new[:8], "little")
            assert (len(got), got[:k]) == (len(new), new[:k]), f"{n}: rerun make_corpus.py"
        else:
            assert seed(n) == want[n], f"{n} differs from make_corpus.py's; rerun it"
    assert sorted(n for n in have if n.startswith("bad-")) == sorted(make_corpus.MESSAGES)
    assert sum(len(v) for v in want.values()) < 200_000


def test_real_seeds_are_valid_for_the_python_reader(tmp_path):
    for n in sorted(os.listdir(CORPUS)):
        if n.startswith("ok-"):
            p = tmp_path / n
            p.write_bytes(seed(n))
            f = SafetensorsFile(str(p))
            for k in f.keys():
                f.get(k)
    f = SafetensorsFile(str(tmp_path / "ok-hf.safetensors"))
    assert "model.embed_tokens.weight" in f and f.get("model.embed_tokens.weight").shape == (8, 32)
    assert SafetensorsFile(str(tmp_path / "ok-hollow.safetensors")).metadata["gptoss_hollow"] == "1"


def test_real_seeds_load_in_the_engine(tmp_path):
    C = native()
    ck, _ = checkpoint(tmp_path / "hf", seed("ok-hf.safetensors"))
    e = C.Engine(ck)
    assert e.prefill([1, 2, 3]).shape[-1] == 8
    ck2, _ = checkpoint(tmp_path / "orig", seed("ok-original.safetensors"), config="cfg-original.json")
    assert C.Engine(ck2).prefill([1, 2, 3]).shape[-1] == 8


# ------------------------------------------------------------------------------ broken shards
@pytest.mark.parametrize("name", sorted(make_corpus.MESSAGES))
def test_broken_shard_is_refused_naming_file_and_problem(tmp_path, name):
    C = native()
    ck, path = checkpoint(tmp_path / "ck", seed(name))
    with pytest.raises(ValueError) as e:
        C.Engine(ck)
    msg = str(e.value)
    assert msg.startswith(path + ": "), msg
    assert re.search(make_corpus.MESSAGES[name], msg), msg


def test_real_header_with_one_edit(tmp_path):
    """The micro checkpoint's own header, one tensor edited at a time (a real file's layout)."""
    C = native()
    whole = seed("ok-hf.safetensors")
    n = int.from_bytes(whole[:8], "little")
    header, data = json.loads(whole[8:8 + n]), whole[8 + n:]

    def edited(edit):
        h = json.loads(json.dumps(header))
        edit(h)
        raw = json.dumps(h).encode()
        return len(raw).to_bytes(8, "little") + raw + data

    def refused(edit, pattern, sub):
        ck, path = checkpoint(tmp_path / sub, edited(edit))
        with pytest.raises(ValueError) as e:
            C.Engine(ck)
        m = re.search(pattern, str(e.value))
        assert str(e.value).startswith(path + ": ") and m, e.value
        return m, os.path.getsize(path)

    name = "model.layers.1.mlp.router.bias"
    end = len(data)
    assert header[name]["shape"] == [2] and header[name]["dtype"] == "BF16"
    m, size = refused(lambda h: h[name].update(data_offsets=[end, end + 4]),
                      rf"tensor '{re.escape(name)}': truncated file: tensor ends at byte (\d+) "
                      r"but the file has (\d+) bytes", "a")
    assert int(m.group(2)) == size and int(m.group(1)) == size + 4
    refused(lambda h: h[name].update(shape=[1 << 33, 1 << 31]),
            rf"tensor '{re.escape(name)}': shape \[8589934592, 2147483648\]: the element count", "b")
    refused(lambda h: h[name].update(data_offsets=[2, 1]), "out of order", "c")
    refused(lambda h: h[name].update(dtype="F32x"), "unknown dtype F32x", "d")
    first = next(k for k in header if k != "__metadata__")
    refused(lambda h: h[name].update(data_offsets=h[first]["data_offsets"], dtype=h[first]["dtype"],
                                     shape=h[first]["shape"]), "overlap in the file", "e")


def test_header_of_a_million_values_is_refused(tmp_path):
    """~120 bytes per parsed value against ~2 bytes of text: a bound on the count keeps a 100 MB
    header from costing gigabytes (json.cpp, kMaxValues)."""
    C = native()
    raw = b"[" + b"0," * (1 << 20) + b"0]"
    ck, path = checkpoint(tmp_path / "ck", len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(ValueError) as e:
        C.Engine(ck)
    assert str(e.value).startswith(path + ": ")
    assert re.search(r"invalid JSON at byte 2097151: too many values \(more than 1048576\)",
                     str(e.value)), e.value
    # the array and 2^20 - 1 numbers are within the bound: only "not an object"
    raw = b"[" + b"0," * ((1 << 20) - 2) + b"0]"
    ck, path = checkpoint(tmp_path / "ck2", len(raw).to_bytes(8, "little") + raw)
    with pytest.raises(ValueError, match="header must be a JSON object"):
        C.Engine(ck)


def test_not_a_regular_file(tmp_path):
    C = native()
    ck, path = checkpoint(tmp_path / "ck", b"")
    os.remove(path)
    os.mkdir(path)
    with pytest.raises(ValueError, match="not a regular file") as e:
        C.Engine(ck)
    assert str(e.value).startswith(path + ": ")
    # a FIFO would block open() until a writer came; it is refused at once
    os.rmdir(path)
    os.mkfifo(path)
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    out = {}

    def load():
        try:
            C.Engine(ck)
        except ValueError as err:
            out["err"] = str(err)
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the loader blocked on a FIFO"
    assert out["err"].startswith(path + ": ") and "not a regular file" in out["err"]
    # and a FIFO in place of config.json
    os.remove(path)
    with open(path, "wb") as f:
        f.write(seed("ok-hf.safetensors"))
    cfg = os.path.join(ck, "config.json")
    os.remove(cfg)
    os.mkfifo(cfg)
    out.clear()
    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the loader blocked on a FIFO"
    assert out["err"].startswith(cfg + ": ") and "not a regular file" in out["err"]


# ------------------------------------------------------------------------------ config.json
@pytest.mark.parametrize("drop,text,pattern", [
    (["rope_scaling"], '"rope_scaling_factor": 1e300', r"context length .* is too large"),
    (["swiglu_limit"], '"swiglu_limit": 1e39',
     "swiglu_limit and rms_norm_eps must be within the range of a float"),
    (["num_attention_heads", "head_dim", "num_key_value_heads"],
     '"num_attention_heads": 65536, "head_dim": 65536, "num_key_value_heads": 1',
     r"num_heads \* head_dim = 4294967296: too large"),
    ([], '"hidden_size": 32', r"invalid JSON: duplicate key 'hidden_size'"),
    (["rope_theta"], '"rope_theta": 1e400',
     r"invalid JSON at byte \d+: number out of the range of a double"),
    (["rope_theta"], '"rope_theta": 0150000', r"invalid JSON at byte \d+: bad number \(leading zero\)"),
])
def test_broken_config_is_refused_by_name(tmp_path, drop, text, pattern):
    """config.json of the micro checkpoint with the keys `drop` replaced by the raw JSON `text`."""
    C = native()
    ck, _ = checkpoint(tmp_path / "ck", seed("ok-hf.safetensors"))
    cfg = os.path.join(ck, "config.json")
    body = {k: v for k, v in json.loads(seed("cfg-hf.json")).items() if k not in drop}
    with open(cfg, "w") as f:
        f.write("{" + text + ", " + json.dumps(body)[1:])
    with pytest.raises(ValueError) as e:
        C.Engine(ck)
    assert str(e.value).startswith(cfg + ": "), e.value
    assert re.search(pattern, str(e.value)), e.value


# ------------------------------------------------------------------------------ the fuzz target
@pytest.fixture(scope="module")
def fuzz_exe(tmp_path_factory):
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed")
    b = str(tmp_path_factory.mktemp("fuzz") / "build")
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    for cmd in (["cmake", "-S", ROOT, "-B", b, "-DGPTOSS_CUDA=OFF", "-DGPTOSS_SANITIZE=address",
                 "-DCMAKE_BUILD_TYPE=RelWithDebInfo", *gen],
                ["cmake", "--build", b, "-j", str(min(os.cpu_count() or 2, 4)), "--target",
                 "fuzz_checkpoint"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return os.path.join(b, "fuzz_checkpoint")


SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def run_driver(exe, tmp_path, *args, timeout=300):
    env = {**os.environ, **SAN_ENV, "FUZZ_ARTIFACT_DIR": str(tmp_path)}
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_fuzz_target_under_address_sanitizer(fuzz_exe, tmp_path):
    r = run_driver(fuzz_exe, tmp_path, CORPUS, "60")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Sanitizer" not in out and "runtime error" not in out, out[-6000:]
    assert "WRONG seed" not in out
    m = re.search(r"fuzz_driver: (\d+) seeds, (\d+) mutants in ([\d.]+) s", out)
    assert m and int(m.group(1)) == len(os.listdir(CORPUS)), out[-3000:]
    assert int(m.group(2)) > 1000, out[-3000:]
    # the mutants reach the checks behind the JSON: some are accepted, some fail on offsets
    assert re.search(r"^\s+\d+  accepted$", out, re.M), out[-3000:]
    assert not os.listdir(tmp_path)  # no crash or hang artifacts


@pytest.mark.slow
def test_fuzz_driver_holds_seeds_to_their_names(fuzz_exe, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ok-not-really.safetensors").write_bytes(seed("bad-overlap.safetensors"))
    (corpus / "bad-not-really.safetensors").write_bytes(seed("ok-dtypes.safetensors"))
    art = tmp_path / "art"
    art.mkdir()
    r = run_driver(fuzz_exe, art, str(corpus), "1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "WRONG seed ok-not-really.safetensors: ok-not-really.safetensors: tensors 'a' and 'b' " \
           "overlap" in r.stdout
    assert "WRONG seed bad-not-really.safetensors: accepted" in r.stdout
    # and a saved input replays
    r = run_driver(fuzz_exe, art, "--run", str(corpus / "ok-not-really.safetensors"))
    assert r.returncode == 0 and "ran (132 bytes)" in r.stdout, r.stdout + r.stderr
