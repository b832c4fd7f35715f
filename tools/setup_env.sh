#!/usr/bin/env bash
# Creates .venv with torch, detectron2 and the runtime dependencies, then installs fmwiss_d2 (editable).
# Idempotent: each stage leaves a stamp in .venv/.stamps and is skipped when its inputs did not change.
# Environment knobs: VENV (default .venv), PYTHON (default python3), FORCE_CUDA=1 to compile the CUDA op.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMPS="$VENV/.stamps"

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

if [ ! -f "$STAMPS/torch" ]; then
  if "$PY" -c "import torch, torchvision" 2>/dev/null; then
    log "torch already importable: $("$PY" -c 'import torch;print(torch.__version__)')"
  else
    log "installing torch 2.14.1 + torchvision 0.29.1 (1-2 minutes)"
    "${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
  fi
  touch "$STAMPS/torch"
fi

RUNTIME_DEPS=("numpy<2" Pillow matplotlib pycocotools termcolor yacs tabulate cloudpickle tqdm tensorboard
  "omegaconf>=2.1,<2.4" "hydra-core>=1.1" packaging fvcore iopath scipy opencv-python-headless
  open_clip_torch==3.3.0 timm panopticapi-lite pytest pyyaml ninja scikit-learn)
deps_key=$(printf '%s\n' "${RUNTIME_DEPS[@]}" | sha1sum | cut -c1-12)
if [ ! -f "$STAMPS/deps-$deps_key" ]; then
  log "installing runtime dependencies"
  "${PIP[@]}" install "${RUNTIME_DEPS[@]}"
  touch "$STAMPS/deps-$deps_key"
fi

if [ ! -f "$STAMPS/detectron2" ]; then
  if "$PY" -c "import detectron2.engine" 2>/dev/null; then
    log "detectron2 already importable"
  else
    # detectron2 is not on PyPI under its own name. The pure-Python part of the sal-detectron2 wheel
    # (a 2024 snapshot of detectron2 main) works on Python 3.11: its cp310 _C is never loaded and
    # detectron2 falls back to its Python paths. With internet access, prefer the official install:
    #   pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
    log "installing detectron2 (pure-Python part of the sal-detectron2 wheel)"
    site=$("$PY" -c 'import site;print(site.getsitepackages()[0])')
    "${PIP[@]}" install --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --target "$site" --upgrade sal-detectron2
    "$PY" -c "import detectron2.engine, detectron2.evaluation, detectron2.projects.deeplab"
  fi
  touch "$STAMPS/detectron2"
fi

# The extension is rebuilt when its sources, the torch it is compiled against or the C++ compiler change (and,
# for a CUDA build, nvcc): a build made by another toolchain is not kept.
torch_version=$("$PY" -c 'import torch;print(torch.__version__)')
cxx_version=$("${CXX:-c++}" --version 2>/dev/null | head -n1 || true)
src_key=$( (cat setup.py; find fmwiss_d2/modeling/ops/csrc -type f -print0 | sort -z | xargs -0 cat
            printf 'torch %s\ncxx %s\n' "$torch_version" "$cxx_version") | sha1sum | cut -c1-12)
# A build with the CUDA kernels also serves CPU-only use, so without FORCE_CUDA any build of this key is kept.
if [ "${FORCE_CUDA:-0}" = "1" ]; then
  nvcc_bin=${CUDA_HOME:+$CUDA_HOME/bin/}nvcc
  nvcc_version=$("$nvcc_bin" --version 2>/dev/null | grep -m1 release || echo "no nvcc")
  variant="cuda-$(printf '%s' "$nvcc_version" | sha1sum | cut -c1-8)"
  stamp_glob="package-$src_key-$variant"
else
  variant="cpu"
  stamp_glob="package-$src_key-*"
fi
if ! compgen -G "$STAMPS/$stamp_glob" >/dev/null || ! "$PY" -c "import fmwiss_d2" 2>/dev/null; then
  log "installing fmwiss_d2 (editable; compiles fmwiss_d2._C with torch $torch_version, $cxx_version${nvcc_version:+, nvcc: $nvcc_version})"
  "${PIP[@]}" install --no-build-isolation --no-deps -e .
  rm -f "$STAMPS"/package-*
  touch "$STAMPS/package-$src_key-$variant"
fi
ready=$("$PY" -c 'import torch, detectron2, fmwiss_d2; print("torch", torch.__version__, "| detectron2", detectron2.__version__, "| fmwiss_d2", fmwiss_d2.__version__, "| _C", fmwiss_d2.has_compiled_ops())') \
  || ready="fmwiss_d2 or its extension fmwiss_d2._C crashes on import (python .ci/check_extension.py says why)"
log "ready: $ready"
