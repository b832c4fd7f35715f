#!/usr/bin/env bash
# GPU check, in one go on a machine with one NVIDIA GPU (under 8 minutes): builds fmwiss_d2._C for that GPU,
# checks it loads, runs the CUDA tests and the op benchmarks, and writes results/gpu.json (GPU, torch, commit,
# pytest counts, each benchmark's JSON line, and the status, time and log tail of every part).
#
#   bash tools/bench/gpu_check.sh               # on the GPU machine, from a checkout
#   bash tools/bench/gpu_check.sh --dry-run     # print the plan (parts, commands, time limits), run nothing
#   bash tools/bench/gpu_check.sh --fetch-wheels  # on a machine with the package registries: fill .whl/
#
# Missing Python packages (detectron2 and its dependencies, pytest, ...) are installed from the local wheel
# folder .whl/ when it exists (--fetch-wheels fills it for Python 3.12); otherwise the parts that need them
# are skipped with a line saying why. Every part has its own time limit, and a part that fails or times out is
# recorded in results/gpu.json without stopping the others; the overall deadline (GPU_CHECK_BUDGET_S, default
# 450 s) shortens the last parts' limits, or skips them, so the whole stays under 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
OUT_JSON=${GPU_CHECK_OUT:-results/gpu.json}
LOGS=${GPU_CHECK_LOGS:-results/gpu_logs}
WHEELS=.whl
MODE=run
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --fetch-wheels) MODE=fetch ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

# import name -> pip name of what the CUDA tests and benchmarks need besides torch (fmwiss_d2 imports detectron2)
REQUIRED=(numpy:"numpy<2" PIL:Pillow yaml:pyyaml tqdm:tqdm scipy:scipy pycocotools:pycocotools fvcore:fvcore
  iopath:iopath yacs:yacs termcolor:termcolor tabulate:tabulate cloudpickle:cloudpickle omegaconf:"omegaconf>=2.1,<2.4"
  hydra:"hydra-core>=1.1" portalocker:portalocker matplotlib:matplotlib packaging:packaging pytest:pytest ninja:ninja)

if [ "$MODE" = fetch ]; then
  mkdir -p "$WHEELS"
  pips=()
  for entry in "${REQUIRED[@]}"; do pips+=("${entry#*:}"); done
  echo "[gpu-check] downloading wheels for Python 3.12 into $WHEELS/"
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp -d "$WHEELS" "${pips[@]}"
  # detectron2: the pure-Python part of the sal-detectron2 wheel (tools/setup_env.sh), installed with --target
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp -d "$WHEELS" sal-detectron2
  du -sh "$WHEELS"
  exit 0
fi

START=$(date +%s)
PARTS="$LOGS/parts.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout's fmwiss_d2 (built in place, not installed)
if [ "$MODE" = run ]; then
  mkdir -p "$LOGS"
  : > "$PARTS"
fi

remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

# run_part NAME LIMIT_S COMMAND...: runs COMMAND with a time limit (shortened to the time left), logs it to
# $LOGS/NAME.log and records "NAME<TAB>status<TAB>rc<TAB>seconds<TAB>reason" in $PARTS; never fails.
run_part() {
  local name=$1 limit=$2
  shift 2
  if [ "$MODE" = dry ]; then
    printf '[gpu-check] %-14s limit %4ss: %s\n' "$name" "$limit" "$*"
    return 0
  fi
  local left
  left=$(remaining)
  if [ "$left" -lt 15 ]; then
    printf '%s\tskipped\t\t0\tout of time (overall budget %ss)\n' "$name" "$BUDGET_S" >> "$PARTS"
    echo "[gpu-check] $name: SKIPPED (out of time)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[gpu-check] $name (limit ${limit}s): $*"
  local t0 rc status reason=""
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout; reason="killed after ${limit}s" ;;
    *) status=failed; reason="exit status $rc" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - t0))" "$reason" >> "$PARTS"
  echo "[gpu-check] $name: $status ($(($(date +%s) - t0))s)${reason:+, $reason}; log $LOGS/$name.log"
}

skip_part() {  # NAME REASON
  if [ "$MODE" = dry ]; then printf '[gpu-check] %-14s would be skipped if: %s\n' "$1" "$2"; return 0; fi
  printf '%s\tskipped\t\t0\t%s\n' "$1" "$2" >> "$PARTS"
  echo "[gpu-check] $1: SKIPPED ($2)"
}

# ---------------------------------------------------------------------------------------------- the plan
if [ "$MODE" = dry ]; then
  ARCH="<major.minor of torch.cuda.get_device_capability()>"
  echo "[gpu-check] plan (overall budget ${BUDGET_S}s: each limit is cut to the time left, a part with under 15 s"
  echo "[gpu-check] left is skipped; results -> $OUT_JSON, logs -> $LOGS/):"
else
  ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null) || ARCH=""
  if [ -z "$ARCH" ]; then
    echo "[gpu-check] no usable GPU (torch.cuda.get_device_capability() failed): the CUDA parts are skipped"
  fi
fi

# 1. missing packages, from .whl/ when present
missing=()
if [ "$MODE" = run ]; then
  for entry in "${REQUIRED[@]}"; do
    "$PY" -c "import ${entry%%:*}" 2>/dev/null || missing+=("${entry#*:}")
  done
  "$PY" -c "import detectron2.engine" 2>/dev/null || missing+=(detectron2)
