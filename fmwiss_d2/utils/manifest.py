"""Caches that check themselves: a ``manifest.json`` listing every file of a cache folder with its size.

Written last, inside the folder, when the cache is complete; checked (one ``os.stat`` per file, no decoding)
each time the cache is used, so a file that was deleted or cut short is reported by name, with the way to
regenerate the cache, instead of failing later somewhere deep in a data loader.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from .errors import DamagedCacheError
from .io import TEMPORARY_PREFIX, atomic_write_json

MANIFEST = "manifest.json"


def write_manifest(root: str) -> None:
    """Records the size of every file under ``root`` (relative POSIX path -> bytes), atomically.

    Temporary files of :func:`~fmwiss_d2.utils.io.atomic_open` (``.tmp-*``) are left out: another process
    filling the same cache may be writing one, and renames it (or removes it) at any moment."""
    sizes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(TEMPORARY_PREFIX):
                continue
            path = os.path.join(folder, name)
            sizes[os.path.relpath(path, root).replace(os.sep, "/")] = os.path.getsize(path)
    sizes.pop(MANIFEST, None)
    atomic_write_json(os.path.join(root, MANIFEST), {"files": sizes}, sort_keys=True, separators=(",", ":"))


def read_manifest(root: str) -> Optional[Dict[str, int]]:
    """The manifest's sizes, or None when the folder has no manifest; an unreadable one raises
    :class:`DamagedCacheError`."""
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            return json.load(f)["files"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as e:
        raise DamagedCacheError(f"{os.path.join(root, MANIFEST)} is unreadable ({e})") from e


def manifest_problems(root: str, sizes: Dict[str, int]) -> List[str]:
    """``"<file> missing"`` / ``"<file> has N bytes, expected M"`` for every file that does not match."""
    problems = []
    for rel, size in sizes.items():
        try:
            actual = os.stat(os.path.join(root, rel)).st_size
        except FileNotFoundError:
            problems.append(f"{rel} missing")
            continue
        if actual != size:
            problems.append(f"{rel} has {actual} bytes, expected {size}")
    return problems


def damaged(what: str, root: str, problems: List[str], fix: str = "") -> DamagedCacheError:
    """The error of a damaged cache folder: what it is, the first problems, and how to regenerate it."""
    more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
    fix = fix or "it is computed again on the next run"
    return DamagedCacheError(f"{what} {root!r} is damaged: {'; '.join(problems[:5])}{more}. Delete that folder "
                             f"(rm -rf {root!r}) and rerun: {fix}.")


def check_manifest(what: str, root: str, fix: str = "") -> bool:
    """Checks ``root`` against its manifest; False when it has none (the caller decides), raises
    :class:`DamagedCacheError` naming the bad files otherwise."""
    sizes = read_manifest(root)
    if sizes is None:
        return False
    problems = manifest_problems(root, sizes)
    if problems:
        raise damaged(what, root, problems, fix)
    return True
