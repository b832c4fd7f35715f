"""fmwiss_d2: label-efficient segmentation (incremental, weakly supervised, zero-shot) on Detectron2.

Importing the package registers its datasets lazily (nothing is read or generated until a dataset is
requested) and never needs the compiled extension ``fmwiss_d2._C``.
"""
__version__ = "0.1.0"


def has_compiled_ops() -> bool:
    """True when ``fmwiss_d2._C`` (deformable-attention kernels) was built by ``setup.py``."""
    try:
        from fmwiss_d2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


from . import data  # noqa: E402,F401  (registers datasets in detectron2's catalogs)
from .config import add_fmwiss_config  # noqa: E402,F401
