# Shared settings for the scripts in benchmarks/ (sourced, not run).
# CAMVID: CamVid root (SegNet layout: train/ trainannot/ val/ valannot/). Never copy it into the repository.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CAMVID="${CAMVID:-${SEGEDGE_CAMVID:-$REPO/../shared/datasets/camvid}}"
if [ ! -d "$CAMVID/val" ]; then
  echo "error: CamVid not found at $CAMVID (set CAMVID=/path/to/camvid)" >&2
  exit 2
fi
SEGEDGE="${SEGEDGE:-segedge}"
# The demo checkpoints (segedge/weights/*.safetensors) are used when no --weights is given.
MODELS="${MODELS:-b0,topformer-t}"
# CPU targets: FP32 PyTorch reference, FP32 ONNX Runtime, ONNX Runtime INT8, plus OpenVINO when those targets exist.
if [ -z "${TARGETS:-}" ]; then
  TARGETS="torch,onnx,ort-int8"
  for t in openvino openvino-int8; do
    if "${PYTHON:-python}" -c "from segedge.export.targets import get_target; get_target('$t')" 2>/dev/null; then
      TARGETS="$TARGETS,$t"
    fi
  done
fi
THREAD_ARGS=()
if [ -n "${THREADS:-}" ]; then THREAD_ARGS=(--threads "$THREADS"); fi
cd "$REPO"  # export folders go to exports/<model>-<H>x<W> and are reused by the next script
