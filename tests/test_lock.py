"""OutputDirLock: one holder per folder, stale locks taken over, released on exit."""
import json
import os
import socket
import subprocess
import sys

import pytest

from fmwiss_d2.engine.lock import OutputDirLock, OutputDirLockedError
from fmwiss_d2.utils.errors import UserError


def _dead_pid():
    """The PID of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_lock_is_refused_naming_folder_and_holder(tmp_path):
    folder = str(tmp_path / "out")
    with OutputDirLock(folder):
        holder = json.load(open(os.path.join(folder, ".lock")))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputDirLockedError) as e:
            with OutputDirLock(folder):
                pass
        msg = str(e.value)
        assert repr(folder) in msg and f"process {os.getpid()} on {socket.gethostname()}" in msg
        assert "another OUTPUT_DIR" in msg and "delete" in msg
        assert isinstance(e.value, UserError)
        assert os.path.exists(os.path.join(folder, ".lock"))  # the refused one did not remove the holder's lock
    assert not os.path.exists(os.path.join(folder, ".lock"))  # released on exit
    with OutputDirLock(folder):  # and can be taken again
        pass


def test_released_when_the_body_raises(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with OutputDirLock(str(tmp_path)):
            1 / 0
    assert os.listdir(tmp_path) == []


def test_stale_lock_is_taken_over(tmp_path, caplog):
    pid = _dead_pid()
    with open(tmp_path / ".lock", "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "since": "yesterday", "token": "old"}, f)
    with OutputDirLock(str(tmp_path)):
        assert json.load(open(tmp_path / ".lock"))["pid"] == os.getpid()
    assert f"left by process {pid}" in caplog.text
    assert not os.path.exists(tmp_path / ".lock")


def test_lock_of_another_host_or_unreadable_is_not_taken_over(tmp_path):
    with open(tmp_path / ".lock", "w") as f:
        json.dump({"pid": _dead_pid(), "host": "elsewhere.invalid", "since": "now", "token": "x"}, f)
    with pytest.raises(OutputDirLockedError, match="on elsewhere.invalid"):
        OutputDirLock(str(tmp_path)).acquire()
    (tmp_path / ".lock").write_text("")  # its owner is still writing it
    with pytest.raises(OutputDirLockedError, match="unknown process"):
        OutputDirLock(str(tmp_path)).acquire()


def test_disabled_lock_is_a_no_op(tmp_path):
    with OutputDirLock(str(tmp_path / "a")):
        with OutputDirLock(str(tmp_path / "a"), enabled=False):  # a DDP rank other than 0
            pass
    assert not os.path.exists(tmp_path / "a" / ".lock")
