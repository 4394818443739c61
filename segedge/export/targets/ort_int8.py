"""Target `ort-int8`: the fastest correct ONNX Runtime CPU INT8 model (model.int8.onnx).

QDQ, uint8 asymmetric activations, int8 symmetric per-tensor weights, MinMax by default (~1.5× FP32 for B0 on
this CPU, see toolchain-facts.md). `model.qdq.onnx` (target `qdq`, the TensorRT flavour) is written alongside from
the same calibration table.
"""

from __future__ import annotations

import onnx

from ..quantize import ORT_CPU, quantize, select_kept_float, summarize
from ..torch2onnx import opset_of
from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

FILENAME = "model.int8.onnx"


def build(ctx: ExportContext) -> TargetArtifact:
    """Quantize the pre-processed FP32 graph with the shared table, check it against PyTorch, stage it."""
    table, reused = ctx.calibration()
    pre = ctx.pre_quant_model()
    kept = select_kept_float(onnx.load(str(pre)), ctx.options.keep_float, ctx.options.quantize_all)
    ctx.progress("quantizing ort-int8 (uint8 activations, int8 weights, per-tensor)")
    qmodel = quantize(pre, table, ORT_CPU, kept)
    entry = {
        "precision": "int8", "opset": opset_of(qmodel), "runtime": "onnxruntime",
        "quantization": summarize(qmodel, kept, ORT_CPU),
        "calibration": {**table.summary(), "reused": reused},
        "verification": ctx.verify(qmodel, "ort-int8"),
    }
    return write_onnx_artifact(ctx, "ort-int8", FILENAME, qmodel, entry)


register_target(TargetSpec("ort-int8", build, "ONNX Runtime CPU INT8 (QDQ u8s8); writes model.qdq.onnx alongside",
                           "int8", needs_calibration=True, companions=("qdq",)))
