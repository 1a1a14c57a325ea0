#!/usr/bin/env bash
# One GPU session's checks in one command: the `gpu`-marked tests (tests/gpu), then benchmarks/gpu_check.py's
# measurements (training ours vs plain torchvision at 800x1333, batch 2 and 8 per GPU, fp32/TF32 and bf16;
# model.step=torchvision vs fast at batch 8 in bf16 and fp16, and the fast step's profile; inference; the JPEG data
# loader; a bf16 profile). The defaults took about 8 minutes on one H200 before the step part, which adds about 4
# (benchmarks/RESULTS.md, "On one GPU"); to check the fast step alone within a 15-minute device budget, pass
# `--only step` (issue 27). Run from the repository root:
#
#   bash benchmarks/gpu_check.sh OUT_DIR [COCO_DIR [gpu_check.py options...]]
#
# COCO_DIR: a folder with annotations/instances_{train,val}2017.json, train2017/ and val2017/ (default
# ../shared/data/coco_tiny, this project's 80 + 80 real COCO images; full COCO 2017 works too, it is only slower to
# load). Further arguments go to gpu_check.py (--batches, --amps, --rounds, --only, --options ...; see its --help).
# Needs: PyTorch with CUDA, torchvision, pytest, and scratchdet's dependencies (`pip install -e '.[dev]'`; this
# checkout is put on PYTHONPATH, so scratchdet itself need not be installed). PYTHON picks the interpreter
# (default python3). Time limits, in seconds: GPU_TESTS_LIMIT_S (default 240) and GPU_BENCH_LIMIT_S (default 420).
#
# Writes OUT_DIR/env.txt, gpu_tests.log, gpu_results.jsonl (one line per measurement, as each ends), gpu_rows.md
# (the table, rewritten after each step) and gpu_check.log. A step that fails or runs out of time is recorded and
# the next one still runs. Exit status: 0 when the tests passed and every measurement ran, else 1.
set -uo pipefail
OUT=${1:?usage: gpu_check.sh OUT_DIR [COCO_DIR [gpu_check.py options...]]}
COCO=${2:-../shared/data/coco_tiny}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
    nproc
    df -h /dev/shm
} >"$OUT/env.txt" 2>&1

timeout "${GPU_TESTS_LIMIT_S:-240}" "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --durations=0 2>&1 |
    tee "$OUT/gpu_tests.log"
tests=${PIPESTATUS[0]}
if grep -q "no CUDA device is visible" "$OUT/gpu_tests.log"; then
    echo "gpu_check.sh: the GPU tests were skipped: no CUDA device is visible" >&2
    tests=1
fi

timeout "${GPU_BENCH_LIMIT_S:-420}" "$PY" benchmarks/gpu_check.py --coco "$COCO" --out "$OUT" "${@:3}" \
    >"$OUT/gpu_check.log" 2>&1
bench=$?
echo "gpu_check.py exit $bench" >>"$OUT/gpu_check.log"
grep -v "^train:\|it/s\]" "$OUT/gpu_check.log" | tail -40
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
