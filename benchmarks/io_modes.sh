#!/usr/bin/env bash
# Camera-ready I/O and post-processing, side by side: float export + fast / exact post-processing vs --io raw
# (argmax in the graph) vs --io raw --upsample, end-to-end latency per frame and mIoU on CamVid val.
# Writes benchmarks/results/io-modes/<model>-<target>/{io_modes.json,io_modes.md}.
# Env: CAMVID, MODELS, IO_TARGETS (default onnx,ort-int8), THREADS, OUT.
source "$(dirname "$0")/_common.sh"
OUT="${OUT:-benchmarks/results/io-modes}"
IO_TARGETS="${IO_TARGETS:-onnx,ort-int8}"
for model in ${MODELS//,/ }; do
  for target in ${IO_TARGETS//,/ }; do
    "${PYTHON:-python}" benchmarks/io_modes.py --model "$model" --target "$target" \
      --data "$CAMVID" --dataset camvid --split val --input-size 384x512 --calib "camvid:$CAMVID:train" \
      --iters 60 --warmup 5 ${THREAD_ARGS[@]+"${THREAD_ARGS[@]}"} --out "$OUT/$model-$target" "$@"
  done
done
