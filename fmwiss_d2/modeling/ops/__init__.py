"""Multi-scale deformable attention (Deformable DETR): the op (compiled kernels or the PyTorch reference)
and the ``MSDeformAttn`` layer. Importing this package never needs ``fmwiss_d2._C``."""
from .functions import describe_kernel, is_deterministic, kernel_available, ms_deform_attn, set_deterministic
from .modules import MSDeformAttn
from .reference import ms_deform_attn_reference

__all__ = [
    "MSDeformAttn",
    "describe_kernel",
    "is_deterministic",
    "kernel_available",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "set_deterministic",
]
