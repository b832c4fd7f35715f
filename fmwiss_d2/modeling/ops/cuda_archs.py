"""CUDA architectures of ``fmwiss_d2._C``: the default build list, ``TORCH_CUDA_ARCH_LIST`` parsing, and
whether a build has code for a given GPU.

This file imports nothing from the package (nor torch), so that ``setup.py`` can load it by path.

Default architectures (used when ``TORCH_CUDA_ARCH_LIST`` is not set), by nvcc version:

======================  ==========================================================================
nvcc <= 12.x            7.0 (Volta; CUDA 13 dropped it)
all                     7.5 (Turing), 8.0 (A100), 8.6 (Ampere consumer; its code also runs on 8.7/8.9 Ada)
nvcc >= 11.8            9.0 (Hopper)
nvcc >= 12.8            10.0 (Blackwell B200; also runs on 10.3), 12.0 (Blackwell consumer; also runs on 12.1)
all                     "+PTX" of the newest: PTX that the driver compiles for any newer GPU
======================  ==========================================================================

so nvcc 13.0 gives ``7.5;8.0;8.6;9.0;10.0;12.0+PTX`` and nvcc 12.4 ``7.0;7.5;8.0;8.6;9.0+PTX``. A GPU
visible at build time whose compute capability the list does not cover is added to it.

Which GPUs a build runs on (CUDA's compatibility rules): machine code (cubin) for ``X.Y`` runs on
compute capability ``X.y`` with ``y >= Y`` (same major version); ``X.Ya`` (arch-specific) only on ``X.Y``;
PTX for ``X.Y`` (``+PTX``) runs on every capability ``>= X.Y``.
"""
import re
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["Arch", "default_arch_list", "parse_arch_list", "covers", "describe_arch_list"]


class Arch(NamedTuple):
    major: int
    minor: int
    suffix: str  # "" (portable), "a" (arch-specific) or "f" (family-specific)
    ptx: bool  # "+PTX": PTX of this architecture is embedded as well


_ENTRY = re.compile(r"^(\d+)\.(\d+)([af]?)(\+PTX)?$")


def parse_arch_list(text: str) -> Optional[List[Arch]]:
    """``"7.5;8.0;9.0a;12.0+PTX"`` (``;``, ``,`` or spaces) -> architectures; None when an entry is not
    numeric (a name such as ``Hopper`` or ``native``): the caller then cannot check coverage."""
    entries = [e for e in re.split(r"[;,\s]+", text.strip()) if e]
    archs = []
    for e in entries:
        m = _ENTRY.match(e)
        if m is None:
            return None
        archs.append(Arch(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4) is not None))
    return archs


def _format(archs: Sequence[Arch]) -> str:
    return ";".join(f"{a.major}.{a.minor}{a.suffix}{'+PTX' if a.ptx else ''}" for a in archs)


def covers(arch_list: str, capability: Tuple[int, int]) -> Optional[bool]:
    """Whether a build for ``arch_list`` has code that runs on a GPU of compute ``capability``
    ``(major, minor)``; None when the list cannot be parsed."""
    archs = parse_arch_list(arch_list)
    if archs is None:
        return None
    major, minor = capability
    for a in archs:
        if a.suffix == "a":
            if (a.major, a.minor) == (major, minor):
                return True
            continue
        if a.major == major and a.minor <= minor:
            return True  # machine code of the same major version
        if a.ptx and (a.major, a.minor) <= (major, minor):
            return True  # PTX, compiled by the driver for newer GPUs
    return False


def default_arch_list(nvcc_version: Tuple[int, int], visible: Iterable[Tuple[int, int]] = ()) -> str:
    """The documented default for an nvcc of ``(major, minor)`` (module docstring), plus the compute
    capabilities in ``visible`` it does not cover (those nvcc can build: Volta and older need nvcc <= 12)."""
    archs = []
    if nvcc_version[0] <= 12:
        archs.append(Arch(7, 0, "", False))
    archs += [Arch(7, 5, "", False), Arch(8, 0, "", False), Arch(8, 6, "", False)]
    if nvcc_version >= (11, 8):
        archs.append(Arch(9, 0, "", False))
    if nvcc_version >= (12, 8):
        archs += [Arch(10, 0, "", False), Arch(12, 0, "", False)]
    for cap in visible:
        buildable = cap >= (7, 5) or nvcc_version[0] <= 12
        if buildable and not covers(_format(archs), cap):
            archs.append(Arch(cap[0], cap[1], "", False))
    archs = sorted(set(archs))
    archs[-1] = archs[-1]._replace(ptx=True)
    return _format(archs)


def describe_arch_list(arch_list: str) -> str:
    """``"7.5;9.0+PTX"`` -> ``"sm_75, sm_90, compute_90 (PTX)"`` (the raw text when it cannot be parsed)."""
    archs = parse_arch_list(arch_list)
    if not archs:
        return arch_list or "(none)"
    parts = []
    for a in archs:
        parts.append(f"sm_{a.major}{a.minor}{a.suffix}")
        if a.ptx:
            parts.append(f"compute_{a.major}{a.minor} (PTX)")
    return ", ".join(parts)
