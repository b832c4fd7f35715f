"""One run per output folder: two trainings writing the same checkpoints would silently overwrite each other.

:class:`OutputDirLock` creates ``<folder>/.lock`` with ``O_CREAT | O_EXCL`` (atomic: exactly one process
succeeds) holding the PID and host of its owner. A lock left by a process that died (same host, PID gone) is
taken over with a warning; a live one raises :class:`OutputDirLockedError`. Under DDP only rank 0 takes it:
pass ``enabled=comm.is_main_process()``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from typing import Optional

from ..utils.errors import UserError

__all__ = ["OutputDirLock", "OutputDirLockedError", "LOCK_NAME"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class OutputDirLockedError(UserError, RuntimeError):
    """Another live process holds the output folder's lock."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read(path: str) -> Optional[dict]:
    """The lock's content, or None when it cannot be parsed (e.g. its owner is still writing it)."""
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


class OutputDirLock:
    """Context manager holding ``<folder>/.lock`` while a run writes into ``folder`` (module docstring).

    Args:
        folder: the output folder (created if missing).
        enabled: take the lock; False makes this a no-op (DDP ranks other than 0).
    """

    def __init__(self, folder: str, *, enabled: bool = True):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.enabled = enabled
        self._token: Optional[str] = None

    def __enter__(self) -> "OutputDirLock":
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        token = uuid.uuid4().hex
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "token": token}
        for _ in range(3):  # a stale lock is removed, then creation is retried
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read(self.path)
                if holder is None or not self._is_stale(holder) or not self._remove_if_unchanged(holder):
                    raise OutputDirLockedError(self._locked_message(holder)) from None
                logger.warning("Took over the lock of %s left by process %d on %s, which no longer runs",
                               self.folder, holder["pid"], holder.get("host"))
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._token = token
            return
        raise OutputDirLockedError(self._locked_message(_read(self.path)))

    def release(self) -> None:
        """Removes the lock if this object holds it (and it was not taken over meanwhile)."""
        if self._token is None:
            return
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self._token:
            os.remove(self.path)
        self._token = None

    @staticmethod
    def _is_stale(holder: dict) -> bool:
        """Whether the holder is a process of this host that no longer exists (other hosts: unknowable)."""
        return holder.get("host") == socket.gethostname() and not _pid_alive(holder["pid"])

    def _remove_if_unchanged(self, seen: dict) -> bool:
        """Removes the stale lock ``seen``, unless another process replaced it meanwhile: the check and the
        removal happen under an exclusive ``flock`` of the folder, so two processes cannot both take over."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no takeover, the user deletes the file
            return False
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(dfd, fcntl.LOCK_EX)
            if _read(self.path) != seen:
                return False
            os.remove(self.path)
            return True
        finally:
            os.close(dfd)  # releases the flock

    def _locked_message(self, holder: Optional[dict]) -> str:
        who = ("an unknown process (the lock file is empty or unreadable)" if holder is None else
               f"process {holder['pid']} on {holder.get('host')} (since {holder.get('since')})")
        return (f"output folder {self.folder!r} is in use by {who}. Wait for that run to finish, or set another "
                f"OUTPUT_DIR; if no such run exists any more, delete {self.path!r} and rerun.")
