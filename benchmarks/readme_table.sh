#!/usr/bin/env bash
# The README's main table and figures: demo b0 and topformer-t on CamVid val at 384x512, every CPU target,
# latency (inference and end to end), peak RSS, size, mIoU and agreement with the FP32 PyTorch reference.
# Writes benchmarks/results/camvid-384x512/{results.json,results.csv,results.md,*.png}.
# Env: CAMVID, MODELS, TARGETS, THREADS (default: every core), OUT. Extra arguments go to `segedge bench`.
source "$(dirname "$0")/_common.sh"
OUT="${OUT:-benchmarks/results/camvid-384x512}"
"$SEGEDGE" bench --model "$MODELS" --targets "$TARGETS" \
  --data "$CAMVID" --dataset camvid --split val --input-size 384x512 \
  --warmup 10 --iters 100 ${THREAD_ARGS[@]+"${THREAD_ARGS[@]}"} --out "$OUT" "$@"
echo "README table: $OUT/results.md; figures: $OUT/latency_vs_miou.png, $OUT/per_class_iou.png"
