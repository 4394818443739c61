"""Library defaults as benchmark baselines (`segedge bench --baselines`): what a user gets from the same libraries
segedge wraps when they call them with their defaults on the FP32 `model.onnx` of the export.

- `ort-defaults`: `onnxruntime.quantization.quantize_static(model.onnx, out, reader)` with every other argument at
  its default (QDQ, MinMax, per-tensor, the library's default activation/weight types), run with ONNX Runtime's
  default session;
- `ov-defaults`: `openvino.Core().compile_model("model.onnx", "CPU")` with no config (OpenVINO picks its own
  inference precision, e.g. bf16 on CPUs that have it);
- `nncf-defaults`: `nncf.quantize(core.read_model("model.onnx"), nncf.Dataset(inputs))` with defaults, saved with
  `openvino.save_model` defaults and compiled with no config.

The INT8 baselines calibrate on the export's own calibration frames (those listed in its calibration table, checked
by their pixels' sha256), so they see exactly what segedge's INT8 targets saw; when the folder has no readable table
the bench's calibration source is used (the frames an INT8 export of this run calibrates on). Artifacts are built in a
scratch folder the runner owns (a temp dir, removed after the run). Only `--threads` is passed to every runtime, as
for every other row. A baseline whose library is missing is skipped with the reason, never an error.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import DataError, SegedgeError, first_line

BASELINE_NOTE = "library defaults"


@dataclass
class BaselineContext:
    """What every baseline builder receives: the export's FP32 ONNX, calibration inputs, a scratch folder."""

    model: str
    fp32_path: Path
    work_dir: Path
    inputs: list[np.ndarray]  # calibration frames pre-processed to model inputs (1×3×H×W)
    input_name: str
    frames: str  # where the calibration frames came from (for the provenance)
    threads: int | None = None


@dataclass
class BuiltBaseline:
    """A built baseline: its opened backend, the file it runs, its precision and how it was made."""

    backend: Any
    artifact: Path
    precision: str
    provenance: dict[str, Any]


@dataclass(frozen=True)
class BaselineSpec:
    """One baseline: the libraries it needs (segedge.toolkits names) and its builder."""

    name: str
    library: str  # the library whose defaults it measures
    toolkits: tuple[str, ...]
    build: Callable[[BaselineContext], BuiltBaseline]
    description: str
    calibrated: bool  # needs the calibration frames

    def unavailable(self) -> str | None:
        """Why it cannot be built here (a library missing), or None."""
        from ..toolkits import get_toolkit

        for name in self.toolkits:
            why = get_toolkit(name).unavailable()
            if why:
                return why
        return None


def _version(toolkit: str) -> str:
    from ..toolkits import get_toolkit

    return str(get_toolkit(toolkit).version() or "?")


def _defaults_of(fn: Callable[..., Any], names: Sequence[str]) -> dict[str, str]:
    """The library's own default values of `names` (read from its signature, or the first docstring line of a native
    function: what 'defaults' meant in this run)."""
    try:
        params = inspect.signature(fn).parameters
    except (ValueError, TypeError):  # pybind11 functions carry their signature as the docstring's first line
        params = {}
        head = (getattr(fn, "__doc__", None) or "").strip().splitlines()[:1]
        for part in head[0].partition("(")[2].rpartition(")")[0].split(",") if head else []:
            name, _, default = part.partition("=")
            if default:
                params[name.split(":")[0].strip()] = inspect.Parameter(
                    "x", inspect.Parameter.KEYWORD_ONLY, default=default.strip())
    return {n: str(params[n].default) for n in names if n in params}


def _provenance(library: str, toolkit: str, call: str, runtime: str, defaults: dict[str, str],
                ctx: BaselineContext, calibrated: bool) -> dict[str, Any]:
    return {"library": library, "version": _version(toolkit), "call": call, "runtime": runtime,
            "arguments": BASELINE_NOTE, "defaults": defaults, "threads": ctx.threads,
            "calibration_frames": ctx.frames if calibrated else None,
            "calibration_count": len(ctx.inputs) if calibrated else None}


