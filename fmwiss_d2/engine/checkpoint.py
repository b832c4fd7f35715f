"""Checkpoints that survive a kill and say what they are.

:class:`AtomicCheckpointer` is detectron2's ``DetectionCheckpointer`` with:

* atomic writes: ``save`` and ``last_checkpoint`` go to a temporary sibling file, are fsync'ed, then renamed
  into place, so a kill leaves either the old file or the new one, never half of one;
* damage reported, not obscured: a file that cannot be read raises :class:`DamagedCheckpointError` naming it;
* a resume that falls back: ``resume_or_load(resume=True)`` loads the newest *loadable* checkpoint of the
  folder (the one ``last_checkpoint`` names first), warns about each damaged or missing one it skips, and
  starts from ``MODEL.WEIGHTS`` when none loads (fvcore would fail with "Checkpoint <dir>/ not found!");
* a stamp: every checkpoint records :func:`model_stamp` (meta-architecture, number of classes), so a strict
  load (``strict=True``) of a checkpoint of another model names both models and the first differing keys.
  The lenient default keeps detectron2's behaviour (pretrained backbones load partially, with a log).
"""
from __future__ import annotations

import logging
import os
import re
from typing import List, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..utils.checkpoint_files import check_state_dict, is_loadable, load_checkpoint_file
from ..utils.errors import CheckpointMismatchError, DamagedCheckpointError
from ..utils.io import atomic_open

__all__ = [
    "AtomicCheckpointer", "CheckpointMismatchError", "DamagedCheckpointError", "checkpoint_candidates",
    "is_loadable", "model_stamp", "newest_loadable_checkpoint", "STAMP_KEY",
]

logger = logging.getLogger(__name__)

STAMP_KEY = "model_stamp"  # where a checkpoint keeps model_stamp(model)
LAST_CHECKPOINT = "last_checkpoint"  # fvcore's name for the file naming the newest checkpoint
_MODEL_FILE = re.compile(r"model_(\d+|final)\.pth")


def model_stamp(model: torch.nn.Module) -> dict:
    """``{"meta_architecture": class name, "num_classes": int or None}`` of ``model`` (DDP-unwrapped);
    ``num_classes`` is ``model.classifier.num_classes`` when the model has one."""
    model = getattr(model, "module", model)
    classifier = getattr(model, "classifier", None)
    return {"meta_architecture": type(model).__name__, "num_classes": getattr(classifier, "num_classes", None)}


def _describe(stamp: dict) -> str:
    n = stamp.get("num_classes")
    return stamp["meta_architecture"] + ("" if n is None else f" with {n} classes")


