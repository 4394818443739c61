"""Target `qdq`: the TensorRT-compatible Q/DQ ONNX (model.qdq.onnx), the graph the `trt-int8` engine is built from.

Symmetric int8 activations and weights (zero points 0), per-channel weights on the output-channel axis, per-tensor
activations, float weights behind Q→DQ pairs, float biases; Q/DQ placed as NVIDIA recommends: on the inputs of
Conv/ConvTranspose/Gemm/MatMul (never their outputs) and on the skip input of residual Adds that fuse into a
weighted op's epilogue. Ranges come from the same calibration table as ort-int8, except that attention maps (Softmax
outputs) are quantized on their definitional range [0, 1]. Every file is checked with both rule sets of
`segedge.export.qdq_rules` (`validate_qdq`: types, scales, granularity; `check_placement`: where the Q/DQ sit)
before it is written. ONNX Runtime runs it (slowly) for the accuracy check.
"""

from __future__ import annotations

from typing import Any

from ...errors import ExportError
from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

FILENAME = "model.qdq.onnx"


def check_tensorrt_graph(qmodel: Any, name: str = FILENAME) -> None:
    """Raise ExportError naming the first broken rule when `qmodel` breaks TensorRT's Q/DQ rules or placement."""
    from ..qdq_rules import check_placement, format_violations, validate_qdq

    # A violation is a bug in the flavour settings, not a user error: say what broke.
    for what, violations in (("Q/DQ rule", validate_qdq(qmodel)), ("Q/DQ placement rule", check_placement(qmodel))):
        if violations:
            raise ExportError(f"{name} breaks {len(violations)} TensorRT {what}(s), first: "
                              f"{format_violations(violations, 1)}")


def tensorrt_qdq_graph(ctx: ExportContext) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(graph, quantization entry, calibration entry) of the TensorRT Q/DQ graph, made once per export: the `qdq`
    and `trt-int8` targets share it."""
    if "tensorrt_qdq" not in ctx.cache:
        from ..quantize import TENSORRT, quantize, summarize
        from ..sensitivity import default_kept_float

        from ..qat_ranges import calibration_for

        table, calibration = calibration_for(ctx, "qdq")  # learned ranges replace calibrated ones after --qat
        pre = ctx.pre_quant_model()
        kept, budget = default_kept_float(ctx, "qdq", TENSORRT)  # trt-int8 inherits the islands chosen here
        ctx.progress("quantizing for TensorRT (symmetric int8, per-channel weights, NVIDIA's Q/DQ placement)")
        qmodel = quantize(pre, table, TENSORRT, kept, work_dir=ctx.work_dir)
        check_tensorrt_graph(qmodel)
        ctx.cache["tensorrt_qdq"] = (
            qmodel, {**summarize(qmodel, kept, TENSORRT), "qdq_rules": "passed", "qdq_placement": "passed",
                     **({"budget": budget} if budget is not None else {})},
            calibration)
    return ctx.cache["tensorrt_qdq"]


def build(ctx: ExportContext) -> TargetArtifact:
    """Quantize TensorRT-style with the shared table, validate the Q/DQ rules, check against PyTorch, stage it."""
    from ..torch2onnx import opset_of

    qmodel, quantization, calibration = tensorrt_qdq_graph(ctx)
    entry = {
        "precision": "int8", "opset": opset_of(qmodel), "runtime": "tensorrt (onnxruntime runs it for checks)",
        "quantization": quantization, "calibration": calibration, "verification": ctx.verify(qmodel, "qdq"),
    }
    return write_onnx_artifact(ctx, "qdq", FILENAME, qmodel, entry)


register_target(TargetSpec("qdq", build, "TensorRT-style Q/DQ ONNX: symmetric int8, per-channel weights", "int8",
                           needs_calibration=True, toolkits=("onnxruntime",), backend="onnxruntime"))
