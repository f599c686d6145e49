"""Find a Hugging Face repository id (`openai/gpt-oss-20b`) in the local Hugging Face cache.

Nothing here touches the network: a repository is found where `huggingface-cli download` (or
`huggingface_hub.snapshot_download`) left it, in the hub cache:

    <cache>/models--<owner>--<name>/refs/<ref>             the commit a ref points to
    <cache>/models--<owner>--<name>/snapshots/<commit>/    the files of that commit

The cache is $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
~/.cache/huggingface/hub. `owner/name@rev` picks a ref (branch or tag) or a commit; without it,
refs/main, or the only snapshot when there is no refs/main.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


class NotInCache(FileNotFoundError):
    """The repository (or revision) is not in the local cache; the message says where we looked."""


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and not os.path.exists(name)


def hub_cache_dirs() -> List[Tuple[str, str]]:
    """(directory, where it came from) of the hub cache, in the order it is looked up."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return [(env["HF_HUB_CACHE"], "$HF_HUB_CACHE")]
    if env.get("HUGGINGFACE_HUB_CACHE"):
        return [(env["HUGGINGFACE_HUB_CACHE"], "$HUGGINGFACE_HUB_CACHE")]
    if env.get("HF_HOME"):
        return [(os.path.join(env["HF_HOME"], "hub"), "$HF_HOME/hub")]
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [(os.path.join(base, "huggingface", "hub"), "the default cache")]


def resolve_repo_id(name: str) -> str:
    """The snapshot directory of `owner/name[@rev]` in the local hub cache."""
    repo, _, rev = name.partition("@")
    folder = "models--" + repo.replace("/", "--")
    looked: List[str] = []
    for cache, origin in hub_cache_dirs():
        root = os.path.join(cache, folder)
        snaps = os.path.join(root, "snapshots")
        if not os.path.isdir(snaps):
            looked.append(f"{snaps} ({origin}): not there")
            continue
        found, why = _pick(root, snaps, rev or None)
        if found:
            return found
        looked.append(f"{snaps} ({origin}): {why}")
    raise NotInCache(
        f"model {name!r} is not a directory, and the Hugging Face cache has no usable snapshot of "
        f"it (gptoss never downloads). Looked in: " + "; ".join(looked) +
        f". Download it first (huggingface-cli download {repo}), set HF_HOME or HF_HUB_CACHE to "
        "the cache holding it, or pass the checkpoint's directory.")


def _pick(root: str, snaps: str, rev: Optional[str]) -> Tuple[Optional[str], str]:
    available = sorted(d for d in os.listdir(snaps) if os.path.isdir(os.path.join(snaps, d)))
    if rev is not None and rev in available:           # a commit hash
        return os.path.join(snaps, rev), ""
    ref = rev or "main"
    ref_file = os.path.join(root, "refs", ref)
    if os.path.isfile(ref_file):
        with open(ref_file) as f:
            commit = f.read().strip()
        path = os.path.join(snaps, commit)
        if os.path.isdir(path):
            return path, ""
        return None, f"refs/{ref} points to {commit}, which has no snapshot"
    if rev is None and len(available) == 1:
        return os.path.join(snaps, available[0]), ""
    if rev is not None:
        return None, (f"no ref or snapshot named {rev!r} (snapshots: "
                      f"{', '.join(available) or 'none'})")
    if not available:
        return None, "no snapshots"
    return None, (f"no refs/main and {len(available)} snapshots ({', '.join(available)}); "
                  "name one as owner/name@commit")
