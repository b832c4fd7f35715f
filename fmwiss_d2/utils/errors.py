"""Errors that are the user's to fix, and how command-line tools report them.

A :class:`UserError` (a wrong config value, a malformed task, a damaged cache or checkpoint, a busy output
folder) carries a message that says what to change; :func:`run_cli` prints it as one line ``error: <message>``
and exits with code 2, without a traceback that would bury it. ``FMWISS_TRACEBACK=1`` shows the traceback
anyway. Any other exception is a bug and keeps its traceback.

Each error also derives from the built-in class it was before (``ValueError``, ``RuntimeError``,
``KeyError``), so existing ``except`` clauses keep working.
"""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Optional, Sequence

__all__ = [
    "UserError", "DamagedCacheError", "CheckpointMismatchError", "DamagedCheckpointError", "UnknownNameError",
    "run_cli", "registry_get", "user_error_message", "USER_ERROR_EXIT_CODE",
]

USER_ERROR_EXIT_CODE = 2  # what argparse uses for a bad command line


class UserError(Exception):
    """An error the user fixes (config, task, dataset, checkpoint, cache); the message says how."""


class DamagedCacheError(UserError, RuntimeError):
    """A cached or dataset file is missing, truncated or unreadable; the message names it and how to rebuild it."""


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint is not the model it is loaded into (another architecture, other classes, task or step)."""


class DamagedCheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be read (a save killed half-way, a truncated copy, not a PyTorch file)."""


class UnknownNameError(UserError, KeyError):
    """A config value names nothing registered (a ``KeyError``, as detectron2's ``Registry.get`` raises)."""

    def __str__(self):  # KeyError would print the message quoted, as a key
        return str(self.args[0]) if self.args else ""


def registry_get(registry, name: str, config_key: str):
    """``registry.get(name)``, but an unknown name raises :class:`UnknownNameError` listing the valid names
    and the config key that chose it (detectron2 says only "No object named ... found")."""
    if name in registry:
        return registry.get(name)
    known = ", ".join(sorted(n for n, _ in registry))
    raise UnknownNameError(f"{config_key}: unknown name {name!r}; registered: {known}. "
                           f"Set {config_key} to one of these.")


def user_error_message(e: BaseException) -> Optional[str]:
    """The one-line message for an error that is the user's to fix, or None for a bug.

    Besides :class:`UserError`: YAML syntax errors, a missing file, and the config errors of yacs and
    detectron2 (unknown key, type mismatch, odd ``KEY VALUE`` list, missing config file), which they raise as
    plain ``KeyError`` / ``ValueError`` / ``AssertionError`` recognisable by their messages."""
    import yaml

    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, yaml.YAMLError):
        return f"invalid YAML: {e}".replace("\n", " ")
    if isinstance(e, FileNotFoundError):
        return str(e)
    text = str(e.args[0]) if e.args else ""
    config_markers = {  # yacs: unknown key in a file / on the command line, wrong type, odd KEY VALUE list;
        KeyError: ("Non-existent config key",),  # detectron2: missing config file
        ValueError: ("for config key",),
        AssertionError: ("Non-existent key", "Override list has odd length", "does not exist!"),
    }
    for cls, markers in config_markers.items():
        if isinstance(e, cls) and any(m in text for m in markers):
            return f"config: {text}"
    return None


def run_cli(main: Callable, argv: Optional[Sequence[str]] = None):
    """Runs ``main()`` (``main(argv)`` when ``argv`` is given) for a command-line tool and returns its result.

    An error that is the user's to fix (:func:`user_error_message`) is printed as ``error: <message>`` on
    stderr and exits with code 2; ``FMWISS_TRACEBACK=1`` prints the traceback before it. Other exceptions
    propagate unchanged. In a multi-process launch each worker process must call it (errors raised inside
    ``torch.multiprocessing`` workers reach the parent wrapped)."""
    try:
        return main() if argv is None else main(argv)
    except Exception as e:  # noqa: BLE001 - classified below, re-raised unless it is the user's to fix
        message = user_error_message(e)
        if message is None:
            raise
        if os.environ.get("FMWISS_TRACEBACK", "") not in ("", "0"):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
