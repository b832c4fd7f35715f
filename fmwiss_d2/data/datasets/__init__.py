"""Dataset registration (lazy: importing registers names, loading reads files)."""
from . import builtin  # noqa: F401
