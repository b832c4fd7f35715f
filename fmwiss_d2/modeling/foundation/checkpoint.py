"""Checkpoint helpers shared by the CLIP and DINO wrappers and their pretraining tools.

* :func:`read_checkpoint` reads a file and names it when it is missing or unreadable;
* :func:`check_state_dict` compares a checkpoint with a model key by key and shape by shape and raises a
  :class:`CheckpointMismatchError` naming the file, the expected architecture and the first differences
  (both defined in :mod:`fmwiss_d2.utils`, shared with the engine's checkpointer);
* :func:`atomic_save` writes through a temporary sibling file renamed into place;
* :func:`cache_key` hashes the (seed, data, config) a pretrained model depends on;
* :func:`file_lock` serializes concurrent pretraining of the same cached model;
* :func:`require_synthetic_world` refuses an ``"auto:shapes"`` checkpoint for a config on real data.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Iterator

import torch

from ...utils.checkpoint_files import check_state_dict, damaged_checkpoint_error, is_damaged
from ...utils.errors import CheckpointMismatchError
from ...utils.io import atomic_open

__all__ = [
    "CheckpointMismatchError", "read_checkpoint", "check_state_dict", "atomic_save", "cache_key", "file_lock",
    "foundation_cache_dir", "require_synthetic_world",
]

SYNTHETIC_PREFIXES = ("shapes_", "tiny_shapes_")  # names of the synthetic world's datasets (and tasks on it)


def foundation_cache_dir(cache_dir: str | None = None) -> str:
    """Folder of the cached tiny foundation models: ``<cache>/foundation`` (cache = $FMWISS_CACHE or ~/.cache)."""
    from fmwiss_d2.data.datasets.shapes import default_cache_dir

    return os.path.join(cache_dir or default_cache_dir(), "foundation")


def read_checkpoint(path: str, what: str = "checkpoint") -> dict:
    """Loads ``path`` on the CPU. Plain pickles of tensors load with ``weights_only=True``; TorchScript
    archives (OpenAI's released CLIP files) are read through ``torch.jit.load`` and give their state dict."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path!r} (no such file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - retried as TorchScript below, re-raised with the file name
        first_error = e
    try:
        return torch.jit.load(path, map_location="cpu").state_dict()
    except Exception:  # noqa: BLE001
        pass
    if is_damaged(path):
        advice = "Delete it (a cached tiny model is pretrained again on first use; fetch a downloaded one again)."
        raise damaged_checkpoint_error(path, first_error, advice) from first_error
    raise RuntimeError(f"cannot read {what} {path!r}: {first_error}") from first_error


def atomic_save(obj, path: str) -> None:
    """``torch.save`` through :func:`fmwiss_d2.utils.io.atomic_open` (temporary sibling file, fsync'ed and renamed
    into place)."""
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def cache_key(*parts) -> str:
    """A short stable hash of JSON-serializable parts (seed, world spec, model config, training config)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive advisory lock on ``path + '.lock'`` (POSIX); a no-op where ``fcntl`` is unavailable."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_synthetic(dataset_name: str) -> bool:
    """A dataset of the synthetic world: by name, by its ``world_spec`` metadata (any registration prefix), or
    through the base dataset of an incremental step."""
    from detectron2.data import MetadataCatalog

    if dataset_name.startswith(SYNTHETIC_PREFIXES):
        return True
    if dataset_name not in MetadataCatalog.list():
        return False
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("world_spec") is not None:
        return True
    base = meta.get("base_dataset")
    return bool(base) and base != dataset_name and _is_synthetic(base)


def require_synthetic_world(cfg, key: str, example: str) -> None:
    """``"auto:shapes"`` means a tiny model pretrained on the synthetic world: a config that trains or tests on
    other data must not get it silently. Raises a ValueError naming the config ``key`` to set instead."""
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    foreign = [n for n in names if not _is_synthetic(n)]
    if foreign:
        raise ValueError(
            f"{key} is 'auto:shapes' (a tiny model pretrained on the synthetic world), but the config's datasets "
            f"{foreign} are not the synthetic world's. Set {key} to a local {example}, or to '' for random weights.")
