"""The candidate CPU deployments `--target cpu` builds: runtime × precision / INT8 scheme × precision hint × threads.

A *recipe* is one artifact (an ONNX model for ONNX Runtime, an ov.Model for OpenVINO); a *candidate* is a recipe run
with one OpenVINO inference-precision hint and one thread count. Recipes, all from the export's verified FP32 ONNX and
its calibration frames:

- `ort-fp32`; `ort-int8-conv` / `ort-int8-all`: onnxruntime QDQ u8s8 with the conv or the full scope
  (segedge.export.quantize), each also `-islands` when the family has default float groups
  (sensitivity.FAMILY_FLOAT_GROUPS, the budget search's output);
- `ov-fp32`: the FP32 IR; `ov-int8-performance`, `ov-int8-mixed`, `ov-int8-mixed-transformer`: NNCF presets
  (performance = symmetric activations; mixed = asymmetric; transformer = NNCF's ModelType.TRANSFORMER handling), each
  also `-islands`: the family's NNCF islands (SegFormer's stage-1 spatial-reduction convs) plus its default float
  groups kept float.

OpenVINO hints: f32 always, bf16 / f16 where the CPU plugin reports the capability (bf16 is OpenVINO's own default on
CPUs with AVX-512 BF16 or AMX, and changes numerics, so it is measured, not assumed). Threads: 1 and every core
available (at most the two a camera loop usually spares), unless `--cpu-threads` says otherwise.
"""

from __future__ import annotations

import fnmatch
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import SegedgeError

ORT_SCOPES = ("conv", "all")
NNCF_SCHEMES = (("performance", None), ("mixed", None), ("mixed", "transformer"))


@dataclass(frozen=True)
class Recipe:
    """How one candidate artifact is built."""

    name: str
    runtime: str  # onnxruntime | openvino
    precision: str  # fp32 | int8
    scheme: tuple[tuple[str, Any], ...] = ()  # build parameters, e.g. (("scope", "conv"), ("islands", True))
    hints: tuple[str | None, ...] = (None,)  # OpenVINO precision hints worth timing (None: not OpenVINO)
    drops_islands: bool = False  # INT8 without the float islands the family keeps by default for this runtime

    def param(self, key: str, default: Any = None) -> Any:
        """One build parameter."""
        return dict(self.scheme).get(key, default)


@dataclass(frozen=True)
class Candidate:
    """A recipe run with one precision hint and one thread count."""

    recipe: Recipe
    hint: str | None
    threads: int

    @property
    def variant(self) -> str:
        """Recipe and hint: what the accuracy depends on (threads do not change the numerics)."""
        return self.recipe.name + (f"/{self.hint}" if self.hint else "")

    @property
    def name(self) -> str:
        """e.g. 'ov-int8-mixed-transformer/bf16/2t'."""
        return f"{self.variant}/{self.threads}t"


@dataclass
class Built:
    """A built recipe: the in-memory model, what the manifest says about its quantization, and its build time."""

    recipe: Recipe
    model: Any
    summary: dict[str, Any] = field(default_factory=dict)
    build_s: float = 0.0


