"""Installs fmwiss_d2 and compiles fmwiss_d2._C (multi-scale deformable attention).

The CPU kernel is always compiled. The CUDA kernels are compiled when a GPU is visible or FORCE_CUDA=1
(nvcc must match torch's CUDA major version). Install with
    pip install --no-build-isolation -e .
(build isolation would make pip fetch a second multi-GB torch into a throwaway environment).
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME as TORCH_CUDA_HOME
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("fmwiss_d2", "modeling", "ops", "csrc")


def find_cuda_home():
    """torch guesses CUDA_HOME=/usr/local from a wrapper /usr/local/bin/nvcc on some machines, and then
    cannot link cudart; prefer an explicit CUDA_HOME, then a toolkit folder that holds lib64/libcudart."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), TORCH_CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "bin", "nvcc")) and (
            glob.glob(os.path.join(c, "lib64", "libcudart*")) or glob.glob(os.path.join(c, "lib", "libcudart*"))
            or glob.glob(os.path.join(c, "targets", "*", "lib", "libcudart*"))
        ):
            return c
    return None


def nvidia_wheel_includes():
    """torch's CUDA wheels ship headers (cusparse.h, ...) that a bare toolkit may lack."""
    try:
        import nvidia  # noqa: F401  (namespace package installed with torch's CUDA wheels)
    except ImportError:
        return []
    dirs = []
    for base in list(nvidia.__path__):
        dirs += glob.glob(os.path.join(base, "*", "include"))
    return sorted(d for d in dirs if os.path.isdir(d))


def get_extensions():
    main = glob.glob(os.path.join(CSRC, "*.cpp"))
    cpu = glob.glob(os.path.join(CSRC, "cpu", "*.cpp"))
    cuda = glob.glob(os.path.join(CSRC, "cuda", "*.cu"))
    if not main:
        return []
    sources = main + cpu
    define_macros = []
    # -fopenmp: at::parallel_for in the CPU kernel runs serially unless the extension is compiled with OpenMP.
    extra_compile_args = {"cxx": ["-O3", "-std=c++20", "-fopenmp"]}
    extension = CppExtension
    include_dirs = [os.path.join(ROOT, CSRC)]
    want_cuda = torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"
    if want_cuda and cuda:
        cuda_home = find_cuda_home()
        if cuda_home is None:
            raise RuntimeError(
                "FORCE_CUDA=1 (or a visible GPU) but no CUDA toolkit with nvcc and libcudart was found. "
                "Set CUDA_HOME to the toolkit folder (e.g. /usr/local/cuda-13.0) or unset FORCE_CUDA."
            )
        os.environ["CUDA_HOME"] = cuda_home
        import torch.utils.cpp_extension as cpp_ext

        cpp_ext.CUDA_HOME = cuda_home
        extension = CUDAExtension
        sources += cuda
        define_macros += [("WITH_CUDA", None)]
        include_dirs += nvidia_wheel_includes()
        extra_compile_args["nvcc"] = [
            "-O3",
            "-std=c++20",
            "-DCUDA_HAS_FP16=1",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    return [
        extension(
            "fmwiss_d2._C",
            sources=sorted(sources),
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ]


setup(
    name="fmwiss_d2",
    version="0.1.0",
    description="Label-efficient segmentation on Detectron2: MiB, FMWISS, DuPL, PADing",
    packages=find_packages(exclude=("configs", "tests", "tools", "datasets")),
    python_requires=">=3.9",
    install_requires=["numpy", "Pillow", "scipy", "pyyaml", "tqdm"],
    ext_modules=get_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
