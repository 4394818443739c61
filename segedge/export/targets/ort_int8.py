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
        "latency": _vs_fp32(ctx, pre, qmodel),
    }
    return write_onnx_artifact(ctx, "ort-int8", FILENAME, qmodel, entry)


def _vs_fp32(ctx: ExportContext, fp32_path: object, qmodel: object) -> dict[str, object]:
    """p50 of the INT8 model and of its FP32 graph here (ONNX Runtime's default threads, one rotating-block run): an
    INT8 model that is not faster than FP32 on this CPU is said at export, not found out on the device."""
    from ...doctor import cpu_report
    from ...tune.hints import time_runs
    from ..verify import ort_session

    x = ctx.make_input(ctx.frames.frames[0])
    sessions = {"int8": ort_session(qmodel), "fp32": ort_session(str(fp32_path))}
    runs = {k: (lambda sess: (lambda v: sess.run(None, {ctx.input_name: v})))(sess) for k, sess in sessions.items()}
    p50 = time_runs(runs, x)
    ratio = p50["int8"] / p50["fp32"]
    if ratio >= 1.0:
        ctx.progress(f"warning: ort-int8 runs at {ratio:.2f}x the time of its FP32 graph on this CPU "
                     f"({p50['int8']:.2f} vs {p50['fp32']:.2f} ms); `--target cpu` measures every runtime and picks "
                     "the fastest")
    return {"int8_p50_ms": round(p50["int8"], 3), "fp32_p50_ms": round(p50["fp32"], 3), "ratio": round(ratio, 3),
            "threads": "onnxruntime default", "cpu": cpu_report().get("model"), "input": list(x.shape)}


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
