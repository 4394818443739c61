"""Target `cpu`: the fastest CPU deployment within the mIoU budget, measured on the machine doing the export.

Builds the candidates of segedge.tune (ONNX Runtime FP32 and INT8 scopes, OpenVINO FP32 and NNCF INT8 presets,
with and without the family's float islands, each OpenVINO precision hint the CPU supports, 1 and 2 threads), times
them here in one rotating-block run, measures each one's drop on `--val` (alternate frames: the budget set chooses,
the held-back set is reported) and keeps the fastest within `--max-miou-drop` (0.3 pt by default). The chosen model
is written as model.cpu.onnx or model.cpu.xml + .bin, checked against PyTorch like every target; its entry records
the CPU, the choice and why, the thread count and precision hint the runtime then uses by default; cpu-tune.json /
.md / .png hold every candidate. `Segmenter.load(folder)` picks this target when the folder has it.
"""

from __future__ import annotations

from typing import Any

from ...errors import SegedgeError
from . import TargetOption, TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

ONNX_FILE = "model.cpu.onnx"
IR_FILE = "model.cpu.xml"


def _positive(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise SegedgeError(f"--cpu-iters must be a whole number ≥ 1, got '{value}'")
    return n


def _threads(value: Any) -> str:
    from ...tune.candidates import thread_counts

    thread_counts(str(value))  # validated now, before the weights load
    return str(value)


CPU_CANDIDATES = TargetOption("cpu_candidates", "--cpu-candidates", "all",
                              help="cpu: comma-separated globs of the candidates to try (e.g. 'ov-*,ort-fp32'); all "
                                   "by default (`segedge export --target cpu` lists them in cpu-tune.md).")
CPU_THREADS = TargetOption("cpu_threads", "--cpu-threads", "auto", parse=_threads,
                           help="cpu: thread counts to try, 'auto' (1 and 2, at most the cores here) or e.g. '1,4'.")
CPU_ITERS = TargetOption("cpu_iters", "--cpu-iters", 20, parse=_positive,
                         help="cpu: timed calls per candidate (rotating blocks of 5).")


def _entry(res: Any, row: dict[str, Any]) -> dict[str, Any]:
    """The manifest entry's common keys: what was chosen, on which CPU, why, and its figures."""
    c, report = res.chosen, res.report
    cpu = report["cpu"]
    fp32 = next((r for r in report["rows"] if r["recipe"] == "ort-fp32" and r["threads"] == c.threads), None)
    return {
        "precision": c.recipe.precision, "runtime": c.recipe.runtime, "threads": c.threads,
        "quantization": {"recipe": c.recipe.name, **res.built.summary},
        "tuned": {"candidate": c.name, "budget_pp": report["budget_pp"], "why": report["choice"]["why"],
                  "cpu": {"model": cpu.get("model"), "arch": cpu.get("arch"), "isa": cpu.get("isa"),
                          "cores_available": cpu.get("cores_available")},
                  "drop_pt": {"budget": row["drop_pt"], "held_back": row["held_back_drop_pt"]},
                  "frames": {"budget": report["frames"]["budget"], "held_back": report["frames"]["held_back"]},
                  "latency_ms": {"p50": row["p50_ms"], "ort_fp32_p50": fp32["p50_ms"] if fp32 else None,
                                 "inference_p50": row.get("inference_p50_ms"),
                                 "what": "p50: frame → labels as deployed; inference_p50: the backend alone"},
                  "candidates": len(report["rows"]), "report": "cpu-tune.json",
                  "tuning_seconds": report["tuning_seconds"]},
    }


def _calibration(ctx: ExportContext, res: Any) -> dict[str, Any] | None:
    """What the chosen INT8 model was calibrated on (none for FP32)."""
    if res.chosen.recipe.precision != "int8":
        return None
    if res.chosen.recipe.runtime == "onnxruntime":
        from ..qat_ranges import calibration_for

        return calibration_for(ctx, "ort-int8")[1]
    f = ctx.frames
    return {"source": f.source, "source_kind": f.kind, "count": len(f), "method": "nncf-ptq",
            "seed": ctx.options.calib_seed, "source_sha256": f.sha256, "graph_sha256": ctx.graph_sha256}


def _stage_onnx(ctx: ExportContext, res: Any, entry: dict[str, Any]) -> TargetArtifact:
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(res.built.model)  # the FP32 candidate is the export's own graph: never embed into that one
    entry["verification"] = ctx.verify(model, "cpu")
    return write_onnx_artifact(ctx, "cpu", ONNX_FILE, model, entry)


def _stage_ir(ctx: ExportContext, res: Any, entry: dict[str, Any]) -> TargetArtifact:
    from .openvino_ir import actual_precision, check_runner, openvino_version, stage_ir

    hint = str(res.chosen.hint)
    run, compiled = check_runner(ctx, res.built.model, hint)
    ver = ctx.verify_with(run, "cpu") if ctx.verify_with else {}
    ver.update(runtime="openvino CPU", inference_precision_hint=hint, inference_precision=actual_precision(compiled))
    entry.update(inference_precision_hint=hint, openvino_version=openvino_version(), verification=ver)
    return stage_ir(ctx, "cpu", IR_FILE, res.built.model, entry)


def build(ctx: ExportContext) -> TargetArtifact:
    """Tune (segedge.tune), stage the chosen model with its entry, and the candidate report beside it."""
    from ...tune import report as report_
    from ...tune.run import TuneSettings, tune
    from ...tune.select import DEFAULT_BUDGET_PP

    budget = ctx.options.max_miou_drop if ctx.options.max_miou_drop is not None else DEFAULT_BUDGET_PP
    res = tune(ctx, TuneSettings(budget_pp=float(budget), patterns=ctx.option("cpu_candidates"),
                                 threads=ctx.option("cpu_threads"), iters=int(ctx.option("cpu_iters"))))
    row = next(r for r in res.report["rows"] if r["name"] == res.chosen.name)
    entry = _entry(res, row)
    cal = _calibration(ctx, res)
    if cal is not None:
        entry["calibration"] = cal
    ctx.progress(f"cpu: chose {res.chosen.name} ({row['p50_ms']:.2f} ms, drop {row['drop_pt']:+.2f} pt)")
    art = _stage_onnx(ctx, res, entry) if res.chosen.recipe.runtime == "onnxruntime" else _stage_ir(ctx, res, entry)
    art.extra_files.extend(report_.write(ctx.stage_dir, res.report))
    return art


register_target(TargetSpec("cpu", build, "the fastest CPU deployment within --max-miou-drop (0.3 pt default), "
                           "measured here: ONNX Runtime / OpenVINO, FP32 / INT8, hints and threads; needs --val",
                           "chosen", needs_calibration=True, toolkits=("onnxruntime",), backend="onnxruntime",
                           options=(CPU_CANDIDATES, CPU_THREADS, CPU_ITERS)))
