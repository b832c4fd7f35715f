"""The ``fmwiss_d2::ms_deform_attn`` operator: compiled kernels when built, else the PyTorch reference.

The op is registered with :func:`torch.library.custom_op`, so one code path serves eager mode, autograd,
autocast, ``torch.compile`` and ``torch.export``:

* ``fmwiss_d2::ms_deform_attn`` (forward) and ``fmwiss_d2::ms_deform_attn_backward`` are opaque operators
  with fake (meta) implementations giving their output shapes;
* the forward's autograd formula calls the backward operator;
* each operator's implementation dispatches at run time: to ``fmwiss_d2._C`` (the C++ CPU kernel for
  float32/float64/bfloat16, the CUDA kernel for float16/bfloat16/float32/float64 when the extension was
  built with CUDA), otherwise to :mod:`.reference` (``grid_sample`` and its exact backward).

**dtypes.** ``sampling_locations`` and ``attention_weights`` have the value's dtype, or float32 with a
float16/bfloat16 value (half-precision features, float32 geometry: a bfloat16 location in [0, 1] is only
resolved to 2^-8, a quarter of a pixel on a 64-pixel map). Kernels accumulate in float32 for 16-bit values.

**Autocast.** The op has its own autocast rule (for ``cuda`` and ``cpu``): in an autocast region ``value``
is cast to the autocast dtype (on the CPU: bfloat16, the one 16-bit type of the CPU kernel; float32 for a
float16 CPU autocast) and the locations / weights to float32, then the kernel runs in that precision
directly: no silent float32 up-cast of the features. float64 inputs are left alone, as autocast does.

**Deterministic mode.** :func:`is_deterministic` is true when ``torch.use_deterministic_algorithms(True)``
is on, when :func:`set_deterministic` (config ``MODEL.MS_DEFORM_ATTN.DETERMINISTIC``) asked for it, or when
the environment variable ``FMWISS_MS_DEFORM_ATTN_DETERMINISTIC=1`` is set. Then the CUDA backward gathers
the gradient of ``value`` over sorted sampling corners instead of adding it with atomics, and is bitwise
reproducible; the CPU kernel is deterministic always. The switch is read when the backward runs, so it also
applies to compiled models.

**Build checks.** ``fmwiss_d2._C`` records the torch / CUDA versions and the CUDA architectures it was built
for. When they do not match the running torch, or the GPU has no code in the build, the op says so once
(naming both and the rebuild command) and uses the reference instead of failing.

Importing this module never needs ``fmwiss_d2._C``.
"""
import collections
import importlib.util
import logging
import os
import re
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import cuda_archs
from .reference import (
    ms_deform_attn_reference,
    ms_deform_attn_reference_backward,
    ms_deform_attn_reference_backward_deterministic,
)

__all__ = [
    "ms_deform_attn",
    "kernel_available",
    "set_deterministic",
    "is_deterministic",
    "describe_kernel",
    "log_kernel_once",
    "dispatch_counts",
]

logger = logging.getLogger(__name__)

_BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root"
_REBUILD = "pip install --no-build-isolation -e ."
DETERMINISTIC_ENV = "FMWISS_MS_DEFORM_ATTN_DETERMINISTIC"
_HALF = (torch.float16, torch.bfloat16)

_ext = None
_ext_loaded = False
_unavailable_message: Optional[str] = None  # why the extension is not used (set by the loader)
_device_problems: Dict[int, Optional[str]] = {}  # CUDA device index -> no-code message or None
_warned = set()
_deterministic = False
_logged = False
_dispatch_counts: collections.Counter = collections.Counter()


# ---------------------------------------------------------------------------------------------------------
# loading fmwiss_d2._C and checking what it was built for


def _import_extension():
    from fmwiss_d2 import _C

    return _C


def _running_versions() -> Dict[str, str]:
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda or ""}


def _build_info(ext) -> Dict[str, str]:
    """What ``ext`` was built with; empty strings for builds that predate the record."""
    return {
        "torch": str(getattr(ext, "torch_version", "")),
        "torch_cuda": str(getattr(ext, "torch_cuda_version", "")),
        "archs": str(getattr(ext, "cuda_arch_list", "")),
        "cuda_toolkit": str(getattr(ext, "cuda_toolkit_version", "")),
    }


