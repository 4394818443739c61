"""Target `qdq`: the TensorRT-compatible Q/DQ ONNX (model.qdq.onnx) that the future `trt-int8` target builds from.

Symmetric int8 activations and weights (zero points 0), per-channel weights on the output-channel axis, per-tensor
activations, float weights behind Q→DQ pairs, float biases; Q/DQ only on the inputs of Conv/MatMul/Gemm (TensorRT
fuses those). Ranges come from the same calibration table as ort-int8. Every file is checked with
`segedge.export.qdq_rules.validate_qdq` before it is written. ONNX Runtime runs it (slowly) for the accuracy check.
"""

from __future__ import annotations

from ...errors import ExportError
from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

FILENAME = "model.qdq.onnx"


def build(ctx: ExportContext) -> TargetArtifact:
    """Quantize TensorRT-style with the shared table, validate the Q/DQ rules, check against PyTorch, stage it."""
    import onnx

    from ..qdq_rules import format_violations, validate_qdq
    from ..quantize import TENSORRT, quantize, select_kept_float, summarize
    from ..torch2onnx import opset_of

    table, reused = ctx.calibration()
    pre = ctx.pre_quant_model()
    kept = select_kept_float(onnx.load(str(pre)), ctx.options.keep_float, ctx.options.quantize_all)
    ctx.progress("quantizing qdq (TensorRT style: symmetric int8, per-channel weights)")
    qmodel = quantize(pre, table, TENSORRT, kept, work_dir=ctx.work_dir)
    violations = validate_qdq(qmodel)
    if violations:  # a bug in the flavour settings, not a user error: say what broke
        raise ExportError(f"model.qdq.onnx breaks {len(violations)} TensorRT Q/DQ rule(s), first: "
                          f"{format_violations(violations, 1)}")
    entry = {
        "precision": "int8", "opset": opset_of(qmodel), "runtime": "tensorrt (onnxruntime runs it for checks)",
        "quantization": {**summarize(qmodel, kept, TENSORRT), "qdq_rules": "passed"},
        "calibration": {**table.summary(), "reused": reused},
        "verification": ctx.verify(qmodel, "qdq"),
    }
    return write_onnx_artifact(ctx, "qdq", FILENAME, qmodel, entry)


register_target(TargetSpec("qdq", build, "TensorRT-style Q/DQ ONNX: symmetric int8, per-channel weights", "int8",
                           needs_calibration=True, toolkits=("onnxruntime",), backend="onnxruntime"))
