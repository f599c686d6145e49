"""o200k_harmony from the shipped vocabulary: ids, special tokens, and agreement with tiktoken's
own o200k_harmony (given the same vocabulary file, offline)."""
import hashlib
import os
import shutil

import pytest

import gptoss
from gptoss import tokenizer as tk


def test_hello_world():
    enc = gptoss.get_tokenizer()
    assert enc.encode("Hello world") == [13225, 2375]
    assert enc.decode([13225, 2375]) == "Hello world"
    assert enc.n_vocab == 201088


@pytest.mark.parametrize("text,id_", list(tk.NAMED_SPECIAL_TOKENS.items()))
def test_named_special_tokens(text, id_):
    enc = gptoss.get_tokenizer()
    assert enc.encode(text, allowed_special="all") == [id_]
    assert enc.decode([id_]) == text


def test_reserved_tokens_fill_the_vocab():
    enc = gptoss.get_tokenizer()
    assert enc.encode("<|reserved_200001|>", allowed_special="all") == [200001]
    assert enc.encode("<|reserved_201087|>", allowed_special="all") == [201087]
    specials = tk.special_tokens()
    assert set(specials.values()) == {199998, 199999} | set(range(200000, 201088))


def test_special_text_is_refused_unless_allowed():
    enc = gptoss.get_tokenizer()
    with pytest.raises(ValueError):
        enc.encode("<|start|>")
    assert enc.encode("<|start|>", disallowed_special=()) != [200006]


def test_roundtrip_unicode():
    enc = gptoss.get_tokenizer()
    s = "Grüße, 世界! 🙂 def f(x):\n\treturn x**2  # ok"
    assert enc.decode(enc.encode(s)) == s


def test_shipped_vocab_verified(tmp_path):
    path = tk.vocab_path()
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == tk.O200K_BASE_SHA256
    bad = tmp_path / "o200k_base.tiktoken"
    data = open(path, "rb").read()
    bad.write_bytes(data[:-10])
    with pytest.raises(ValueError, match="sha256"):
        tk.load_ranks(str(bad))


def test_agrees_with_tiktoken_o200k_harmony(tmp_path, monkeypatch):
    """tiktoken's own encoding, fed our file through its cache (so it never downloads)."""
    import tiktoken
    import tiktoken_ext.openai_public as pub
    if not hasattr(pub, "o200k_harmony"):
        pytest.skip("this tiktoken has no o200k_harmony")
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    shutil.copy(tk.vocab_path(), tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    theirs = tiktoken.core.Encoding(**pub.o200k_harmony())
    ours = gptoss.get_tokenizer()
    texts = ["Hello world", "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant",
             "  leading spaces and\r\n\r\nnewlines\n", "数字 12345678 and ünïcödé", "'s 're 'LL"]
    for t in texts:
        assert ours.encode(t, allowed_special="all") == theirs.encode(t, allowed_special="all")
    for name, id_ in tk.NAMED_SPECIAL_TOKENS.items():
        assert theirs.encode(name, allowed_special="all") == [id_]