def _cuda_label(version: str) -> str:
    return f"CUDA {version}" if version else "no CUDA"


def _version_mismatch_message(built: Dict[str, str], running: Dict[str, str]) -> Optional[str]:
    """The one message for a build made against another torch (or torch CUDA version), else None."""
    if not built.get("torch"):
        return None  # a build without the record: nothing to compare
    if built["torch"] == running["torch"] and built.get("torch_cuda", "") == running["torch_cuda"]:
        return None
    cuda_prefix = (
        f"FORCE_CUDA=1 CUDA_HOME=<the CUDA {running['torch_cuda']} toolkit> " if running["torch_cuda"] else ""
    )
    return (
        f"fmwiss_d2._C was built with torch {built['torch']} ({_cuda_label(built.get('torch_cuda', ''))}) but "
        f"torch {running['torch']} ({_cuda_label(running['torch_cuda'])}) is running: its kernels are not used "
        "and multi-scale deformable attention falls back to the PyTorch reference (slower, more memory). "
        f"Rebuild the extension for this torch from the repository root: `{cuda_prefix}{_REBUILD}`."
    )


_MARKER = re.compile(rb"FMWISS_D2_BUILD_INFO\{([^}]*)\}")


def _build_info_from_file() -> Optional[Dict[str, str]]:
    """The build record read from the library file itself (usable when the import fails)."""
    try:
        spec = importlib.util.find_spec("fmwiss_d2._C")
        if spec is None or not spec.origin or not os.path.isfile(spec.origin):
            return None
        with open(spec.origin, "rb") as f:
            m = _MARKER.search(f.read())
    except (ImportError, OSError, ValueError):
        return None
    if m is None:
        return None
    fields = dict(kv.split("=", 1) for kv in m.group(1).decode("ascii", "replace").split(";") if "=" in kv)
    return {"torch": fields.get("torch", ""), "torch_cuda": fields.get("torch_cuda", ""),
            "archs": fields.get("archs", "")}


def _load_failure_message(error: BaseException) -> str:
    text = str(error)
    if isinstance(error, ModuleNotFoundError) or "No module named" in text:
        return (
            "fmwiss_d2._C is not built: multi-scale deformable attention falls back to the slow, memory-hungry "
            f"PyTorch reference (grid_sample); {_BUILD_HINT}."
        )
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    built = _build_info_from_file()
    mismatch = _version_mismatch_message(built, _running_versions()) if built else None
    if mismatch:
        return f"{mismatch} (import error: {first_line})"
    return (
        f"fmwiss_d2._C could not be loaded ({first_line}): multi-scale deformable attention falls back to the "
        f"PyTorch reference. Rebuild it for this torch {torch.__version__} from the repository root: `{_REBUILD}`."
    )


def _extension():
    """``fmwiss_d2._C`` when it can be used, else None (the reason in ``_unavailable_message``). The import
    and the version check are done once."""
    global _ext, _ext_loaded, _unavailable_message
    if not _ext_loaded:
        _ext_loaded = True
        try:
            ext = _import_extension()
        except (ImportError, OSError) as e:
            _ext, _unavailable_message = None, _load_failure_message(e)
        else:
            _unavailable_message = _version_mismatch_message(_build_info(ext), _running_versions())
            _ext = None if _unavailable_message else ext
    return _ext


