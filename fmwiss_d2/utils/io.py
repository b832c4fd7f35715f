"""Atomic file writes: readers never see a half-written file, an interrupted writer leaves none behind."""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs):
    """Opens a temporary file next to ``path``; on success renames it to ``path``, on error removes it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj, **dump_kwargs) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, **dump_kwargs)
