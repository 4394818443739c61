"""Target `openvino`: the verified FP32 ONNX as an OpenVINO IR (model.xml + model.bin), weights kept FP32.

`openvino.convert_model` of the FP32 ONNX spine, saved with `compress_to_fp16=False` (OpenVINO would otherwise
halve the weights to FP16). The IR is checked against PyTorch by running it with OpenVINO on CPU on the same check
batches as every other target, with an explicit INFERENCE_PRECISION_HINT: OpenVINO picks bf16 by default on CPUs
with AVX-512 BF16/AMX (toolchain-facts.md), so the hint is set and recorded in the manifest entry and in the IR's
rt_info; the runtime backend uses the recorded hint unless told otherwise. `--ov-precision auto` (the default)
checks and times every hint the CPU supports and records the fastest within budget (segedge.tune.hints, with the
figures behind the choice); f32 or bf16 fix it. With f32 the check gates like the FP32 ONNX one. The helpers here
are shared with `openvino-int8`.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ...contract import write_rt_info
from ...errors import ExportError, SegedgeError, first_line
from ...toolkits.openvino import check_precision, core
from .. import verify as _verify
from . import TargetOption, TargetSpec, register_target
from .base import ExportContext, TargetArtifact

FILENAME = "model.xml"
CHECK_PRECISIONS = ("auto", "f32", "bf16")  # --ov-precision values: measured choice, or a fixed CPU hint


def parse_check_precision(value: Any) -> str:
    """--ov-precision: auto (measured), f32 or bf16 (the hint the export checks with and the runtime uses)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        hint = check_precision(str(value))
    except SegedgeError:
        hint = ""
    if hint not in CHECK_PRECISIONS:
        raise SegedgeError(f"--ov-precision must be one of {', '.join(CHECK_PRECISIONS)}, got '{value}'")
    return hint


OV_PRECISION = TargetOption(
    "ov_precision", "--ov-precision", "auto", parse=parse_check_precision,
    help="OpenVINO targets: inference precision hint of their check and default at run time: auto (every hint the "
         "CPU supports is checked and timed here; the fastest within --max-miou-drop, 0.3 pt, or within 0.5 % "
         "argmax agreement of f32 without --val, is recorded) | f32 | bf16.")


def openvino_version() -> str:
    """The installed OpenVINO version (full build string)."""
    import openvino as ov

    return str(getattr(ov, "__version__", None) or ov.get_version())


def requested_hint(ctx: ExportContext) -> str:
    """--ov-precision as given: auto, f32 or bf16."""
    return str(ctx.option("ov_precision"))


def fp32_model(ctx: ExportContext) -> Any:
    """The FP32 ONNX converted to an ov.Model once per export (a clone each call: callers may modify it)."""
    if "openvino_fp32" not in ctx.cache:
        import openvino as ov

        ctx.progress("converting the FP32 ONNX to OpenVINO IR")
        try:
            ctx.cache["openvino_fp32"] = ov.convert_model(str(ctx.fp32_path))
        except Exception as e:  # noqa: BLE001 - OpenVINO raises its own types (OpConversionFailure, …)
            raise ExportError(f"OpenVINO cannot convert the FP32 ONNX ({first_line(e)}); try another --opset or "
                              "report the model/options") from e
    return ctx.cache["openvino_fp32"].clone()


def compile_for_check(model: Any, hint: str) -> Any:
    """Compile an ov.Model on CPU with an explicit precision hint (latency mode, default thread count)."""
    return core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"})


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
                              f"({first_line(e)})") from e
    compiled = compile_for_check(model, hint)
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> Any:
        request.infer({0: np.ascontiguousarray(x)})
        first = np.array(request.get_output_tensor(0).data, copy=True)
        if labels_out:
            return first, np.array(request.get_output_tensor(len(compiled.outputs) - 1).data, copy=True)
        return first

    return run, compiled


def _check_hint(ctx: ExportContext, model: Any, name: str, hint: str, runner: tuple[Any, Any] | None = None
                ) -> tuple[Callable[[np.ndarray], Any], dict[str, Any]]:
    """(run, figures): `model` compiled with `hint` (or the `runner` already compiled), checked against PyTorch on
    the check batches (+ mIoU with --val)."""
    run, compiled = runner or check_runner(ctx, model, hint)
    res = ctx.verify_with(run, name) if ctx.verify_with else {}
    res["runtime"] = "openvino CPU"
    res["inference_precision_hint"] = hint
    res["inference_precision"] = actual_precision(compiled)
    return run, res