fi
install_missing() {
  local site others=()
  site=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
  for p in "$@"; do [ "$p" != detectron2 ] && others+=("$p"); done
  if [ ${#others[@]} -gt 0 ]; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps "${others[@]}" || return 1
  fi
  if printf '%s\n' "$@" | grep -qx detectron2; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" --no-deps --only-binary=:all: --python-version 3.10 \
      --implementation cp --target "$site" --upgrade sal-detectron2 || return 1
  fi
  "$PY" -c "import detectron2.engine, pytest"
}
if [ "$MODE" = dry ]; then
  run_part deps 60 "pip install --no-index --find-links $WHEELS --no-deps <missing of: ${REQUIRED[*]%%:*} detectron2>"
elif [ ${#missing[@]} -eq 0 ]; then
  echo "[gpu-check] every required package is importable"
elif [ -d "$WHEELS" ]; then
  run_part deps 60 install_missing "${missing[@]}"
else
  skip_part deps "missing ${missing[*]} and no $WHEELS/ folder (fill it with: $0 --fetch-wheels)"
fi
have() { "$PY" -c "import $1" 2>/dev/null; }

# 2. the extension, for this GPU only
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=${MAX_JOBS:-8}
if [ -z "${CUDA_HOME:-}" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do [ -x "$d/bin/nvcc" ] && export CUDA_HOME="$d" && break; done
fi
NVCC=${CUDA_HOME:+$CUDA_HOME/bin/}nvcc
if [ "$MODE" = dry ] || { [ -n "$ARCH" ] && command -v "$NVCC" >/dev/null; }; then
  run_part build 180 "$PY" setup.py build_ext --inplace
elif [ -z "$ARCH" ]; then
  skip_part build "no GPU"
else
  skip_part build "no nvcc (set CUDA_HOME to a CUDA toolkit matching torch's CUDA); the tests then use the PyTorch reference"
fi

# 3. it loads and the CUDA kernel is used
if [ "$MODE" = dry ] || { [ -n "$ARCH" ] && have detectron2.engine; }; then
  run_part check 30 "$PY" .ci/check_extension.py --require-cuda
  run_part tests 90 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$LOGS/pytest.xml" tests/test_ms_deform_attn.py \
    tests/test_ms_deform_attn_plus.py
else
  skip_part check "no GPU or no detectron2 (fmwiss_d2 imports it)"
  skip_part tests "no GPU or no detectron2 (fmwiss_d2 imports it)"
fi

# 4. benchmarks: the op (reference vs kernels, fp32 / fp16 / bf16), determinism cost, torch.compile
if [ "$MODE" = dry ] || [ -n "$ARCH" ]; then
  run_part bench_op 60 "$PY" tools/bench/ms_deform_attn.py --repeat 10 --warmup 3
  run_part bench_determinism 45 "$PY" tools/bench/ms_deform_attn_determinism.py --only determinism
  run_part bench_compile 60 "$PY" tools/bench/ms_deform_attn_determinism.py --only compile
else
  for p in bench_op bench_determinism bench_compile; do skip_part "$p" "no GPU"; done
fi

if [ "$MODE" = dry ]; then
  echo "[gpu-check] then: merge $LOGS/parts.tsv, the benchmarks' JSON lines and $LOGS/pytest.xml into $OUT_JSON"
  exit 0
fi

# 5. results/gpu.json (standard library only: works whatever failed above)
"$PY" - "$PARTS" "$LOGS" "$OUT_JSON" "$(($(date +%s) - START))" <<'EOF'
import json, os, subprocess, sys, xml.etree.ElementTree as ET

parts_tsv, logs, out, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001 - a missing tool is recorded as empty
        return ""


def last_json_line(path):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return None


report = {"commit": sh("git", "rev-parse", "HEAD"), "dirty": bool(sh("git", "status", "--porcelain", "--untracked-files=no")),
          "total_s": total, "parts": {}}
try:
    import torch
    report.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        report.update(gpu=torch.cuda.get_device_name(0), capability="%d.%d" % torch.cuda.get_device_capability(0))
except Exception as e:  # noqa: BLE001
    report["torch_error"] = repr(e)
report["driver"] = sh("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
for line in open(parts_tsv).read().splitlines():
    name, status, rc, seconds, reason = (line.split("\t") + [""] * 5)[:5]
    part = {"status": status, "rc": int(rc) if rc else None, "seconds": int(seconds), "reason": reason}
    log = os.path.join(logs, name + ".log")
    if status != "ok" and os.path.isfile(log):
        part["log_tail"] = open(log, errors="replace").read()[-2000:]
    if name.startswith("bench_"):
        part["result"] = last_json_line(log)
    report["parts"][name] = part
xml = os.path.join(logs, "pytest.xml")
if os.path.isfile(xml):
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    n["skip_reasons"] = sorted({s.get("message", "") for s in root.iter("skipped")})
    report["pytest"] = n
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
tmp = out + ".tmp"
with open(tmp, "w") as f:
    json.dump(report, f, indent=1)
os.replace(tmp, out)
ok = [k for k, v in report["parts"].items() if v["status"] == "ok"]
print(f"[gpu-check] wrote {out}: ok {ok}; not ok {[k for k in report['parts'] if k not in ok]}; "
      f"pytest {report.get('pytest', 'not run')}")
EOF
