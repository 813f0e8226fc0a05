#!/usr/bin/env bash
# A GPU run ready to go, in under 8 minutes on one NVIDIA GPU: the export benchmark (PyTorch eager,
# torch.compile, ONNX Runtime CUDA / CUDA graphs / TensorRT where present, batches 1-256) and a short HM-NAS-vs-DARTS
# search on NNI's hub DARTS space, figures and the device written to one folder.
#
#   experiments/gpu_check.sh [OUT] [WHEELS]
#
# OUT     the folder for everything (default runs/gpu-check; refused if it holds another run's results)
# WHEELS  optional folder of wheel files to install from, offline (pip --no-index --find-links WHEELS);
#         without it the packages come from the package index, or from what .venv already holds.
#
# Every step has its own time limit; a step that fails or runs out of time is recorded in OUT/steps.tsv and the
# script goes on, so what did finish is kept. The exit status is 0 only if every step succeeded.
set -uo pipefail

OUT=${1:-runs/gpu-check}
WHEELS=${2:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then
  echo "error: $OUT holds another run's results; pass another folder" >&2
  exit 2
fi
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
printf 'step\tstatus\tseconds\tcommand\n' > "$STEPS"
FAILED=0

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under a time limit, log it, record how it ended
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$*" >> "$STEPS"
  [ "$status" -eq 0 ] || { FAILED=1; echo "   $name ended with status $status; see $OUT/$name.log"; }
}

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ -n "$WHEELS" ]; then
  step install 300 .venv/bin/pip install --no-index --find-links "$WHEELS" -e .
else
  step install 300 .venv/bin/pip install -e .
fi

step device 30 .venv/bin/python -c '
import json, platform, subprocess, sys, torch, onnxruntime as ort
gpu = torch.cuda.is_available()
info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "python": platform.python_version()}
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    info["nvidia_smi"] = None
with open(sys.argv[1], "w") as f:
    json.dump(info, f, indent=1)
print(json.dumps(info, indent=1))
assert gpu, "no CUDA GPU visible to torch"
' "$OUT/device.json"

step bench 180 .venv/bin/hmnas bench export/archs/nb201_fmnist.json --out "$OUT/bench" --batch-sizes 1,8,64,256 \
  --warmup 10 --iters 50 --min-seconds 0.5

step search 240 .venv/bin/hmnas compare --budget gpu --space nni.nas.hub.pytorch.DARTS \
  --space-args '{"width": 16, "num_cells": 5, "dataset": "cifar"}' --strategies hmnas,darts --seeds 0 \
  --epochs 4 --subset 4000 --accelerator gpu --out "$OUT/search"

echo "== done: $OUT (steps: $STEPS)"
column -t -s $'\t' "$STEPS" 2>/dev/null || cat "$STEPS"
exit "$FAILED"