# ------------------------------------------------------------------------------------------------ ONNX Runtime
@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization warns through the root logger: keep it at ERROR while it runs."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def build_ort_defaults(ctx: BaselineContext) -> BuiltBaseline:
    """quantize_static with its defaults on model.onnx; an ONNX Runtime session with its defaults."""
    from onnxruntime.quantization import quantize_static

    from ..export.calibration import FrameDataReader
    from ..runtime.backends.ort import OnnxRuntimeBackend

    out = ctx.work_dir / "model.int8.onnx"
    try:
        with _quiet_root_logger():  # its "consider pre-processing" warnings: skipping that is what a default user does
            quantize_static(str(ctx.fp32_path), str(out), FrameDataReader(ctx.inputs, ctx.input_name))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises many types
        raise SegedgeError(f"ort-defaults: quantize_static failed on {ctx.fp32_path.name} ({first_line(e)})") from e
    defaults = _defaults_of(quantize_static, ("quant_format", "activation_type", "weight_type", "per_channel",
                                              "reduce_range", "calibrate_method", "op_types_to_quantize",
                                              "extra_options"))
    call = (f"onnxruntime.quantization.quantize_static('{ctx.fp32_path.name}', 'model.int8.onnx', "
            f"CalibrationDataReader over {len(ctx.inputs)} frames)")
    runtime = "onnxruntime.InferenceSession(model, providers=default) with default SessionOptions" + (
        f" except intra_op_num_threads={ctx.threads}" if ctx.threads else "")
    backend = OnnxRuntimeBackend(str(out), threads=ctx.threads)
    return BuiltBaseline(backend, out, "int8", _provenance("onnxruntime", "onnxruntime", call, runtime, defaults,
                                                           ctx, True))


# ------------------------------------------------------------------------------------------------ OpenVINO
def _openvino_defaults_backend(model: Any, threads: int | None) -> Any:
    """segedge's OpenVINO backend compiled with OpenVINO's defaults (only --threads set)."""
    from ..runtime.backends.openvino import OpenVINOBackend

    return OpenVINOBackend(model, threads=threads, library_defaults=True)


def open_baseline_backend(runtime: str, file: str | Path, threads: int | None) -> Any:
    """A built baseline's file opened again as the bench opened it (the memory probe's fresh process does this):
    ONNX Runtime with only the threads set, or OpenVINO with its own defaults."""
    if runtime == "openvino":
        return _openvino_defaults_backend(str(file), threads)
    from ..runtime.backends.ort import OnnxRuntimeBackend

    return OnnxRuntimeBackend(str(file), threads=threads)


def _actual_precision(backend: Any) -> str:
    """The inference precision OpenVINO chose ('bf16', 'f32', …)."""
    from ..export.targets.openvino_ir import actual_precision

    return actual_precision(backend.compiled)


def _ov_runtime(ctx: BaselineContext, what: str) -> str:
    """The compile call as run: no config but the thread count every row gets."""
    config = f", {{'INFERENCE_NUM_THREADS': {ctx.threads}}}" if ctx.threads else ""
    return f"openvino.Core().compile_model('{what}', 'CPU'{config})"


def build_ov_defaults(ctx: BaselineContext) -> BuiltBaseline:
    """OpenVINO compiles model.onnx itself, with no config: its default precision on this CPU."""
    backend = _openvino_defaults_backend(str(ctx.fp32_path), ctx.threads)
    precision = _actual_precision(backend)
    prov = _provenance("openvino", "openvino", f"openvino.Core().compile_model('{ctx.fp32_path.name}', 'CPU')",
                       _ov_runtime(ctx, ctx.fp32_path.name), {"config": "{}", "inference_precision": precision},
                       ctx, False)
    return BuiltBaseline(backend, ctx.fp32_path, precision, prov)


def build_nncf_defaults(ctx: BaselineContext) -> BuiltBaseline:
    """nncf.quantize with its defaults on the ONNX read by OpenVINO, saved and compiled with OpenVINO defaults."""
    import nncf
    import openvino as ov

    from ..export.targets.openvino_int8 import nncf_output_to_stderr
    from ..toolkits.openvino import core

    out = ctx.work_dir / "model.nncf.xml"
    try:
        with nncf_output_to_stderr():
            qmodel = nncf.quantize(core().read_model(str(ctx.fp32_path)), nncf.Dataset(ctx.inputs))
        ov.save_model(qmodel, str(out))
    except Exception as e:  # noqa: BLE001 - NNCF raises many types
        raise SegedgeError(f"nncf-defaults: nncf.quantize failed on {ctx.fp32_path.name} ({first_line(e)})") from e
    backend = _openvino_defaults_backend(str(out), ctx.threads)
    defaults = _defaults_of(nncf.quantize, ("mode", "preset", "target_device", "subset_size",
                                            "fast_bias_correction", "model_type", "ignored_scope"))
    defaults.update({f"save_model.{k}": v for k, v in _defaults_of(ov.save_model, ("compress_to_fp16",)).items()})
    defaults["inference_precision"] = _actual_precision(backend)
    call = (f"nncf.quantize(openvino.Core().read_model('{ctx.fp32_path.name}'), nncf.Dataset(<{len(ctx.inputs)} "
            "frames>)); openvino.save_model(quantized, 'model.nncf.xml')")
    return BuiltBaseline(backend, out, "int8", _provenance("nncf", "nncf", call, _ov_runtime(ctx, "model.nncf.xml"),
                                                           defaults, ctx, True))


