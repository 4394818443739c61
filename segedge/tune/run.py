"""Tuning inside an export: build every CPU candidate, measure its drop and its latency here, choose, report.

Steps (one function each): the labelled sets (`--val`, alternate frames: budget set to choose, held-back set to
report) and their FP32 reference → the recipes buildable here (filtered by `--cpu-candidates`) → build them →
accuracy per (recipe, hint) → one rotating-block timing run over every candidate → choose (select.py) → the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import ExportError, SegedgeError
from ..export.sensitivity import LabelledSet, labelled_set, miou_of, split_budget
from . import candidates as cands_
from .measure import (DEFAULT_BLOCK, DEFAULT_ITERS, FrameTiming, accuracy, hopeless, logits_of, probe, probe_call,
                      time_candidates)
from .report import REPORT_FORMAT
from .select import DEFAULT_BUDGET_PP, choose, pareto_front


@dataclass
class TuneSettings:
    """What `--target cpu` was asked for."""

    budget_pp: float = DEFAULT_BUDGET_PP
    patterns: str | None = None  # --cpu-candidates globs
    threads: str | None = None  # --cpu-threads
    iters: int = DEFAULT_ITERS
    block: int = DEFAULT_BLOCK
    hints: tuple[str, ...] | None = None  # OpenVINO hints to try (None: every one the CPU supports)


@dataclass
class TuneResult:
    """The report, the chosen candidate and its built artifact."""

    report: dict[str, Any]
    chosen: cands_.Candidate
    built: cands_.Built


def _sets(ctx: Any) -> tuple[dict[str, LabelledSet], dict[str, Any]]:
    """Budget and held-back sets from --val (alternate frames), preprocessed as the runtime does."""
    pairs = ctx.cache.get("val_pairs")
    if not pairs:
        raise SegedgeError("--target cpu measures every candidate's mIoU drop: add --val DIR (a labelled dataset "
                           "folder such as CamVid)")
    if str(ctx.manifest.contract.input.io) != "float":
        raise ExportError("--target cpu tunes float-io exports (logits out); export with --io float, then run the "
                          "raw-io variant of the chosen target if the app needs labels out")
    budget, held, record = split_budget(labelled_set(pairs, ctx.make_input, "val"))
    return {"budget": budget, "held_back": held}, record


def _reference(ctx: Any, sets: dict[str, LabelledSet], threads: int, num_classes: int
               ) -> tuple[dict[str, list[np.ndarray]], dict[str, float]]:
    """FP32 ONNX logits (ONNX Runtime) and mIoU on every set: what every drop is measured against."""
    from ..runtime.backends.ort import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(ctx.fp32_model, threads=threads)
    try:
        refs = {name: logits_of(be, s) for name, s in sets.items()}
    finally:
        be.close()
    return refs, {name: miou_of(refs[name], s, num_classes) for name, s in sets.items()}


def _recipes(ctx: Any, settings: TuneSettings, notes: list[str]) -> list[cands_.Recipe]:
    """The recipes buildable here, filtered by --cpu-candidates; missing toolkits become notes."""
    from ..toolkits import get_toolkit

    ov_why, nncf_why = get_toolkit("openvino").unavailable(), get_toolkit("nncf").unavailable()
    for name, why in (("openvino", ov_why), ("nncf", nncf_why)):
        if why:
            notes.append(f"cpu: no {name} candidates ({why})")
    hints = tuple(h for h in cands_.openvino_hints() if settings.hints is None or h in settings.hints) \
        if not ov_why else ()
    every = cands_.recipes(str(ctx.manifest.contract.family or ""), cands_.family_islands(ctx), not ov_why,
                           not (ov_why or nncf_why), hints)
    return cands_.select_recipes(every, settings.patterns)


def _rows(cands: Sequence[cands_.Candidate], built: dict[str, cands_.Built], acc: dict[str, dict[str, Any]],
          lat: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One row per candidate: what it is, its latency and its drops (fastest first)."""
    rows = []
    for c in cands:
        a, inf = acc[c.variant], lat[c.name]
        t = inf.get("end_to_end") or inf  # chosen on frame → labels where it was timed, else inference alone
        rows.append({"name": c.name, "variant": c.variant, "recipe": c.recipe.name, "runtime": c.recipe.runtime,
                     "precision": c.recipe.precision, "hint": c.hint, "threads": c.threads,
                     "p50_ms": round(t["p50_ms"], 4), "p90_ms": round(t["p90_ms"], 4), "mean_ms": round(t["mean_ms"], 4),
                     "inference_p50_ms": round(inf["p50_ms"], 4),
                     "drop_pt": a["budget"]["drop_pt"], "held_back_drop_pt": a["held_back"]["drop_pt"],
                     "argmax_agreement": a["budget"]["argmax_agreement"], "sqnr_db": a["budget"]["sqnr_db"],
                     "build_s": round(built[c.recipe.name].build_s, 2), "keeps_islands": not c.recipe.drops_islands})
    fp32 = {r["threads"]: r["p50_ms"] for r in rows if r["recipe"] == "ort-fp32"}
    for r in rows:
        r["vs_ort_fp32"] = round(r["p50_ms"] / fp32[r["threads"]], 4) if r["threads"] in fp32 else None
    return sorted(rows, key=lambda r: (r["p50_ms"], r["name"]))