def _reset_extension_cache() -> None:
    """Forget the import attempt, the device checks and the warnings given (for tests)."""
    global _ext, _ext_loaded, _unavailable_message, _logged
    _ext, _ext_loaded, _unavailable_message, _logged = None, False, None, False
    _device_problems.clear()
    _warned.clear()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _device_capability(index: int) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def _cuda_device_problem(ext, device: torch.device) -> Optional[str]:
    """The message when ``ext`` has no code for the GPU ``device`` (compute capability vs the architectures
    compiled in), else None; checked once per device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _device_problems:
        archs = _build_info(ext)["archs"]
        major, minor = _device_capability(index)
        covered = cuda_archs.covers(archs, (major, minor)) if archs else None
        message = None
        if covered is False:
            built = _build_info(ext)
            toolkit = int(built["cuda_toolkit"] or 0)
            note = ""
            if (major, minor) < (7, 5) and toolkit >= 13000:
                note = (f" Compute capability {major}.{minor} needs a CUDA 12 toolkit (nvcc 13 builds sm_75 and "
                        "newer).")
            message = (
                f"fmwiss_d2._C has no CUDA code for GPU {index} ({_device_name(index)}, compute capability "
                f"{major}.{minor} = sm_{major}{minor}): it was built for {cuda_archs.describe_arch_list(archs)} "
                f"(TORCH_CUDA_ARCH_LIST=\"{archs}\", torch {built['torch']}, {_cuda_label(built['torch_cuda'])}). "
                "Multi-scale deformable attention falls back to the PyTorch reference on this GPU. Rebuild for it "
                f"from the repository root: `TORCH_CUDA_ARCH_LIST=\"{major}.{minor}\" FORCE_CUDA=1 {_REBUILD}` "
                "(or unset TORCH_CUDA_ARCH_LIST for the default list of every generation)." + note
            )
        _device_problems[index] = message
    return _device_problems[index]


def _dtypes_supported(device_type: str, value_dtype: torch.dtype, loc_dtype: torch.dtype) -> bool:
    if device_type == "cpu":
        return (value_dtype in (torch.float32, torch.float64, torch.bfloat16) and loc_dtype == value_dtype) or (
            value_dtype == torch.bfloat16 and loc_dtype == torch.float32
        )
    if device_type == "cuda":
        return (value_dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
                and loc_dtype == value_dtype) or (value_dtype in _HALF and loc_dtype == torch.float32)
    return False


def _select_kernel(device: torch.device, value_dtype: torch.dtype, loc_dtype: torch.dtype):
    """``(extension or None, (warning key, message) or None, reason)``: the compiled kernel for these inputs,
    else why not (with the warning to give, for problems of the build)."""
    ext = _extension()
    if ext is None:
        return None, ("unavailable", _unavailable_message), "fmwiss_d2._C is not available"
    if device.type == "cuda":
        if not ext.with_cuda:
            return None, ("no_cuda", (
                "fmwiss_d2._C was built without CUDA: multi-scale deformable attention on the GPU falls back to "
                f"the PyTorch reference; rebuild with FORCE_CUDA=1 (and CUDA_HOME set): {_BUILD_HINT}."
            )), "fmwiss_d2._C was built without CUDA"
        problem = _cuda_device_problem(ext, device)
        if problem:
            return None, ("arch:" + problem, problem), "fmwiss_d2._C has no code for this GPU"
    elif device.type != "cpu":
        return None, None, f"no kernel for device type {device.type}"
    if not _dtypes_supported(device.type, value_dtype, loc_dtype):
        return None, None, (f"no {device.type} kernel for value {str(value_dtype).replace('torch.', '')} with "
                            f"locations/weights {str(loc_dtype).replace('torch.', '')}")
    return ext, None, ""


def _kernel_for(value: Tensor, loc_dtype: Optional[torch.dtype] = None):
    """The extension module when it has a kernel for ``value``'s device and dtypes, else None (warning once
    when the reason is the build)."""
    ext, warning, _ = _select_kernel(value.device, value.dtype, loc_dtype or value.dtype)
    if warning is not None:
        _warn_once(*warning)
    return ext


def kernel_available(device: torch.device) -> bool:
    """True when a compiled kernel exists for tensors on ``device`` (``"cpu"`` or ``"cuda"``)."""
    ext = _extension()
    device = torch.device(device)
    if ext is None:
        return False
    if device.type == "cpu":
        return True
    if device.type != "cuda" or not ext.with_cuda:
        return False
    return not torch.cuda.is_available() or _cuda_device_problem(ext, device) is None


# ---------------------------------------------------------------------------------------------------------
# deterministic mode, kernel description, one-time log


def set_deterministic(flag: bool) -> bool:
    """Always use the deterministic backward (config ``MODEL.MS_DEFORM_ATTN.DETERMINISTIC``); with False it
    is used when ``torch.use_deterministic_algorithms(True)`` is on (or ``FMWISS_MS_DEFORM_ATTN_DETERMINISTIC=1``).
    Returns the previous setting."""
    global _deterministic
    previous, _deterministic = _deterministic, bool(flag)
    return previous


def is_deterministic() -> bool:
    """Whether the backward pass must be bitwise reproducible now (see :func:`set_deterministic`)."""
    return (
        _deterministic
        or os.environ.get(DETERMINISTIC_ENV, "").strip().lower() in ("1", "true", "yes", "on")
        or torch.are_deterministic_algorithms_enabled()
    )


def _autocast_dtypes(device_type: str, autocast_dtype: torch.dtype,
                     value_dtype: torch.dtype) -> Tuple[torch.dtype, torch.dtype]:
    """(value dtype, locations/weights dtype) the op runs in inside an autocast region (module docstring)."""
    if value_dtype == torch.float64 or not value_dtype.is_floating_point:
        return value_dtype, value_dtype
    if device_type == "cpu" and autocast_dtype != torch.bfloat16:
        return torch.float32, torch.float32
    target = autocast_dtype if autocast_dtype in _HALF else torch.float32
    return target, torch.float32


def describe_kernel(dtype: torch.dtype, device="cpu", loc_dtype: Optional[torch.dtype] = None) -> str:
    """Which implementation ``ms_deform_attn`` uses for a value of ``dtype`` on ``device`` (with locations /
    weights of ``loc_dtype``, default: ``dtype``), in one line. Gives no warning."""
    device = torch.device(device)
    loc_dtype = loc_dtype or dtype
    name = lambda d: str(d).replace("torch.", "")  # noqa: E731
    dtypes = f"value {name(dtype)}" + (f", locations/weights {name(loc_dtype)}" if loc_dtype != dtype else "")
    ext, _, reason = _select_kernel(device, dtype, loc_dtype)
    if ext is None:
        compute = torch.promote_types(dtype, loc_dtype)
        return f"PyTorch reference (grid_sample) in {name(compute)} for {dtypes}: {reason}"
    accumulation = "float32" if dtype in _HALF else name(dtype)
    if device.type == "cpu":
        backward = "deterministic backward (always, on the CPU)"
    elif is_deterministic():
        backward = "deterministic backward (sorted gather of grad_value)"
    else:
        backward = ("atomic backward (fast, not bitwise reproducible; torch.use_deterministic_algorithms(True) or "
                    "MODEL.MS_DEFORM_ATTN.DETERMINISTIC for reproducible gradients)")
    return f"fmwiss_d2._C {device.type.upper()} kernel for {dtypes}, {accumulation} accumulation, {backward}"


def log_kernel_once(device, value_dtype: torch.dtype, loc_dtype: Optional[torch.dtype] = None,
                    where: str = "MSDeformAttn") -> None:
    """Logs once per process whether autocast (AMP) is on and which implementation the op uses."""
    global _logged
    if _logged:
        return
    _logged = True
    device = torch.device(device)
    amp = device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type)
    if amp:
        autocast_dtype = torch.get_autocast_dtype(device.type)
        value_dtype, loc_dtype = _autocast_dtypes(device.type, autocast_dtype, value_dtype)
        state = f"on (autocast {device.type}, {str(autocast_dtype).replace('torch.', '')})"
    else:
        state = "off"
    logger.info("%s: AMP %s; multi-scale deformable attention uses the %s", where, state,
                describe_kernel(value_dtype, device, loc_dtype))


def dispatch_counts() -> Dict[Tuple[str, str, str, str], int]:
    """Calls so far, keyed ``(op, "kernel" | "reference", device type, value dtype)`` (a copy)."""
    return dict(_dispatch_counts)


# ---------------------------------------------------------------------------------------------------------
# the operator


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
    if loc.dtype != value.dtype and not (value.dtype in _HALF and loc.dtype == torch.float32):
        raise TypeError(
            f"ms_deform_attn: sampling_locations has dtype {loc.dtype} but value has {value.dtype}; they must "
            "match (or be float32 with a float16/bfloat16 value)"
        )
    if attention_weights.dtype != loc.dtype:
        raise TypeError(
            f"ms_deform_attn: attention_weights has dtype {attention_weights.dtype} but sampling_locations has "
            f"{loc.dtype}; they must match"
        )
    named = [("sampling_locations", loc), ("attention_weights", attention_weights)]
    if grad_output is not None:
        if tuple(grad_output.shape) != (N, loc.shape[1], H * C):
            raise ValueError(
                f"ms_deform_attn: grad_output must have shape (N, Lq, n_heads * C) = {(N, loc.shape[1], H * C)}, "
                f"got {tuple(grad_output.shape)}"
            )
        if grad_output.dtype != value.dtype:
            raise TypeError(
                f"ms_deform_attn: grad_output has dtype {grad_output.dtype} but value has {value.dtype}; they must "
                "match"
            )
        named.append(("grad_output", grad_output))
    for name, t in named + [("spatial_shapes", spatial_shapes), ("level_start_index", level_start_index)]:
        if t.device != value.device:
            raise ValueError(f"ms_deform_attn: {name} is on {t.device} but value is on {value.device}")


def _reference_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The reference in the promoted dtype of mixed inputs, returned in the value's dtype."""
    compute = torch.promote_types(value.dtype, sampling_locations.dtype)
    out = ms_deform_attn_reference(value.to(compute), spatial_shapes, level_start_index,
                                   sampling_locations.to(compute), attention_weights.to(compute))
    return out.to(value.dtype)