def openvino_hints() -> tuple[str, ...]:
    """f32 plus bf16 / f16 where OpenVINO's CPU plugin reports the capability."""
    from ..toolkits.openvino import core

    try:
        caps = set(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - an old plugin without the property: f32 only
        caps = set()
    return ("f32", *(["bf16"] if "BF16" in caps else []), *(["f16"] if "FP16" in caps else []))


def thread_counts(spec: str | None = None) -> list[int]:
    """--cpu-threads: 'auto' → 1 and min(2, cores); or a comma list of whole numbers ≤ the cores available."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    if spec in (None, "", "auto"):
        return sorted({1, min(2, cores)})
    try:
        counts = sorted({int(v) for v in str(spec).split(",") if v.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1 or counts[-1] > cores:
        raise SegedgeError(f"--cpu-threads must be 'auto' or a comma list of thread counts from 1 to {cores} (the "
                           f"cores available here), got '{spec}'")
    return counts


def recipes(family: str, islands: tuple[bool, bool], openvino: bool, nncf: bool, hints: Sequence[str]) -> list[Recipe]:
    """Every recipe that can be built here for a model family (see the module docstring); `islands`: whether the
    family has default float islands for (ONNX Runtime, NNCF), so that `-islands` variants differ from plain ones."""
    ort_islands, nncf_islands_ = islands
    out = [Recipe("ort-fp32", "onnxruntime", "fp32")]
    for scope in ORT_SCOPES:
        out.append(Recipe(f"ort-int8-{scope}", "onnxruntime", "int8", (("scope", scope), ("islands", False)),
                          drops_islands=ort_islands))
        if ort_islands:
            out.append(Recipe(f"ort-int8-{scope}-islands", "onnxruntime", "int8", (("scope", scope),
                                                                                    ("islands", True))))
    if openvino:
        out.append(Recipe("ov-fp32", "openvino", "fp32", hints=tuple(hints)))
    if openvino and nncf:
        for preset, model_type in NNCF_SCHEMES:
            base = f"ov-int8-{preset}" + (f"-{model_type}" if model_type else "")
            for with_islands in ((False, True) if nncf_islands_ else (False,)):
                out.append(Recipe(base + ("-islands" if with_islands else ""), "openvino", "int8",
                                  (("preset", preset), ("model_type", model_type), ("islands", with_islands)),
                                  hints=tuple(hints), drops_islands=nncf_islands_ and not with_islands))
    return out


def select_recipes(all_recipes: Sequence[Recipe], patterns: str | None) -> list[Recipe]:
    """--cpu-candidates: comma-separated globs on recipe names ('all' or empty: every recipe)."""
    if patterns in (None, "", "all"):
        return list(all_recipes)
    globs = [p.strip() for p in str(patterns).split(",") if p.strip()]
    chosen = [r for r in all_recipes if any(fnmatch.fnmatchcase(r.name, g) for g in globs)]
    if not chosen:
        raise SegedgeError(f"--cpu-candidates '{patterns}' matches none of the candidates buildable here: "
                           f"{', '.join(r.name for r in all_recipes)}")
    return chosen


def candidates(chosen: Sequence[Recipe], threads: Sequence[int]) -> list[Candidate]:
    """Every (recipe, hint, threads) combination."""
    return [Candidate(r, h, t) for r in chosen for h in r.hints for t in threads]


# -- building -------------------------------------------------------------------------------------------------------

def _ort_islands(ctx: Any, flavour: Any) -> tuple[list[Any], list[Any]]:
    """(kept float without islands, with the family's float groups added) for an ONNX Runtime INT8 flavour."""
    import onnx

    from ..export.quantize import select_kept_float
    from ..export.sensitivity import family_float_islands

    model = onnx.load(str(ctx.pre_quant_model()))
    keep = ctx.options.keep_float
    base = select_kept_float(model, keep, False, flavour)
    contract = ctx.manifest.contract
    extra = family_float_islands(model, str(contract.family or ""), flavour, base, contract.model)
    return base, select_kept_float(model, keep, False, flavour, extra=extra)


def family_islands(ctx: Any) -> tuple[bool, bool]:
    """Whether the model family keeps default float islands in (ONNX Runtime, NNCF) INT8: then `-islands` recipes
    differ from the plain ones, and the plain ones drop them."""
    from ..export.sensitivity import FAMILY_FLOAT_GROUPS
    from ..export.targets.openvino_int8 import nncf_settings

    family = str(ctx.manifest.contract.family or "")
    groups = bool(FAMILY_FLOAT_GROUPS.get(family))
    return groups, groups or bool(nncf_settings(family)["ignored_patterns"])


def build_ort(ctx: Any, recipe: Recipe) -> Built:
    """An onnxruntime candidate: the FP32 ONNX itself, or quantize_static with the recipe's scope and islands."""
    from ..export.quantize import ort_cpu_flavour, quantize, summarize

    if recipe.precision == "fp32":
        return Built(recipe, ctx.fp32_model, {"precision": "fp32"})
    t0 = time.perf_counter()
    from ..export.qat_ranges import calibration_for

    table, _ = calibration_for(ctx, "ort-int8")  # a `train --qat --qat-target ort-int8` checkpoint's learned ranges
    flavour = ort_cpu_flavour(str(ctx.manifest.contract.family or ""), recipe.param("scope"))
    base, with_islands = _ort_islands(ctx, flavour)
    kept = with_islands if recipe.param("islands") else base
    ctx.progress(f"cpu: building {recipe.name}")
    qmodel = quantize(ctx.pre_quant_model(), table, flavour, kept, work_dir=ctx.work_dir)
    summary = summarize(qmodel, kept, flavour)
    summary.pop("quantized", None)  # the node list belongs to the chosen artifact's entry only
    return Built(recipe, qmodel, summary, time.perf_counter() - t0)


def nncf_islands(ctx: Any) -> dict[str, Any]:
    """NNCF ignored scope for `-islands`: the family's node patterns plus the weighted nodes of its float groups."""
    from ..export.sensitivity import FAMILY_FLOAT_GROUPS
    from ..export.targets.openvino_int8 import family_ignored_names, nncf_settings

    contract = ctx.manifest.contract
    family = str(contract.family or "")
    return {"ignored_patterns": list(nncf_settings(family)["ignored_patterns"]),
            "ignored_names": family_ignored_names(ctx.fp32_model, family, contract.model),
            "float_groups": list(FAMILY_FLOAT_GROUPS.get(family, ()))}


def build_openvino(ctx: Any, recipe: Recipe) -> Built:
    """An OpenVINO candidate: the FP32 IR, or nncf.quantize with the recipe's preset, model type and islands."""
    from ..export.targets.openvino_int8 import count_fake_quantize, quantize_ov
    from ..export.targets.openvino_ir import fp32_model

    model = fp32_model(ctx)
    if recipe.precision == "fp32":
        return Built(recipe, model, {"precision": "fp32", "compress_to_fp16": False})
    t0 = time.perf_counter()
    islands = nncf_islands(ctx) if recipe.param("islands") else {"ignored_patterns": [], "ignored_names": []}
    settings = {"preset": recipe.param("preset"), "model_type": recipe.param("model_type"), **islands}
    qmodel = quantize_ov(ctx, model, settings)
    summary = {"tool": "nncf.quantize (post-training)", **settings, "subset_size": len(ctx.frames),
               "fake_quantize_nodes": count_fake_quantize(qmodel)}
    return Built(recipe, qmodel, summary, time.perf_counter() - t0)


def build(ctx: Any, recipe: Recipe) -> Built:
    """Build one recipe from the export context."""
    return build_ort(ctx, recipe) if recipe.runtime == "onnxruntime" else build_openvino(ctx, recipe)


def open_backend(built: Built, hint: str | None, threads: int, frame_input: dict[str, Any] | None = None) -> Any:
    """A segedge runtime backend over a built recipe, with the candidate's hint and thread count (and, for OpenVINO,
    `frame_input`: frames normalised in the graph, as `Segmenter.load` deploys it)."""
    if built.recipe.runtime == "onnxruntime":
        from ..runtime.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(built.model, threads=threads)
    from ..runtime.backends.openvino import OpenVINOBackend

    return OpenVINOBackend(built.model, threads=threads, precision=hint, frame_input=frame_input)


__all__ = ["Built", "Candidate", "NNCF_SCHEMES", "ORT_SCOPES", "Recipe", "build", "candidates",
           "family_islands", "nncf_islands", "open_backend", "openvino_hints", "recipes", "select_recipes",
           "thread_counts"]
