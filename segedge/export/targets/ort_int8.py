"""Target `ort-int8`: the fastest correct ONNX Runtime CPU INT8 model (model.int8.onnx).

QDQ, uint8 asymmetric activations, int8 symmetric per-tensor weights, MinMax by default; which ops run in INT8 is
the flavour's scope, per model family unless `--ort-scope` says otherwise (segedge.export.quantize explains the
measurement behind each default). `model.qdq.onnx` (target `qdq`, the TensorRT flavour) is written alongside from
the same calibration table.
"""

from __future__ import annotations

from . import TargetOption, TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

FILENAME = "model.int8.onnx"


def build(ctx: ExportContext) -> TargetArtifact:
    """Quantize the pre-processed FP32 graph with the shared table, check it against PyTorch, stage it."""
    from ..quantize import ort_cpu_flavour, quantize, summarize
    from ..sensitivity import default_kept_float
    from ..torch2onnx import opset_of

    from ..qat_ranges import calibration_for

    table, calibration = calibration_for(ctx, "ort-int8")  # learned ranges replace calibrated ones after --qat
    pre = ctx.pre_quant_model()
    opts = ctx.options
    requested = ctx.option("ort_scope")
    scope = requested
    if scope == "auto" and opts.quantize_all:
        scope = "all"
    flavour = ort_cpu_flavour(str(ctx.manifest.contract.family or ""), scope)
    kept, budget = default_kept_float(ctx, "ort-int8", flavour)
    ctx.progress(f"quantizing ort-int8 (uint8 activations, int8 weights, per-tensor, scope {flavour.scope})")
    qmodel = quantize(pre, table, flavour, kept, work_dir=ctx.work_dir)
    entry = {
        "precision": "int8", "opset": opset_of(qmodel), "runtime": "onnxruntime",
        "quantization": {**summarize(qmodel, kept, flavour), "scope_requested": requested,
                         **({"budget": budget} if budget is not None else {})},
        "calibration": calibration,
        "verification": ctx.verify(qmodel, "ort-int8"),
    }
    return write_onnx_artifact(ctx, "ort-int8", FILENAME, qmodel, entry)


def parse_scope(value: object) -> str:
    """--ort-scope: auto | all | conv (checked by segedge.export.quantize, imported only when an export runs)."""
    from ..quantize import check_ort_scope

    return check_ort_scope(str(value))


ORT_SCOPE = TargetOption(
    "ort_scope", "--ort-scope", "auto", parse=parse_scope,
    help="ort-int8: which ops run in INT8: auto (per model family, the fastest measured: conv for SegFormer, all for "
         "TopFormer), all quantizable ops, or conv (dense convolutions and the Resize/Concat feeding them).")

register_target(TargetSpec("ort-int8", build, "ONNX Runtime CPU INT8, QDQ u8s8; writes qdq alongside", "int8",
                           needs_calibration=True, companions=("qdq",), toolkits=("onnxruntime",),
                           backend="onnxruntime", options=(ORT_SCOPE,)))