def _read_last_checkpoint(folder: str) -> Optional[str]:
    """The basename ``last_checkpoint`` names ("" when it is empty), or None when there is no such file."""
    try:
        with open(os.path.join(folder, LAST_CHECKPOINT)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def checkpoint_candidates(folder: str) -> List[str]:
    """The checkpoints a resume may load, newest first: the file ``last_checkpoint`` names (when it exists),
    then ``model_final.pth``, then ``model_<iter>.pth`` by decreasing iteration. Nothing is read."""
    named = _read_last_checkpoint(folder)
    files = os.listdir(folder) if os.path.isdir(folder) else []
    found = [m for m in map(_MODEL_FILE.fullmatch, files) if m]
    found.sort(key=lambda m: float("inf") if m.group(1) == "final" else int(m.group(1)), reverse=True)
    ordered = ([named] if named and os.path.isfile(os.path.join(folder, named)) else []) + [m.group(0) for m in found]
    return [os.path.join(folder, f) for f in dict.fromkeys(ordered)]


def newest_loadable_checkpoint(folder: str) -> Optional[str]:
    """The first of :func:`checkpoint_candidates` that loads (:func:`is_loadable`), or None; warns about
    each one it skips."""
    for path in checkpoint_candidates(folder):
        if is_loadable(path):
            return path
        logger.warning("Skipping damaged checkpoint %s (it cannot be read)", path)
    return None


class AtomicCheckpointer(DetectionCheckpointer):
    """A ``DetectionCheckpointer`` whose files survive a kill and which resumes from the newest loadable
    checkpoint (see the module docstring).

    Args (besides ``DetectionCheckpointer``'s):
        strict: refuse a checkpoint whose keys or shapes differ from the model's, raising
            :class:`CheckpointMismatchError` (with both models named when the checkpoint has a stamp).
            Off by default: a pretrained backbone is meant to load partially.
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._loading: Optional[str] = None
        self._damaged: set = set()  # (path, size, mtime) of files found damaged, skipped by has_checkpoint

    # ------------------------------------------------------------------------------------------ writing
    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save`` (model, checkpointables, extra ``kwargs``), plus the model stamp, written
        atomically; then tags it as the last checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data[STAMP_KEY] = model_stamp(self.model)
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_open(path, "wb", fsync=True) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, LAST_CHECKPOINT), "w", fsync=True) as f:
            f.write(last_filename_basename)

    # ------------------------------------------------------------------------------------------ reading
    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {path!r} (check MODEL.WEIGHTS)")
        self._loading = path
        try:
            return super().load(path, *args, **kwargs)
        finally:  # detectron2 leaves this set when a load fails, and asserts on it at the next load
            self._parsed_url_during_load = None
            self._loading = None

    def _torch_load(self, f: str):
        try:
            return load_checkpoint_file(f)
        except DamagedCheckpointError:
            self._damaged.add(_identity(f))
            raise

    def _load_model(self, checkpoint):
        if self.strict and not checkpoint.get("matching_heuristics", False):
            self._check_strict(checkpoint)
        return super()._load_model(checkpoint)

    def _check_strict(self, checkpoint: dict) -> None:
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in checkpoint["model"].items()}
        want = model_stamp(self.model)
        have = checkpoint.get(STAMP_KEY)
        note = None if have is None else f"checkpoint is a {_describe(have)}; this config builds a {_describe(want)}"
        check_state_dict(self.model.state_dict(), state, path=str(self._loading), architecture=_describe(want),
                         note=note)

    # ------------------------------------------------------------------------------------------ resuming
    def has_checkpoint(self) -> bool:
        """Whether the folder holds a checkpoint to resume from (none of those found damaged so far)."""
        return any(_identity(p) not in self._damaged for p in checkpoint_candidates(self.save_dir))

    def get_checkpoint_file(self) -> str:
        """The newest candidate not known to be damaged ("" when none); fvcore's joins an empty
        ``last_checkpoint`` to the folder instead."""
        return next((p for p in checkpoint_candidates(self.save_dir) if _identity(p) not in self._damaged), "")

    def resume_or_load(self, path: str, *, resume: bool = True):
        """With ``resume``: loads the newest loadable checkpoint of ``save_dir`` with every checkpointable,
        skipping damaged ones with a warning; otherwise, or when none loads, only the model from ``path``."""
        if resume:
            named = _read_last_checkpoint(self.save_dir)
            if named is not None and not (named and os.path.isfile(os.path.join(self.save_dir, named))):
                logger.warning("%s names %r, which does not exist; looking for other checkpoints in %s",
                               os.path.join(self.save_dir, LAST_CHECKPOINT), named, self.save_dir)
            candidates = checkpoint_candidates(self.save_dir)
            for candidate in candidates:
                try:
                    return self.load(candidate)
                except DamagedCheckpointError as e:
                    logger.warning("Skipping a damaged checkpoint: %s", e)
            if candidates or named is not None:
                logger.warning("No loadable checkpoint in %s; starting from %r", self.save_dir, path)
        return self.load(path, checkpointables=[])


def _identity(path: str):
    """A file's (path, size, mtime): a damaged file rewritten since is a new file."""
    try:
        st = os.stat(path)
    except OSError:
        return (path, None, None)
    return (path, st.st_size, st.st_mtime_ns)
