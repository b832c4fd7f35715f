"""Methods: training regimes as registered ``nn.Module``\\ s that own the model they train, their trainable
parts and their frozen ones (see :mod:`.base`). Chosen with ``METHOD.NAME``; a method never modifies the
models' code: it uses the model-family contract of ``SegmentorBase``.
"""
from .base import (  # noqa: F401
    METHOD_REGISTRY, Finetune, Method, MethodConfigError, Supervised, build_method, cosine_schedule,
)
from . import mib  # noqa: F401  (registers "MiB")
from . import dupl  # noqa: F401  (registers "DuPL")
from . import fmwiss  # noqa: F401  (registers "FMWISS")
from . import pading  # noqa: F401  (registers "PADing")
