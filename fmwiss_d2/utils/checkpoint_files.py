"""Reading checkpoint files and comparing state dicts, for the engine's checkpointer and the foundation models.

It lives in ``utils`` because both layers use it (``modeling`` may not import ``engine``).
"""
from __future__ import annotations

import os
import zipfile
from typing import Mapping, Optional

import torch

from .errors import CheckpointMismatchError, DamagedCheckpointError

__all__ = ["load_checkpoint_file", "is_loadable", "is_damaged", "damaged_checkpoint_error", "check_state_dict"]


def is_damaged(path: str) -> bool:
    """Whether ``path`` is empty or not a complete zip archive (every ``torch.save`` since PyTorch 1.6 writes
    one; a save killed half-way lacks the archive's central directory, a corrupted one fails its CRCs)."""
    try:
        if os.path.getsize(path) == 0:
            return True
        with zipfile.ZipFile(path) as z:
            return z.testzip() is not None
    except (zipfile.BadZipFile, OSError, EOFError):
        return True


RESUME_ADVICE = "Delete it, or rerun with --resume to fall back to the newest loadable checkpoint in its folder."


def damaged_checkpoint_error(path: str, cause, advice: str = RESUME_ADVICE) -> DamagedCheckpointError:
    """The error for a damaged ``path``: names the file, the reader's ``cause`` and what to do."""
    cause = str(cause).split(". ")[0]  # torch's reader appends a paragraph of guesses
    return DamagedCheckpointError(
        f"checkpoint {path!r} cannot be read: it is truncated or not a PyTorch checkpoint ({cause}). {advice}"
    )


def load_checkpoint_file(path: str, **load_kwargs):
    """``torch.load(path, map_location="cpu", **load_kwargs)``; a damaged file (:func:`is_damaged`) raises
    :class:`DamagedCheckpointError` naming it. Other failures (e.g. ``weights_only`` refusing a pickled class)
    propagate unchanged: the file is whole, the problem is elsewhere."""
    try:
        return torch.load(path, map_location="cpu", **load_kwargs)
    except Exception as e:  # noqa: BLE001 - classified, then re-raised
        if is_damaged(path):
            raise damaged_checkpoint_error(path, e) from e
        raise


def is_loadable(path: str) -> bool:
    """Whether ``path`` loads (a full ``torch.load`` on the CPU; ``weights_only=False``: meant for the run's
    own checkpoints, which also hold optimizer and trainer state)."""
    try:
        torch.load(path, map_location="cpu", weights_only=False)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not loadable"
        return False


def check_state_dict(
    model_state: Mapping[str, torch.Tensor],
    ckpt_state: Mapping[str, torch.Tensor],
    *,
    path: str,
    architecture: str,
    note: Optional[str] = None,
    max_report: int = 5,
) -> None:
    """Raises :class:`CheckpointMismatchError` unless both dicts have the same keys with the same shapes.

    The message names the file, the architecture the model was built as, an optional ``note`` (e.g. what the
    checkpoint says it is), and the first ``max_report`` missing keys, unexpected keys and shape mismatches
    (with both shapes).
    """
    missing = [k for k in model_state if k not in ckpt_state]
    unexpected = [k for k in ckpt_state if k not in model_state]
    shapes = [
        f"{k}: checkpoint {tuple(ckpt_state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in ckpt_state and tuple(ckpt_state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def _few(items):
        more = f" (+{len(items) - max_report} more)" if len(items) > max_report else ""
        return ", ".join(items[:max_report]) + more

    lines = [f"checkpoint {path!r} does not match the expected architecture {architecture}:"]
    if note:
        lines.append(f"  {note}")
    if shapes:
        lines.append(f"  {len(shapes)} shape mismatches: {_few(shapes)}")
    if missing:
        lines.append(f"  {len(missing)} keys missing from the checkpoint: {_few(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected keys in the checkpoint: {_few(unexpected)}")
    raise CheckpointMismatchError("\n".join(lines))