def verify_ir(ctx: ExportContext, model: Any, name: str, hint: str | None = None
              ) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    """(hint, verification, choice): the IR checked with `hint` (already chosen, e.g. by the budget search) or the
    requested one, or with each hint the CPU supports and the fastest within budget chosen (`--ov-precision auto`,
    segedge.tune.hints; `choice` records why)."""
    if ctx.verify_with is None:  # pragma: no cover - the pipeline always provides it
        raise ExportError("this export pipeline cannot check non-ONNX targets (ExportContext.verify_with is unset)")
    wanted = hint or requested_hint(ctx)
    if wanted != "auto":
        return wanted, _check_hint(ctx, model, name, wanted)[1], None
    from ...tune.candidates import openvino_hints
    from ...tune.hints import figures, pick_hint, time_runs

    hints = [h for h in openvino_hints() if h in ("f32", "bf16", "f16")]
    if len(hints) == 1:
        return "f32", _check_hint(ctx, model, name, "f32")[1], {
            "mode": "auto", "chosen": "f32", "why": "the CPU plugin reports no bf16/f16 capability: f32"}
    x = ctx.make_input(ctx.frames.frames[0])
    runners, dropped = _probe_hints(ctx, model, name, hints, x)
    checked = {h: _check_hint(ctx, model, name, h, r) for h, r in runners.items()}
    ctx.progress(f"timing {name} with precision hints {', '.join(checked)}")
    p50 = time_runs({h: run for h, (run, _) in checked.items()}, x)
    figs = {h: figures(checked[h][1], p50[h]) for h in checked}
    budget = ctx.options.max_miou_drop
    hint, why = pick_hint(figs, budget) if budget is not None else pick_hint(figs)
    return hint, checked[hint][1], {"mode": "auto", "chosen": hint, "why": why, "candidates": figs,
                                    **({"dropped": dropped} if dropped else {})}


def _probe_hints(ctx: ExportContext, model: Any, name: str, hints: list[str], x: np.ndarray
                 ) -> tuple[dict[str, tuple[Any, Any]], dict[str, str]]:
    """Compile `model` with each hint and probe it; a hint over 2× f32's probe could never be chosen and is dropped
    before its (possibly minutes-long) check: NNCF INT8 B0 with the f16 hint ran 6 s per frame on a Xeon with AMX.
    (compiled runners kept, {dropped hint: why})."""
    from ...tune.measure import hopeless, probe_call

    runners = {h: check_runner(ctx, model, h) for h in hints}
    probes = {h: probe_call(lambda r=runners[h][0]: r(x)) for h in hints}
    dropped = hopeless(probes, exact=["f32"])
    for h, why in dropped.items():
        ctx.progress(f"{name}: dropping the {h} hint: {why}")
        del runners[h]
    return runners, dropped


def stage_ir(ctx: ExportContext, target: str, filename: str, model: Any, entry: dict[str, Any]) -> TargetArtifact:
    """Record the manifest keys in the IR's rt_info and save model.xml + .bin (FP32 weights kept) to staging."""
    import openvino as ov

    entry = {"file": filename, **entry}
    write_rt_info(model, ctx.manifest.target_metadata(target, entry))  # the entry's OpenVINO keys included
    path = ctx.staged(filename)
    try:
        ov.save_model(model, str(path), compress_to_fp16=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot write {filename} ({first_line(e)})") from e
    return TargetArtifact(path, entry, extra_files=[path.with_suffix(".bin")])


def build(ctx: ExportContext) -> TargetArtifact:
    """Convert the FP32 ONNX, check the IR with OpenVINO against PyTorch (gate with f32), stage model.xml/.bin."""
    model = fp32_model(ctx)
    hint, ver, choice = verify_ir(ctx, model, "openvino")
    if hint == "f32":
        _verify.check_fp32(ver, "the OpenVINO FP32 IR")
    entry = {
        "precision": "fp32", "runtime": "openvino", "inference_precision_hint": hint,
        **({"precision_choice": choice} if choice else {}),
        "openvino_version": openvino_version(), "compress_to_fp16": False,
        "converted_from": {"graph_sha256": ctx.graph_sha256, "converter": "openvino.convert_model"},
        "verification": ver,
    }
    return stage_ir(ctx, "openvino", FILENAME, model, entry)


register_target(TargetSpec("openvino", build, "OpenVINO IR, FP32 weights: model.xml + .bin", "fp32",
                           toolkits=("openvino",), backend="openvino", options=(OV_PRECISION,)))
