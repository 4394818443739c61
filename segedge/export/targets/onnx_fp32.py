"""Target `onnx`: the verified FP32 ONNX (model.onnx), the spine every other target is built from."""

from __future__ import annotations

from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

FILENAME = "model.onnx"


def build(ctx: ExportContext) -> TargetArtifact:
    """Write model.onnx with its metadata; the PyTorch check already ran (and gated) in the pipeline."""
    import onnx

    from ..torch2onnx import opset_of

    model = onnx.ModelProto()
    model.CopyFrom(ctx.fp32_model)
    entry = {"precision": "fp32", "opset": opset_of(model), "runtime": "onnxruntime",
             "verification": ctx.cache["fp32_verification"]}
    return write_onnx_artifact(ctx, "onnx", FILENAME, model, entry)


register_target(TargetSpec("onnx", build, "FP32 ONNX, opset 17 default; --opset 16 for TensorRT 8.5", "fp32",
                           toolkits=("onnxruntime",), backend="onnxruntime"))
