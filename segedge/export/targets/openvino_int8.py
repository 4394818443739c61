"""Target `openvino-int8`: NNCF post-training INT8 quantization of the OpenVINO FP32 IR (model.int8.xml + .bin).

`nncf.quantize` on the FP32 ov.Model converted from the verified ONNX, calibrated on the SAME frames as ort-int8
(`ctx.frames`, pre-processed with `ctx.make_input`, subset_size = their number). SegFormer uses
`ModelType.TRANSFORMER` (NNCF then keeps LayerNorm/Softmax-sensitive parts in float and applies SmoothQuant where
it fits) with the MIXED preset (symmetric weights, asymmetric activations), and keeps the stage-1 attention
spatial-reduction convs (8×8, stride 8) float: measured on the CamVid demo B0 over all 101 val frames, quantizing
those two convs alone costs 0.9 pt mIoU (58.04 vs 58.94 %), keeping them float gives −0.03…+0.04 pt across
calibration seeds and frame counts, at 82 instead of 84 FakeQuantize ops. CNNs (TopFormer) use the PERFORMANCE
preset. Both keep the family's default float groups (sensitivity.FAMILY_FLOAT_GROUPS, the ONNX INT8 targets'
islands) out of NNCF's scope: calibrated without the dusk drive 0001TP, TopFormer-T lost +0.68…+1.27 pt on that drive
(three seeds) with `tpm.s1` quantized and +0.05 with it float, val unchanged (benchmarks/calibration_methods.py,
results/calibration/). NNCF collects its own statistics: the ONNX calibration table (and `--calib-method`, `--keep-float`,
`--quantize-all`) apply to the ONNX INT8 targets only. The result is checked with OpenVINO against PyTorch like
every INT8 target: recorded, not enforced.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, Sequence

from ...errors import ExportError, first_line
from . import TargetSpec, register_target
from .base import ExportContext, TargetArtifact
from .openvino_ir import OV_PRECISION, fp32_model, openvino_version, stage_ir, verify_ir

FILENAME = "model.int8.xml"

# Node-name patterns (OpenVINO names come from the ONNX node names) kept float per family: see module docstring.
SEGFORMER_KEEP_FLOAT = (r".*block1\.\d+/attn/sr/Conv.*",)


def family_ignored_names(onnx_model: Any, family: str, model_name: str | None) -> list[str]:
    """OpenVINO names of the weighted ops in the family's default float groups (sensitivity.FAMILY_FLOAT_GROUPS, the
    ONNX INT8 targets' islands): OpenVINO names a biased Conv's convolution "<onnx name>/WithoutBiases", so both."""
    from ..sensitivity import FAMILY_FLOAT_GROUPS, node_groups

    wanted = FAMILY_FLOAT_GROUPS.get(family, ())
    if not wanted:
        return []
    weighted = [n for n in onnx_model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    groups = node_groups(onnx_model, family, "block", weighted, model_name)
    names = sorted(n for g in wanted for n in groups.get(g, []))
    return [*names, *(f"{n}/WithoutBiases" for n in names)]


def nncf_settings(family: str) -> dict[str, Any]:
    """preset / model_type names and float-kept node patterns for a model family (see module docstring)."""
    if family == "segformer":
        return {"preset": "mixed", "model_type": "transformer", "ignored_patterns": list(SEGFORMER_KEEP_FLOAT)}
    return {"preset": "performance", "model_type": None, "ignored_patterns": []}


def count_fake_quantize(model: Any) -> int:
    """FakeQuantize ops in an ov.Model (what NNCF inserted)."""
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops())


def kept_float_nodes(model: Any, patterns: list[str], names: Sequence[str] = ()) -> list[str]:
    """Names of the weighted ops (Convolution/MatMul) the ignored scope (patterns, exact names) kept float."""
    import re

    rx = [re.compile(p) for p in patterns]
    exact = set(names)
    return sorted(op.get_friendly_name() for op in model.get_ops()
                  if op.get_type_name() in ("Convolution", "MatMul", "GroupConvolution")
                  and (op.get_friendly_name() in exact or any(r.fullmatch(op.get_friendly_name()) for r in rx)))


@contextlib.contextmanager
def nncf_output_to_stderr() -> Iterator[None]:
    """NNCF logs (INFO) through a handler bound to stdout and draws rich progress bars on stdout: send both to
    stderr at WARNING so `segedge export --json` keeps a clean stdout."""
    log = logging.getLogger("nncf")
    level = log.level
    swapped = [(h, h.setStream(sys.stderr)) for h in log.handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for h, old in swapped:
            if old is not None:
                h.setStream(old)
        log.setLevel(level)


def nncf_kwargs(settings: dict[str, Any], subset_size: int) -> dict[str, Any]:
    """The nncf.quantize keyword arguments for `nncf_settings(...)` (shared with benchmarks/openvino_int8_study.py)."""
    import nncf

    kwargs: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED if settings["preset"] == "mixed" else
        nncf.QuantizationPreset.PERFORMANCE,
        "subset_size": subset_size,
    }
    if settings["model_type"] == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    names = list(settings.get("ignored_names") or ())  # exact node names (e.g. a float group's convs)
    if settings["ignored_patterns"] or names:  # validate=False: a graph without such nodes is quantized as is
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=names, patterns=list(settings["ignored_patterns"]),
                                                    validate=False)
    return kwargs


def quantize_ov(ctx: ExportContext, model: Any, settings: dict[str, Any]) -> Any:
    """nncf.quantize on the calibration frames; any NNCF failure becomes a one-line ExportError."""
    import nncf

    inputs = [ctx.make_input(f) for f in ctx.frames.frames]
    kwargs = nncf_kwargs(settings, len(inputs))
    ctx.progress(f"quantizing openvino-int8 with NNCF ({settings['preset']} preset"
                 f"{', transformer' if settings['model_type'] else ''}) on {len(inputs)} frames")
    try:
        with nncf_output_to_stderr():
            return nncf.quantize(model, nncf.Dataset(inputs), **kwargs)
    except Exception as e:  # noqa: BLE001 - NNCF raises many types (RuntimeError, nncf.InternalError, …)
        raise ExportError(f"openvino-int8: NNCF post-training quantization failed ({first_line(e)}); no file was "
                          "written: try more --calib frames or report the model/options") from e


def budgeted(ctx: ExportContext) -> tuple[Any, dict[str, Any], str, dict[str, Any]]:
    """--max-miou-drop: (model, settings, hint, budget record): every NNCF preset, with and without the family's float
    islands, on every allowed hint, measured on the budget half of --val and timed here (segedge.tune); the fastest
    within budget wins."""
    from ...tune.candidates import thread_counts
    from ...tune.run import TuneSettings, tune

    wanted = str(ctx.option("ov_precision"))
    res = tune(ctx, TuneSettings(budget_pp=float(ctx.options.max_miou_drop), patterns="ov-int8-*",
                                 threads=str(max(thread_counts())), hints=None if wanted == "auto" else (wanted,)))
    rep, c = res.report, res.chosen
    row = next(r for r in rep["rows"] if r["name"] == c.name)
    default = next((r for r in rep["rows"] if r["recipe"] == _default_recipe(str(ctx.manifest.contract.family or ""))
                    and r["hint"] == c.hint), None)
    summary = res.built.summary
    islands = [*summary.get("float_groups", []), *(f"pattern {p}" for p in summary.get("ignored_patterns", []))] \
        if c.recipe.param("islands") else []
    record = {"max_miou_drop_pt": rep["budget_pp"], "met": True, "recipe": c.recipe.name, "why": rep["choice"]["why"],
              "search": "every NNCF preset (performance, mixed, mixed + transformer) with and without the family's "
                        "float islands, on each precision hint, measured on the budget set and timed here; the "
                        "fastest within budget",
              "float_islands": [{"group": g} for g in islands],
              "budget_set": {"frames": rep["frames"]["budget"], "chosen": {"drop_pt": row["drop_pt"]},
                             "default": {"drop_pt": default["drop_pt"]} if default else None},
              "held_back_set": {"frames": rep["frames"]["held_back"], "chosen": {"drop_pt": row["held_back_drop_pt"]},
                                "default": {"drop_pt": default["held_back_drop_pt"]} if default else None},
              "latency": {"chosen_ms": row["p50_ms"], "default_ms": default["p50_ms"] if default else None,
                          "threads": c.threads, "cpu": rep["cpu"]},
              "candidates": [{k: r[k] for k in ("name", "p50_ms", "drop_pt", "held_back_drop_pt")} for r in rep["rows"]],
              "dropped": rep.get("pruned") or []}
    settings = {k: res.built.summary.get(k) for k in ("preset", "model_type", "ignored_patterns", "ignored_names")}
    return res.built.model, settings, str(c.hint), record


def _default_recipe(family: str) -> str:
    """The tune recipe name of the family's default settings (nncf_settings + the family float groups)."""
    from ..sensitivity import FAMILY_FLOAT_GROUPS

    s = nncf_settings(family)
    return f"ov-int8-{s['preset']}" + (f"-{s['model_type']}" if s["model_type"] else "") + (
        "-islands" if s["ignored_patterns"] or FAMILY_FLOAT_GROUPS.get(family) else "")


