#!/usr/bin/env bash
# One GPU session's checks, in one command (about 5 minutes on one H100/H200): the GPU-marked tests, then
# benchmarks/gpu_check.py's measurements (training ours vs plain torchvision at 800x1333, batch 2 and 8 per GPU,
# fp32/TF32 and bf16; inference; the JPEG data loader; a bf16 profile). Run from the repository root:
#
#   bash benchmarks/gpu_check.sh OUT_DIR [COCO_DIR]      # COCO_DIR: default ../shared/data/coco_tiny
#
# Writes OUT_DIR/{env.txt, gpu_tests.log, gpu_results.jsonl, gpu_rows.md, gpu_check.log}. A step that fails or
# runs out of its time limit is recorded and the next one still runs; the exit status is the tests'.
# PYTHON (default python3) is the interpreter; the GPU machine's own PyTorch is used as it is.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR [COCO_DIR]}
COCO=${2:-../shared/data/coco_tiny}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    nproc
    df -h /dev/shm
} >"$OUT/env.txt" 2>&1

timeout "${GPU_TESTS_LIMIT_S:-240}" "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --durations=0 2>&1 | tee "$OUT/gpu_tests.log"
tests=${PIPESTATUS[0]}

timeout "${GPU_BENCH_LIMIT_S:-300}" "$PY" benchmarks/gpu_check.py --coco "$COCO" --out "$OUT" "${@:3}" \
    >"$OUT/gpu_check.log" 2>&1
echo "gpu_check.py exit $?" >>"$OUT/gpu_check.log"
grep -v "^train:\|it/s\]" "$OUT/gpu_check.log" | tail -40
exit "$tests"