def _reference_backward(grad_output, value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights):
    compute = torch.promote_types(value.dtype, sampling_locations.dtype)
    # grid_sample's CUDA backward adds with atomics (and refuses to run under use_deterministic_algorithms);
    # the deterministic variant scatters with index_put_(accumulate=True), which sorts on the GPU.
    deterministic = value.device.type != "cpu" and is_deterministic()
    backward = ms_deform_attn_reference_backward_deterministic if deterministic else ms_deform_attn_reference_backward
    grads = backward(grad_output.to(compute), value.to(compute), spatial_shapes, level_start_index,
                     sampling_locations.to(compute), attention_weights.to(compute))
    return grads[0].to(value.dtype), grads[1].to(sampling_locations.dtype), grads[2].to(attention_weights.dtype)


@torch.library.custom_op("fmwiss_d2::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(
    value: Tensor,
    spatial_shapes: Tensor,
    level_start_index: Tensor,
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if not _logged:
        log_kernel_once(value.device, value.dtype, sampling_locations.dtype, where="ms_deform_attn")
    ext = _kernel_for(value, sampling_locations.dtype)
    _dispatch_counts[("forward", "kernel" if ext else "reference", value.device.type, str(value.dtype))] += 1
    if ext is not None:
        return ext.ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    return _reference_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


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
    ext = _kernel_for(value, sampling_locations.dtype)
    _dispatch_counts[("backward", "kernel" if ext else "reference", value.device.type, str(value.dtype))] += 1
    if ext is not None:
        return tuple(
            ext.ms_deform_attn_backward(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output,
                deterministic=is_deterministic(),
            )
        )
    return _reference_backward(
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
        grad_output.contiguous().to(value.dtype), value, spatial_shapes, level_start_index, sampling_locations,
        attention_weights,
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


def _register_autocast(device_type: str) -> None:
    """Our own autocast rule (``torch.library.register_autocast`` casts every input to one fixed dtype):
    value to the current autocast dtype, locations and weights to float32, then the op with autocast off."""
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key_set = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key_name))

    def autocast_kernel(_keyset, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        with torch._C._ExcludeDispatchKeyGuard(key_set):
            if value.device.type == device_type and value.is_floating_point():
                value_dtype, loc_dtype = _autocast_dtypes(device_type, torch.get_autocast_dtype(device_type),
                                                          value.dtype)
                value = value.to(value_dtype)
                sampling_locations = sampling_locations.to(loc_dtype)
                attention_weights = attention_weights.to(loc_dtype)
            return _ms_deform_attn_op._opoverload(value, spatial_shapes, level_start_index, sampling_locations,
                                                  attention_weights)

    _AUTOCAST_LIB.impl("ms_deform_attn", autocast_kernel, key_name, with_keyset=True)


_AUTOCAST_LIB = torch.library.Library("fmwiss_d2", "IMPL")  # kept alive: the registrations live with it
for _device_type in ("cuda", "cpu"):
    _register_autocast(_device_type)


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
            top-left corner of the map and (1, 1) the bottom-right one; points outside sample zeros. The
            value's dtype, or float32 with a float16/bfloat16 value.
        attention_weights: (N, Lq, n_heads, n_levels, n_points), usually softmaxed over levels x points; the
            dtype of ``sampling_locations``.

    Returns:
        (N, Lq, n_heads * C) in the value's dtype (inside autocast: the autocast dtype, see the module
        docstring).
    """
    return _ms_deform_attn_op(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
