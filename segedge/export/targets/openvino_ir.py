"""Target `openvino`: the verified FP32 ONNX as an OpenVINO IR (model.xml + model.bin), weights kept FP32.

`openvino.convert_model` of the FP32 ONNX spine, saved with `compress_to_fp16=False` (OpenVINO would otherwise
halve the weights to FP16). The IR is checked against PyTorch by running it with OpenVINO on CPU on the same check
batches as every other target, with an explicit INFERENCE_PRECISION_HINT: OpenVINO picks bf16 by default on CPUs
with AVX-512 BF16/AMX (toolchain-facts.md), so the hint (`--ov-precision`, f32 default) is set and recorded in the
manifest entry and in the IR's rt_info; the runtime backend uses the recorded hint unless told otherwise. With f32
the check gates like the FP32 ONNX one. The helpers here are shared with `openvino-int8`.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from ...errors import ExportError
from .. import verify as _verify
from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact

FILENAME = "model.xml"
INSTALL_HINT = "pip install 'segedge[openvino]'"
RT_INFO_SECTION = "segedge"
# Entry keys written to the IR's rt_info (section "segedge", read back by segedge.runtime.backends.openvino) besides
# the manifest's model keys + TARGET_KEYS; values encoded like ONNX metadata_props (see manifest.embed_metadata).
OV_ENTRY_KEYS = ("inference_precision_hint", "openvino_version", "nncf_version")


def import_reason(module: str) -> str | None:
    try:
        __import__(module)
    except Exception as e:  # noqa: BLE001 - a broken install (not only ImportError) must give a reason too
        detail = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        return f"{module} cannot be imported ({detail}): {INSTALL_HINT}"
    return None


def requires_openvino() -> str | None:
    """Why the openvino target cannot run here, or None."""
    return import_reason("openvino")


def openvino_version() -> str:
    """The installed OpenVINO version (full build string)."""
    import openvino as ov

    return str(getattr(ov, "__version__", None) or ov.get_version())


def precision_hint(ctx: ExportContext) -> str:
    """The INFERENCE_PRECISION_HINT the openvino targets are checked with (ExportOptions.ov_precision)."""
    return str(getattr(ctx.options, "ov_precision", "f32") or "f32").strip().lower()


def first_line(e: BaseException) -> str:
    """An exception's first message line, shortened (OpenVINO/NNCF errors span many lines)."""
    text = str(e).strip()
    return (text.splitlines()[0][:160] if text else type(e).__name__)


def fp32_model(ctx: ExportContext) -> Any:
    """The FP32 ONNX converted to an ov.Model once per export (a clone each call: callers may modify it)."""
    if "openvino_fp32" not in ctx.cache:
        import openvino as ov

        ctx.progress("converting the FP32 ONNX to OpenVINO IR")
        try:
            ctx.cache["openvino_fp32"] = ov.convert_model(str(ctx.fp32_path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types (OpConversionFailure, …)
            raise ExportError(f"OpenVINO cannot convert the FP32 ONNX ({first_line(e)}); try another --opset or "
                              "report the model/options") from None
    return ctx.cache["openvino_fp32"].clone()


def compile_for_check(model: Any, hint: str) -> Any:
    """Compile an ov.Model on CPU with an explicit precision hint (latency mode, default thread count)."""
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})


def actual_precision(compiled: Any) -> str:
    """The inference precision the compiled model really uses ('f32', 'bf16', …)."""
    p = compiled.get_property("INFERENCE_PRECISION_HINT")
    return p.get_type_name() if hasattr(p, "get_type_name") else str(p)


def check_runner(ctx: ExportContext, model: Any, hint: str) -> tuple[Callable[[np.ndarray], Any], Any]:
    """(run, compiled): run(batch) → logits, or (labels, logits) for a labels-out (raw io) model, whose logits
    tensor is exposed as an extra output on a copy used only for the check."""
    logits_name = _verify.logits_tensor(ctx.fp32_model)
    labels_out = logits_name != ctx.fp32_model.graph.output[0].name
    if labels_out:
        model = model.clone()
        try:
            model.add_outputs([logits_name])
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"cannot expose the logits tensor '{logits_name}' of the OpenVINO IR for its check "
                              f"({first_line(e)})") from None
    compiled = compile_for_check(model, hint)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> Any:
        request.infer({0: np.ascontiguousarray(x)})
        first = np.array(request.get_output_tensor(0).data, copy=True)
        if labels_out:
            return first, np.array(request.get_output_tensor(len(compiled.outputs) - 1).data, copy=True)
        return first

    return run, compiled


def verify_ir(ctx: ExportContext, model: Any, name: str) -> dict[str, Any]:
    """Run `model` with OpenVINO on the export's check batches and compare with PyTorch (+ mIoU with --val)."""
    if ctx.verify_with is None:  # pragma: no cover - the pipeline always provides it
        raise ExportError("this export pipeline cannot check non-ONNX targets (ExportContext.verify_with is unset)")
    hint = precision_hint(ctx)
    run, compiled = check_runner(ctx, model, hint)
    res = ctx.verify_with(run, name)
    res["runtime"] = "openvino CPU"
    res["inference_precision_hint"] = hint
    res["inference_precision"] = actual_precision(compiled)
    return res


def stage_ir(ctx: ExportContext, target: str, filename: str, model: Any, entry: dict[str, Any]) -> TargetArtifact:
    """Record the manifest keys in the IR's rt_info and save model.xml + .bin (FP32 weights kept) to staging."""
    import openvino as ov

    from ..manifest import STRING_KEYS

    entry = {"file": filename, **entry}
    meta = ctx.manifest.target_metadata(target, entry)
    meta.update({k: entry[k] for k in OV_ENTRY_KEYS if k in entry})
    for k, v in meta.items():
        model.set_rt_info(v if (k in STRING_KEYS and isinstance(v, str)) else json.dumps(v, default=str),
                          [RT_INFO_SECTION, k])
    path = ctx.staged(filename)
    try:
        ov.save_model(model, str(path), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot write {filename} ({first_line(e)})") from None
    return TargetArtifact(path, entry, extra_files=[path.with_suffix(".bin")])


def build(ctx: ExportContext) -> TargetArtifact:
    """Convert the FP32 ONNX, check the IR with OpenVINO against PyTorch (gate with f32), stage model.xml/.bin."""
    model = fp32_model(ctx)
    hint = precision_hint(ctx)
    ver = verify_ir(ctx, model, "openvino")
    if hint == "f32":
        _verify.check_fp32(ver, "the OpenVINO FP32 IR")
    entry = {
        "precision": "fp32", "runtime": "openvino", "inference_precision_hint": hint,
        "openvino_version": openvino_version(), "compress_to_fp16": False,
        "converted_from": {"graph_sha256": ctx.graph_sha256, "converter": "openvino.convert_model"},
        "verification": ver,
    }
    return stage_ir(ctx, "openvino", FILENAME, model, entry)


register_target(TargetSpec("openvino", build, "OpenVINO IR, FP32 weights (model.xml + model.bin)", "fp32",
                           requires=requires_openvino))
