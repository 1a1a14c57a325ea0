#!/usr/bin/env bash
# `make demo`: the embedded synthetic data -> a short from-scratch Mask R-CNN (R18-FPN, GN) on CPU -> COCO eval.
# About 5 minutes on 2 CPU cores after the install. Everything lands in demo_output/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-demo_output}
BIN=.venv/bin/scratchdet
rm -rf "$OUT/run_scratch"
"$BIN" data synth --out "$OUT/shapes" --train-images 200 --val-images 50 --seed 0 > /dev/null
echo "synthetic data: $OUT/shapes"
# 1x of the mini schedule (360 iterations at batch 4), evaluated every 120 iterations for a learning curve.
"$BIN" train configs/mini/mask_rcnn_R18_FPN_GN_scratch.yaml \
  data.root="$OUT/shapes" output="$OUT/run_scratch" schedule.multiplier=1 eval.period=120 train.num_threads=2
"$BIN" eval "$OUT/run_scratch"
echo
echo "results: $OUT/run_scratch  (metrics.jsonl = losses + AP per evaluation, eval/*.json = COCO metrics,"
echo "         checkpoints/, config.yaml, env.json; TensorBoard: tensorboard --logdir $OUT/run_scratch/tb)"
