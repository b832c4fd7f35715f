"""Atomic file writes: readers never see a half-written file or folder, an interrupted writer leaves none behind."""
import contextlib
import json
import os
import shutil
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what a plain open() creates; mkstemp alone would leave 0600
TEMPORARY_PREFIX = ".tmp-"  # atomic_open's temporary files: never part of a finished folder


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", *, fsync: bool = False, **kwargs):
    """Opens a temporary file next to ``path``; on success gives it the usual umask-based permissions and
    renames it to ``path``, on error removes it.

    ``fsync``: also flush the data to disk before the rename and the rename after it, so that a power loss
    leaves the old file or the new one, never an empty one (costs a few milliseconds: for checkpoints, not
    for thousands of small files)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMPORARY_PREFIX, suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        if fsync:
            _fsync_directory(folder)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _fsync_directory(folder: str) -> None:
    """Makes a rename in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str, obj, **dump_kwargs) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, **dump_kwargs)


@contextlib.contextmanager
def atomic_directory(root: str, is_complete=os.path.isdir):
    """Yields a temporary sibling folder of ``root`` to fill; on success renames it to ``root``. If another
    process renamed its own copy first, that copy is kept when ``is_complete(root)`` says it is whole. The
    temporary folder is removed in every case."""
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp-", dir=parent)
    try:
        yield tmp
        try:
            os.rename(tmp, root)
        except OSError:  # another process finished first: keep its copy
            if not is_complete(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