BASELINES: dict[str, BaselineSpec] = {s.name: s for s in (
    BaselineSpec("ort-defaults", "onnxruntime", ("onnxruntime",), build_ort_defaults,
                 "onnxruntime.quantization.quantize_static defaults, ONNX Runtime defaults", True),
    BaselineSpec("ov-defaults", "openvino", ("openvino",), build_ov_defaults,
                 "OpenVINO compile_model on model.onnx with no config", False),
    BaselineSpec("nncf-defaults", "nncf", ("openvino", "nncf"), build_nncf_defaults,
                 "nncf.quantize defaults, OpenVINO defaults", True),
)}


# ------------------------------------------------------------------------------------------------ frames
@dataclass
class CalibInputs:
    """Calibration frames for the baselines and where they came from."""

    frames: list[np.ndarray]
    description: str
    notes: list[str] = field(default_factory=list)


def _table_files(table: Any) -> list[Path] | None:
    """The image files a calibration table lists (folder / dataset sources only; video frames cannot be re-read)."""
    if table.source_kind == "folder":
        return [Path(table.source) / n for n in table.frames]
    if table.source_kind == "dataset":
        return [Path(n) for n in table.frames]
    return None


def export_calibration_frames(folder: Path, manifest: dict[str, Any]) -> tuple[list[np.ndarray] | None, str]:
    """The frames the export's INT8 targets calibrated on (read back from its calibration table and checked by
    sha256), or (None, why not)."""
    from ..export.calibration import CalibrationTable, frames_sha256
    from ..io import read_image_file
    from ..runtime.preprocess import check_frame

    names = [c["table"] for e in (manifest.get("targets") or {}).values()
             if isinstance(c := e.get("calibration"), dict) and c.get("table")]
    if not names:
        return None, f"{folder} has no calibration table (no ONNX INT8 target)"
    try:
        table = CalibrationTable.load(folder / names[0])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{folder / names[0]} is unreadable ({first_line(e)})"
    files = _table_files(table)
    if not files:
        return None, f"its calibration frames came from a {table.source_kind} and cannot be read back"
    frames = []
    for f in files:
        img = read_image_file(f)
        if img is None:
            return None, f"calibration frame {f} is not readable from here"
        frames.append(check_frame(img))
    if frames_sha256(frames) != table.source_sha256:
        return None, f"the files listed in {names[0]} changed since the export (sha256 differs)"
    return frames, f"the export's calibration frames ({len(frames)} from {table.source}, {names[0]})"


def calibration_inputs(folder: Path, manifest: dict[str, Any], fallback: Any, count: int | None) -> CalibInputs:
    """The export's own calibration frames, else the bench's calibration source (`fallback`, a CalibrationSource)."""
    from ..export.calibration import load_calibration_frames

    frames, why = export_calibration_frames(folder, manifest)
    if frames is not None:
        return CalibInputs(frames, why)
    if fallback is None or not fallback.distinct_from_eval:
        raise DataError(f"--baselines: cannot calibrate the INT8 baselines for {folder}: {why}, and "
                        f"{fallback.description if fallback else 'no calibration source was given'}; pass --calib "
                        "FOLDER with frames that are not in the evaluated split")
    cf = load_calibration_frames(fallback.source, count)
    return CalibInputs(cf.frames, f"{fallback.description} ({len(cf)} frames)", [f"baselines of {folder}: {why}; "
                                                                               f"calibrated on {fallback.description}"])


# ------------------------------------------------------------------------------------------------ building
def skipped_baselines() -> dict[str, str]:
    """Baselines whose library is missing here → the reason (they are skipped, not an error)."""
    return {n: why for n, s in BASELINES.items() if (why := s.unavailable())}


def build_baseline(name: str, ctx: BaselineContext) -> BuiltBaseline:
    """Build one baseline into its own subfolder of the scratch folder."""
    spec = BASELINES[name]
    sub = ctx.work_dir / name
    sub.mkdir(parents=True, exist_ok=True)
    built = spec.build(BaselineContext(ctx.model, ctx.fp32_path, sub, ctx.inputs, ctx.input_name, ctx.frames,
                                       ctx.threads))
    built.provenance = {"name": name, "description": spec.description, **built.provenance}
    return built


__all__ = ["BASELINES", "BASELINE_NOTE", "BaselineContext", "BaselineSpec", "BuiltBaseline", "CalibInputs",
           "build_baseline", "calibration_inputs", "export_calibration_frames", "skipped_baselines"]
