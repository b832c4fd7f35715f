"""The ``fmwiss_d2::ms_deform_attn`` operator: compiled kernels when built, else the PyTorch reference.

The op is registered with :func:`torch.library.custom_op`, so one code path serves eager mode, autograd,
``torch.compile`` and ``torch.export``:

* ``fmwiss_d2::ms_deform_attn`` (forward) and ``fmwiss_d2::ms_deform_attn_backward`` are opaque operators
  with fake (meta) implementations giving their output shapes;
* the forward's autograd formula calls the backward operator;
* each operator's implementation dispatches at run time: to ``fmwiss_d2._C`` (the C++ CPU kernel for
  float32/float64, the CUDA kernel for float16/bfloat16/float32/float64 when the extension was built with
  CUDA), otherwise to :mod:`.reference` (``grid_sample`` and its exact backward). Inputs the kernels do not
  cover (e.g. bfloat16 on the CPU) use the reference silently; a missing or CUDA-less build warns once.

Importing this module never needs ``fmwiss_d2._C``.
"""
import warnings
from typing import Optional, Tuple

import torch
from torch import Tensor

from .reference import ms_deform_attn_reference, ms_deform_attn_reference_backward

__all__ = ["ms_deform_attn", "kernel_available"]

_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root"
_CPU_KERNEL_DTYPES = (torch.float32, torch.float64)
_CUDA_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_ext = None
_ext_loaded = False
_warned = set()


def _import_extension():
    from fmwiss_d2 import _C

    return _C


def _extension():
    """``fmwiss_d2._C`` or None; the import is attempted once."""
    global _ext, _ext_loaded
    if not _ext_loaded:
        try:
            _ext = _import_extension()
        except ImportError:
            _ext = None
        _ext_loaded = True
    return _ext


def _reset_extension_cache() -> None:
    """Forget the import attempt and the warnings given (for tests)."""
    global _ext, _ext_loaded
    _ext, _ext_loaded = None, False
    _warned.clear()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def kernel_available(device: torch.device) -> bool:
    """True when a compiled kernel exists for tensors on ``device`` (``"cpu"`` or ``"cuda"``)."""
    ext = _extension()
    device = torch.device(device)
    return ext is not None and (device.type == "cpu" or (device.type == "cuda" and bool(ext.with_cuda)))


def _kernel_for(value: Tensor):
    """The extension module when it has a kernel for ``value``'s device and dtype, else None (warning once
    when the reason is a missing build)."""
    ext = _extension()
    if ext is None:
        _warn_once(
            "missing",
            "fmwiss_d2._C is not built: multi-scale deformable attention falls back to the slow, memory-hungry "
            f"PyTorch reference (grid_sample); {_BUILD_HINT}.",
        )
        return None
    if value.device.type == "cpu":
        return ext if value.dtype in _CPU_KERNEL_DTYPES else None
    if value.device.type == "cuda":
        if not ext.with_cuda:
            _warn_once(
                "no_cuda",
                "fmwiss_d2._C was built without CUDA: multi-scale deformable attention on the GPU falls back to "
                f"the PyTorch reference; rebuild with FORCE_CUDA=1 (and CUDA_HOME set): {_BUILD_HINT}.",
            )
            return None
        return ext if value.dtype in _CUDA_KERNEL_DTYPES else None
    return None


def _check_inputs(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
    grad_output: Optional[Tensor] = None,
) -> None:
    """Shape, dtype and device checks on metadata only (no device sync), naming the faulty argument."""
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must have shape (N, S, n_heads, C), got {tuple(value.shape)}")
    if not value.is_floating_point():
        raise TypeError(f"ms_deform_attn: value must be a floating-point tensor, got {value.dtype}")
    N, _, H, C = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError(
            f"ms_deform_attn: spatial_shapes must have shape (n_levels, 2), got {tuple(spatial_shapes.shape)}"
        )
    L = spatial_shapes.shape[0]
    if level_start_index.shape != (L,):
        raise ValueError(
            f"ms_deform_attn: level_start_index must have shape (n_levels,) = ({L},), "
            f"got {tuple(level_start_index.shape)}"
        )
    for name, t in (("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)):
        if t.dtype != torch.int64:
            raise TypeError(f"ms_deform_attn: {name} must be int64, got {t.dtype}")
    loc = sampling_locations
    if loc.dim() != 6 or loc.shape[0] != N or loc.shape[2] != H or loc.shape[3] != L or loc.shape[5] != 2:
        raise ValueError(
            "ms_deform_attn: sampling_locations must have shape (N, Lq, n_heads, n_levels, n_points, 2) with "
            f"N={N}, n_heads={H}, n_levels={L}, got {tuple(loc.shape)}"
        )
    expected = (N, loc.shape[1], H, L, loc.shape[4])
    if tuple(attention_weights.shape) != expected:
        raise ValueError(
            f"ms_deform_attn: attention_weights must have shape (N, Lq, n_heads, n_levels, n_points) = "
            f"{expected}, got {tuple(attention_weights.shape)}"
        )
    named = [("sampling_locations", loc), ("attention_weights", attention_weights)]
    if grad_output is not None:
        if tuple(grad_output.shape) != (N, loc.shape[1], H * C):
            raise ValueError(
                f"ms_deform_attn: grad_output must have shape (N, Lq, n_heads * C) = {(N, loc.shape[1], H * C)}, "
                f"got {tuple(grad_output.shape)}"
            )
        named.append(("grad_output", grad_output))
    for name, t in named:
        if t.dtype != value.dtype:
            raise TypeError(f"ms_deform_attn: {name} has dtype {t.dtype} but value has {value.dtype}; they must match")
    for name, t in named + [("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)]:
        if t.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {t.device} but value is on {value.device}")


@torch.library.custom_op("fmwiss_d2::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    ext = _kernel_for(value)
    if ext is not None:
        return ext.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    N, _, H, C = value.shape
    return value.new_empty((N, sampling_locations.shape[1], H * C))


@torch.library.custom_op("fmwiss_d2::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(
    grad_output: Tensor,
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tuple[Tensor, Tensor, Tensor]:
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output)
    ext = _kernel_for(value)
    if ext is not None:
        return tuple(
            ext.ms_deform_attn_backward(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output
            )
        )
    return ms_deform_attn_reference_backward(
        grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@_ms_deform_attn_backward_op.register_fake
def _(grad_output, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attention_weights)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_loc, grad_weights = _ms_deform_attn_backward_op(
        grad_output.contiguous(), value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    needs = ctx.needs_input_grad
    return (
        grad_value if needs[0] else None,
        None,
        None,
        grad_loc if needs[3] else None,
        grad_weights if needs[4] else None,
    )


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


def ms_deform_attn(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Multi-scale deformable attention (Deformable DETR, eq. 3), differentiable in ``value``,
    ``sampling_locations`` and ``attention_weights``.

    Args:
        value: (N, S, n_heads, C) projected values of all levels, S = sum_l H_l * W_l.
        spatial_shapes: (n_levels, 2) int64 ``(H_l, W_l)``, on the device of ``value``.
        level_start_index: (n_levels,) int64, the start of each level in S (cumulative sum of H_l * W_l).
        sampling_locations: (N, Lq, n_heads, n_levels, n_points, 2) normalized ``(x, y)``; (0, 0) is the
            top-left corner of the map and (1, 1) the bottom-right one; points outside sample zeros.
        attention_weights: (N, Lq, n_heads, n_levels, n_points), usually softmaxed over levels x points.

    Returns:
        (N, Lq, n_heads * C).
    """
    return _ms_deform_attn_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
