#!/usr/bin/env bash
# On a Jetson (JetPack 5/6): the same table with GPU execution providers (ONNX Runtime picks TensorRT/CUDA EPs when
# its build has them; PyTorch runs on cuda) and power per frame from tegrastats (--power on fails loudly without it).
# Env as readme_table.sh; TARGETS defaults to torch,onnx,ort-int8 (TensorRT engines: device_check.sh).
source "$(dirname "$0")/_common.sh"
OUT="${OUT:-benchmarks/results/jetson-384x512}"
"$SEGEDGE" bench --model "$MODELS" --targets "$TARGETS" \
  --data "$CAMVID" --dataset camvid --split val --input-size 384x512 \
  --device auto --power on --warmup 20 --iters 200 ${THREAD_ARGS[@]+"${THREAD_ARGS[@]}"} --out "$OUT" "$@"
