"""Fails loudly when fmwiss_d2._C, which the setup has just built, does not load or its kernels are not used.

Why: the op falls back to the PyTorch reference when the extension is missing or broken, and the kernel tests
then skip; without this check a broken build would pass CI with the kernels untested. Prints what the
extension offers (functions, build record, the kernel each device uses). Exit status 1 with the reason otherwise.

    python .ci/check_extension.py                  # after tools/setup_env.sh
    python .ci/check_extension.py --require-cuda   # the build must hold the CUDA kernels (FORCE_CUDA=1 builds)
"""
import argparse
import os
import signal
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the checkout's fmwiss_d2 (the same one as an editable install of it)


def fail(message: str) -> None:
    sys.exit(f"[check] FAIL: {message}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--require-cuda", action="store_true", help="fail unless the build holds the CUDA kernels")
    args = p.parse_args(argv)
    # first in a child process: a truncated library crashes the loader (SIGBUS) instead of raising
    probe = subprocess.run([sys.executable, "-c", "from fmwiss_d2 import _C"], capture_output=True, text=True, cwd=ROOT)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        why = (f"the import was killed by {signal.Signals(-probe.returncode).name}" if probe.returncode < 0
               else lines[-1] if lines else f"exit status {probe.returncode}")
        fail(f"fmwiss_d2._C does not load ({why}). The setup built it, so the build is broken: rebuild it "
             "(`pip install --no-build-isolation -e .`, or tools/setup_env.sh after deleting .venv/.stamps/package-*) "
             "and read the compiler's output.")
    from fmwiss_d2 import _C
    import torch

    from fmwiss_d2.modeling.ops.functions import describe_kernel, kernel_available

    offers = sorted(n for n in dir(_C) if not n.startswith("_"))
    print(f"[check] fmwiss_d2._C loads: {_C.__file__}")
    print(f"[check]   offers: {', '.join(offers)}")
    print(f"[check]   built for torch {_C.torch_version} (CUDA {_C.torch_cuda_version or 'none'}), with_cuda="
          f"{bool(_C.with_cuda)}, archs {_C.cuda_arch_list or '-'}; running torch {torch.__version__}")
    print(f"[check]   cpu:  {describe_kernel(torch.float32, 'cpu')}")
    if not kernel_available("cpu"):
        fail("fmwiss_d2._C loads but its CPU kernel is not used: " + describe_kernel(torch.float32, "cpu"))
    if args.require_cuda and not _C.with_cuda:
        fail("the build has no CUDA kernels although they were requested (FORCE_CUDA=1): see setup.py's output")
    if torch.cuda.is_available():
        print(f"[check]   cuda: {describe_kernel(torch.float32, 'cuda')}")
        if args.require_cuda and not kernel_available("cuda"):
            fail("the CUDA kernel is not used on this GPU: " + describe_kernel(torch.float32, "cuda"))
    print("[check] OK")


if __name__ == "__main__":
    main()
