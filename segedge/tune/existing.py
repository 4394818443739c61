"""`segedge tune EXPORT_DIR`: add the `cpu` target to an existing export folder, as `--target cpu` would have.

The folder's manifest says how it was exported (model, weights, input size, io, opset, dynamic axes, calibration
source, count, seed and method); the export is re-run with exactly those options and `--target cpu` into the same
folder, so the FP32 graph comes out identical and every other target is carried over untouched (the export's own
rule: same graph, files intact). Weights that moved are found again through their sha256 among the embedded demo
checkpoints, or given with `--weights`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..contract import Manifest
from ..errors import SegedgeError
from ..export.pipeline import ExportOptions, recorded_fold


def export_weights(manifest: Manifest, given: str | None = None) -> str | None:
    """The checkpoint to re-export from: --weights, the recorded path, or the embedded demo with the same sha256."""
    if given:
        return given
    w = manifest.contract.weights or {}
    if w.get("embedded"):
        return None
    path = w.get("path")
    if path and Path(path).is_file():
        return str(path)
    from ..models import default_weights
    from ..io import sha256_file

    demo = default_weights(manifest.contract.model)
    if demo is not None and w.get("sha256") and sha256_file(demo) == w.get("sha256"):
        return str(demo)
    raise SegedgeError(f"the folder was exported from {path or 'an unrecorded checkpoint'}, which is not here; pass "
                       "--weights PATH (the same checkpoint: the graph must come out identical)")


_weights = export_weights  # the old private name, kept for callers


def _calibration(manifest: Manifest) -> dict[str, Any]:
    """The calibration record of the folder's INT8 targets (the first one found), or {}."""
    for entry in manifest.targets.values():
        cal = entry.calibration
        if isinstance(cal, dict) and cal.get("source"):
            return cal
    return {}


def _rereadable(source: str) -> str:
    """A recorded calibration source that can be read again (a path or DATASET:ROOT[:SPLIT] that exists), or one
    line asking for --calib (an in-memory dataset or frames given through the Python API left only a description)."""
    from ..export.calibration import _dataset_spec

    spec = _dataset_spec(source)
    if Path(source).exists() or (spec is not None and Path(spec[1]).is_dir()):
        return source
    raise SegedgeError(f"the folder was calibrated on '{source[:80]}', which cannot be read again here; pass --calib "
                       "(an image folder, a video or DATASET:ROOT[:SPLIT], e.g. camvid:../data/camvid:train)")


def tune_options(folder: str | Path, val: Any, val_count: int | None = None, calib: str | None = None,
                 weights: str | None = None, max_miou_drop: float | None = None,
                 target_options: dict[str, Any] | None = None) -> tuple[ExportOptions, list[str]]:
    """ExportOptions that re-export `folder` as it was, plus the `cpu` target; and notes on what was assumed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegedgeError(f"export folder not found: {folder}; pass the folder `segedge export` wrote")
    manifest = Manifest.read(folder)
    c = manifest.contract
    if c.input.io != "float":
        raise SegedgeError(f"{folder} is a raw-io export (uint8 frames in, labels out); tune its float-io twin "
                           "(`segedge export --io float`), the CPU choice carries over")
    notes: list[str] = []
    cal = _calibration(manifest)
    if calib is None and cal:
        calib = _rereadable(str(cal["source"]))
        notes.append(f"calibrating on the folder's recorded source {calib}")
    elif calib is None:
        notes.append("the folder records no calibration source: INT8 candidates calibrate on segedge's synthetic "
                     "frames; pass --calib (e.g. camvid:ROOT:train) for real ones")
    dyn = c.input.dynamic
    opts = ExportOptions(
        model=c.model, weights=_weights(manifest, weights), targets=["cpu"], input_size=(c.input.height, c.input.width),
        calib=calib, calib_count=cal.get("count"), calib_method=str(cal.get("method") or "minmax")
        if cal.get("method") in ("minmax", "entropy", "percentile") else "minmax",
        calib_seed=int(cal.get("seed") or 0), opset=int(c.opset or 17), dynamic=bool(dyn.height or dyn.width),
        dynamic_batch=bool(dyn.batch and not (dyn.height or dyn.width)), fold=recorded_fold(c), val=val, val_count=val_count, out=folder,
        max_miou_drop=max_miou_drop, target_options=dict(target_options or {}))
    return opts, notes


__all__ = ["export_weights", "tune_options"]
