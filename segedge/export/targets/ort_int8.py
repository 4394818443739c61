"""Target `ort-int8`: the fastest correct ONNX Runtime CPU INT8 model (model.int8.onnx).

QDQ, uint8 asymmetric activations, int8 symmetric per-tensor weights, MinMax by default; which ops run in INT8 is
the flavour's scope, per model family unless `--ort-scope` says otherwise (segedge.export.quantize explains the
measurement behind each default). `model.qdq.onnx` (target `qdq`, the TensorRT flavour) is written alongside from
the same calibration table.
"""

from __future__ import annotations

import onnx

from ..quantize import ort_cpu_flavour, quantize, select_kept_float, summarize
from ..torch2onnx import opset_of
from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

FILENAME = "model.int8.onnx"


def build(ctx: ExportContext) -> TargetArtifact:
    """Quantize the pre-processed FP32 graph with the shared table, check it against PyTorch, stage it."""
    table, reused = ctx.calibration()
    pre = ctx.pre_quant_model()
    opts = ctx.options
    scope = opts.ort_scope
    if scope == "auto" and opts.quantize_all:
        scope = "all"
    flavour = ort_cpu_flavour(str(ctx.manifest.model.get("family", "")), scope)
    kept = select_kept_float(onnx.load(str(pre)), opts.keep_float, opts.quantize_all, flavour)
    ctx.progress(f"quantizing ort-int8 (uint8 activations, int8 weights, per-tensor, scope {flavour.scope})")
    qmodel = quantize(pre, table, flavour, kept)
    entry = {
        "precision": "int8", "opset": opset_of(qmodel), "runtime": "onnxruntime",
        "quantization": {**summarize(qmodel, kept, flavour), "scope_requested": opts.ort_scope},
        "calibration": {**table.summary(), "reused": reused},
        "verification": ctx.verify(qmodel, "ort-int8"),
    }
    return write_onnx_artifact(ctx, "ort-int8", FILENAME, qmodel, entry)


register_target(TargetSpec("ort-int8", build, "ONNX Runtime CPU INT8 (QDQ u8s8); writes model.qdq.onnx alongside",
                           "int8", needs_calibration=True, companions=("qdq",)))