REFERENCE_PROBE = "fp32-onnx/onnxruntime"


def _frame_timing(ctx: Any) -> FrameTiming:
    """The budget set's frames as the app gets them (BGR, their own size), for frame → labels timing."""
    pairs = ctx.cache["val_pairs"]
    return FrameTiming([np.asarray(pairs[i][0]) for i in range(0, len(pairs), 2)], ctx.manifest.contract)


def _reference_probe(ctx: Any, threads: int, x: np.ndarray) -> float:
    """Probe of the export's FP32 ONNX on ONNX Runtime: the exact reference when no candidate is FP32."""
    from ..runtime.backends.ort import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(ctx.fp32_model, threads=threads)
    try:
        return probe_call(lambda: be.run(x))
    finally:
        be.close()


def _prune(ctx: Any, cands: list[cands_.Candidate], built: dict[str, cands_.Built], x: np.ndarray
           ) -> tuple[list[cands_.Candidate], list[dict[str, Any]]]:
    """Probe every (recipe, hint) at the most threads and drop those that cannot win (measure.hopeless) before their
    accuracy is measured, at every thread count; (kept candidates, the pruned variants with their probe and why)."""
    most = max(c.threads for c in cands)
    probes = {c.variant: probe(built[c.recipe.name], c.hint, most, x) for c in cands if c.threads == most}
    exact = [c.variant for c in cands if c.recipe.precision == "fp32" and c.hint in (None, "f32")]
    if not exact:  # e.g. openvino-int8's budget search (NNCF candidates only): the FP32 ONNX on ONNX Runtime
        probes[REFERENCE_PROBE] = _reference_probe(ctx, most, x)
        exact = [REFERENCE_PROBE]
    keep = [c.variant for c in cands if c.recipe.name == "ort-fp32"]  # the report's reference column
    out = {v: why for v, why in hopeless(probes, exact, keep).items() if v != REFERENCE_PROBE}
    if len(out) == len({c.variant for c in cands}):  # never leave nothing to choose from
        out = {}
    for v, why in out.items():
        ctx.progress(f"cpu: dropping {v}: {why}")
    kept = [c for c in cands if c.variant not in out]
    return kept, [{"variant": v, "probe_ms": round(probes[v], 3), "why": why} for v, why in out.items()]


def tune(ctx: Any, settings: TuneSettings) -> TuneResult:
    """Build, measure and choose (see module docstring); the report dict is what cpu-tune.json holds."""
    from ..doctor import cpu_report

    t0 = time.perf_counter()
    notes: list[str] = []
    sets, split = _sets(ctx)
    threads = cands_.thread_counts(settings.threads)
    num_classes = int(ctx.manifest.contract.num_classes)
    chosen_recipes = _recipes(ctx, settings, notes)
    refs, ref_miou = _reference(ctx, sets, max(threads), num_classes)
    built = {}
    for r in chosen_recipes:
        built[r.name] = cands_.build(ctx, r)
    cands, pruned = _prune(ctx, cands_.candidates(chosen_recipes, threads), built, sets["budget"].inputs[0])
    acc = {}
    for c in cands:
        if c.variant not in acc:
            ctx.progress(f"cpu: measuring {c.variant} on {sum(len(s) for s in sets.values())} labelled frames")
            acc[c.variant] = accuracy(built[c.recipe.name], c.hint, sets, refs, ref_miou, num_classes, max(threads))
    ctx.progress(f"cpu: timing {len(cands)} candidates, {settings.iters} calls each in blocks of {settings.block}")
    lat = time_candidates(cands, built, sets["budget"].inputs, settings.iters, settings.block,
                          frames=_frame_timing(ctx))
    rows = _rows(cands, built, acc, lat)
    choice = choose(rows, settings.budget_pp)
    front = set(pareto_front(rows))
    for r in rows:
        r["pareto"], r["within_budget"] = r["name"] in front, r["drop_pt"] <= settings.budget_pp + 1e-9
    contract = ctx.manifest.contract
    report = {
        "format": REPORT_FORMAT, "model": contract.model, "input_size": f"{contract.input.height}x{contract.input.width}",
        "cpu": cpu_report(), "budget_pp": settings.budget_pp,
        "frames": {"budget": len(sets["budget"]), "held_back": len(sets["held_back"]), **split},
        "fp32_miou": ref_miou, "threads": threads,
        "timing": {"iters": settings.iters, "block": settings.block, "warmup_rounds": 1,
                   "what": "p50_ms: frame → labels at its size on the budget frames, each candidate as the runtime "
                           "deploys it (OpenVINO normalising the frame in the graph; fast post-processing); "
                           "inference_p50_ms: the backend alone on a preprocessed frame; one rotating-block run"},
        "rows": rows, "pareto": [r["name"] for r in rows if r["pareto"]],
        "choice": {"name": choice.chosen["name"], "why": choice.why}, "notes": notes, "pruned": pruned,
        "tuning_seconds": round(time.perf_counter() - t0, 1),
    }
    chosen = next(c for c in cands if c.name == choice.chosen["name"])
    return TuneResult(report, chosen, built[chosen.recipe.name])


__all__ = ["TuneResult", "TuneSettings", "tune"]