def build(ctx: ExportContext) -> TargetArtifact:
    """Quantize the FP32 IR with NNCF, check it with OpenVINO against PyTorch, stage model.int8.xml/.bin."""
    import nncf

    family = str(ctx.manifest.contract.family or "")
    budget = None
    if ctx.options.max_miou_drop is not None:
        qmodel, settings, hint, budget = budgeted(ctx)
    else:
        contract = ctx.manifest.contract
        settings = {**nncf_settings(family),
                    "ignored_names": family_ignored_names(ctx.fp32_model, family, contract.model)}
        qmodel = quantize_ov(ctx, fp32_model(ctx), settings)
    frames = ctx.frames
    hint, verification, choice = verify_ir(ctx, qmodel, "openvino-int8", hint if budget else None)
    entry = {
        "precision": "int8", "runtime": "openvino", "inference_precision_hint": hint,
        **({"precision_choice": choice} if choice else {}),
        "openvino_version": openvino_version(), "nncf_version": str(nncf.__version__),
        "quantization": {"tool": "nncf.quantize (post-training)", **settings, "subset_size": len(frames),
                         "fake_quantize_nodes": count_fake_quantize(qmodel),
                         "kept_float_nodes": kept_float_nodes(qmodel, settings["ignored_patterns"],
                                                              settings.get("ignored_names") or ()),
                         **({"budget": budget} if budget else {}),
                         "keep_float": "NNCF defaults plus ignored_patterns (--keep-float applies to the ONNX INT8 targets only)"},
        "calibration": {"source": frames.source, "source_kind": frames.kind, "count": len(frames),
                        "method": "nncf-ptq", "seed": ctx.options.calib_seed, "source_sha256": frames.sha256,
                        "graph_sha256": ctx.graph_sha256,
                        "table": None, "table_note": "NNCF collects its own statistics on these frames; the "
                                                     "calibration table serves the ONNX INT8 targets"},
        "verification": verification,
    }
    return stage_ir(ctx, "openvino-int8", FILENAME, qmodel, entry)


register_target(TargetSpec("openvino-int8", build, "OpenVINO IR INT8, NNCF post-training quantization: "
                           "model.int8.xml + .bin", "int8", needs_calibration=True, toolkits=("openvino", "nncf"),
                           backend="openvino", options=(OV_PRECISION,)))
