"""o200k_harmony, built offline from the vocabulary this package ships (third_party/).

The byte-pair ranks are read from the shipped `o200k_base.tiktoken`, its sha256 verified, and
handed to tiktoken with o200k_base's split pattern and the Harmony special tokens listed in this module
section 6. Nothing is ever downloaded.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os
from typing import Dict

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
VOCAB_FILE = "o200k_base.tiktoken"

# o200k_base's pre-tokenisation pattern (the regular expression tiktoken splits text with).
O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

VOCAB_SIZE = 201088
NAMED_SPECIAL_TOKENS: Dict[str, int] = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
    "<|endofprompt|>": 200018,
}
STARTOFTEXT, ENDOFTEXT, RETURN, CONSTRAIN = 199998, 199999, 200002, 200003
CHANNEL, START, END, MESSAGE, CALL, ENDOFPROMPT = 200005, 200006, 200007, 200008, 200012, 200018


def special_tokens() -> Dict[str, int]:
    """Every special token: the named ones plus `<|reserved_N|>` for the other ids up to 201087."""
    out = dict(NAMED_SPECIAL_TOKENS)
    taken = set(out.values())
    for i in range(200000, VOCAB_SIZE):
        if i not in taken:
            out[f"<|reserved_{i}|>"] = i
    return out


def vocab_path() -> str:
    """The shipped vocabulary: installed as package data, or third_party/ in a source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    candidates = [os.path.join(here, "_data", VOCAB_FILE),
                  os.path.join(here, "..", "..", "third_party", VOCAB_FILE)]
    for c in candidates:
        if os.path.exists(c):
            return os.path.normpath(c)
    raise FileNotFoundError(f"the o200k_base vocabulary is missing: looked for {candidates}; the "
                            "package is incompletely installed (reinstall gptoss)")


def load_ranks(path: str) -> Dict[bytes, int]:
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != O200K_BASE_SHA256:
        raise ValueError(f"{path}: sha256 {digest} does not match o200k_base "
                         f"({O200K_BASE_SHA256}); the file is corrupt or not o200k_base")
    ranks: Dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line:
            continue
        tok, rank = line.split()
        ranks[base64.b64decode(tok)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """The o200k_harmony tokenizer: a `tiktoken.Encoding` (encode, decode, special tokens)."""
    import tiktoken

    path = vocab_path()
    return tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=O200K_PATTERN,
        mergeable_ranks=load_ranks(path),
        special_tokens=special_tokens(),
        explicit_n_vocab=VOCAB_SIZE,
    )
