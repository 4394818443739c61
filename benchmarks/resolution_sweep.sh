#!/usr/bin/env bash
# The README's latency-vs-input-size figure: demo b0 and topformer-t, every CPU target, at sizes valid for both
# families (multiples of 64). Latency only at the sweep sizes; mIoU is measured at the models' own 384x512 (on a
# subset of val, --limit 20: the full-val mIoU comes from readme_table.sh). Exports each size it lacks.
# Writes benchmarks/results/sweep/{results.json,sweep.csv,latency_vs_size.png,...}.
# Env: CAMVID, MODELS, TARGETS, THREADS, OUT, SIZES. Extra arguments go to `segedge bench`.
source "$(dirname "$0")/_common.sh"
OUT="${OUT:-benchmarks/results/sweep}"
SIZES="${SIZES:-256x320,384x512,512x512,512x640,640x832}"
"$SEGEDGE" bench --model "$MODELS" --targets "$TARGETS" \
  --data "$CAMVID" --dataset camvid --split val --input-size 384x512 --sizes "$SIZES" \
  --warmup 5 --iters 50 --limit 20 ${THREAD_ARGS[@]+"${THREAD_ARGS[@]}"} --out "$OUT" "$@"
echo "figure: $OUT/latency_vs_size.png; table: $OUT/results.md (sweep section), $OUT/sweep.csv"
