#!/usr/bin/env bash
# The TensorRT device check, in one command, on a Jetson (JetPack 5.1 / 6.x) or any NVIDIA GPU with TensorRT:
# builds the trt-fp16 and trt-int8 engines of both demo models, checks each against its bundle's reference
# (max |Δlogits|, argmax agreement) and CamVid val (mIoU), then runs the bench table, all into one results folder.
#
#   benchmarks/device_check.sh                       # bundles made here (needs torch on the device)
#   BUNDLES="exports/b0-384x512 exports/topformer-t-384x512" benchmarks/device_check.sh
#                                                    # bundles exported on a host and copied over (runtime-only device)
#
# Sized for an Orin Nano within ~10 minutes: one timing cache shared by the four builds, 384x512, 100 timed rounds.
# Env as _common.sh, plus TRT_VERSION (default: the installed TensorRT's generation), OUT, ITERS, BUNDLES.
# Not run by segedge's developers: their machines have no NVIDIA GPU with TensorRT (see README, "TensorRT").
source "$(dirname "$0")/_common.sh"
PY="${PYTHON:-python3}"
OUT="${OUT:-benchmarks/results/device-check}"
ITERS="${ITERS:-100}"
mkdir -p "$OUT"
TRT_VERSION="${TRT_VERSION:-$("$PY" -c 'import tensorrt; from segedge.engine.bundle import generation_of; print(generation_of(tensorrt.__version__))')}"
CACHE="$OUT/timing.cache"
"$SEGEDGE" doctor --json > "$OUT/doctor.json"

if [ -z "${BUNDLES:-}" ]; then
  BUNDLES=""
  for m in ${MODELS//,/ }; do
    dir="exports/$m-384x512"
    # On a host with TensorRT + a GPU, export builds the engines right after writing the bundle.
    "$SEGEDGE" export --model "$m" --input-size 384x512 --target onnx,trt-fp16,trt-int8 --trt-version "$TRT_VERSION" \
      --calib "$CAMVID/train" --val "$CAMVID" --out "$dir" | tee "$OUT/export-$m.log"
    BUNDLES="$BUNDLES $dir"
  done
fi

for dir in $BUNDLES; do
  for t in trt-fp16 trt-int8; do
    status=$("$PY" -c "import json,sys; print(json.load(open('$dir/manifest.json'))['targets']['$t']['engine']['status'])")
    if [ "$status" != "built" ]; then
      "$SEGEDGE" engine build "$dir" --target "$t" --timing-cache "$CACHE" --val "$CAMVID" \
        | tee "$OUT/build-$(basename "$dir")-$t.log"
    fi
    cp "$dir/manifest.json" "$OUT/manifest-$(basename "$dir").json"
  done
done

ARTIFACTS=$(echo $BUNDLES | tr ' ' ',')
"$SEGEDGE" bench --model "$MODELS" --targets torch,onnx,trt-fp16,trt-int8 --artifacts "$ARTIFACTS" \
  --data "$CAMVID" --dataset camvid --split val --input-size 384x512 --device auto --power auto \
  --warmup 20 --iters "$ITERS" ${THREAD_ARGS[@]+"${THREAD_ARGS[@]}"} --out "$OUT" "$@"
echo "device check written to $OUT (engines stay in the export folders: they are specific to this GPU)"
