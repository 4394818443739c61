"""Which export folder serves each model × input size, whether it can be reused, and exporting what is missing.

A folder is reused when its manifest names the same model, input size, class count and weights (sha256) as the
benchmarked checkpoint. Folders given with --artifacts must match or the run stops with a one-line error. Without
one, exports/<model>-<H>x<W> (what `segedge export` writes) is used when it holds this checkpoint or is new; one that
holds another checkpoint is never overwritten (`default_folder` picks a weights-specific folder instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..contract import MANIFEST_NAME, read_manifest
from ..errors import DataError, SegedgeError
from .targets import portable_path, portable_spec


@dataclass
class ArtifactFolder:
    """An --artifacts folder and what its manifest says."""

    folder: Path
    model: str
    input_size: tuple[int, int]
    manifest: dict[str, Any]


def read_artifact_folders(paths: Sequence[str | Path], models: Sequence[str]) -> dict[tuple[str, tuple[int, int]],
                                                                                   ArtifactFolder]:
    """Read each --artifacts folder's manifest; (model, (H, W)) → folder. One-line errors for folders that are
    missing, not exports, of a model that is not benchmarked, or duplicated."""
    out: dict[tuple[str, tuple[int, int]], ArtifactFolder] = {}
    for p in paths:
        folder = Path(p)
        if not folder.is_dir():
            raise SegedgeError(f"--artifacts folder not found: {folder}; pass export folders made by `segedge export`")
        man = read_manifest(folder)
        name = str(man.get("model"))
        if name not in models:
            raise SegedgeError(f"--artifacts {folder} holds an export of model '{name}', not of "
                               f"{' or '.join(repr(m) for m in models)}; pass the export folder of the benchmarked "
                               "model (or add it to --model)")
        try:
            size = (int(man["input"]["height"]), int(man["input"]["width"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SegedgeError(f"{folder}/{MANIFEST_NAME} has no input height/width; re-run `segedge export`") from e
        key = (name, size)
        if key in out:
            raise SegedgeError(f"--artifacts {folder} and {out[key].folder} both hold {name} at {size[0]}x{size[1]}; "
                               "pass one folder per model and input size")
        out[key] = ArtifactFolder(folder, name, size, man)
    return out


def manifest_mismatch(man: dict[str, Any], cfg: dict[str, Any], size: tuple[int, int]) -> str | None:
    """Why an export folder does not hold the benchmarked checkpoint at `size`, or None when it does."""
    if man.get("model") != cfg["model"]:
        return f"it holds model '{man.get('model')}', not '{cfg['model']}'"
    inp = man.get("input") or {}
    got = (inp.get("height"), inp.get("width"))
    if tuple(got) != tuple(size):
        return f"it was exported at {got[0]}x{got[1]}, not {size[0]}x{size[1]}"
    if int(man.get("num_classes", -1)) != int(cfg["num_classes"]):
        return f"it has {man.get('num_classes')} classes, the checkpoint {cfg['num_classes']}"
    sha = (man.get("weights") or {}).get("sha256")
    if cfg.get("weights_sha256") and sha != cfg["weights_sha256"]:
        return (f"it was exported from other weights ({str(sha)[:12]}…) than {Path(str(cfg['weights'])).name} "
                f"({cfg['weights_sha256'][:12]}…)")
    return None


def present_targets(folder: Path, man: dict[str, Any]) -> set[str]:
    """Targets listed in the manifest whose file exists."""
    have = set()
    for name, entry in (man.get("targets") or {}).items():
        f = entry.get("file")
        if f and (folder / str(f)).exists():
            have.add(name)
    return have


@dataclass
class CalibrationSource:
    """Frames for INT8 calibration and export checks, and a description for the results."""

    source: Any
    description: str
    distinct_from_eval: bool
    notes: list[str] = field(default_factory=list)


def calibration_source(calib: Any, dataset: str, data: Path, eval_ds: Any, num_classes: int | None) -> \
        CalibrationSource:
    """--calib when given, else the dataset's train split; the eval split only for FP32 check frames."""
    if calib is not None:
        return CalibrationSource(calib, f"--calib {portable_spec(str(calib))}", True)
    from ..data.datasets import open_dataset

    try:
        train = open_dataset(dataset, data, "train", num_classes=num_classes)
    except DataError as e:
        return CalibrationSource(eval_ds, f"{dataset} {eval_ds.split} split (no train split: {e})", False)
    eval_images = {Path(s.image_path).resolve() for s in eval_ds.samples}
    overlap = any(Path(s.image_path).resolve() in eval_images for s in train.samples)
    if overlap:
        return CalibrationSource(eval_ds, f"{dataset} {eval_ds.split} split (the train split shares its images)",
                                 False)
    return CalibrationSource(train, f"{dataset}:{portable_path(data)}:train", True)


def default_folder(cfg: dict[str, Any], size: tuple[int, int]) -> tuple[Path, str | None]:
    """The export folder for this checkpoint at `size` when no --artifacts folder is given, and a note.

    exports/<model>-<H>x<W> (what `segedge export` writes) when it holds this checkpoint or does not exist yet;
    when it holds another checkpoint it is left alone and exports/<model>-<H>x<W>-<weights sha256[:8]> is used.
    """
    from ..export.pipeline import default_out_dir

    base = default_out_dir(cfg["model"], size)
    alt = base.with_name(f"{base.name}-{str(cfg.get('weights_sha256') or 'nosha')[:8]}")
    for folder in (base, alt):
        if (folder / MANIFEST_NAME).is_file():
            try:
                if manifest_mismatch(read_manifest(folder), cfg, size) is None:
                    return folder, None
            except SegedgeError:
                continue
    if not (base / MANIFEST_NAME).is_file():
        return base, None
    return alt, f"{base} holds another export, left untouched: {cfg['model']} {size[0]}x{size[1]} uses {alt}"


def plan_export(folder: Path, explicit: bool, cfg: dict[str, Any], size: tuple[int, int],
                wanted: Sequence[str]) -> tuple[list[str], list[str]]:
    """(targets `folder` lacks for this checkpoint at `size`, notes); an explicit (--artifacts) folder that holds
    another checkpoint is a one-line error, a stale default folder (other checkpoint, or written by another segedge
    version) is re-exported whole."""
    from .. import __version__
    notes: list[str] = []
    have: set[str] = set()
    if (folder / MANIFEST_NAME).is_file():
        man = read_manifest(folder)
        why = manifest_mismatch(man, cfg, size)
        if why and explicit:
            raise SegedgeError(f"--artifacts {folder} does not fit: {why}; re-export it or drop it from --artifacts")
        if not why and not explicit and man.get("segedge_version") != __version__:
            # another segedge may quantize differently: a default folder is ours to refresh, --artifacts is not
            why = f"written by segedge {man.get('segedge_version')}, this is {__version__}"
        if why:
            notes.append(f"{folder} was stale ({why}): re-exported")
        else:
            have = present_targets(folder, man)
    return [t for t in wanted if t not in have], notes


def check_calibration(missing: Sequence[str], calib: CalibrationSource, model: str) -> None:
    """One-line error when an INT8 target must be calibrated but only evaluation frames are available."""
    from ..export.targets import get_target

    if any(get_target(t).needs_calibration for t in missing) and not calib.distinct_from_eval:
        raise DataError(f"cannot calibrate INT8 for {model}: {calib.description}; pass --calib FOLDER with frames "
                        "that are not in the evaluated split")


def run_export(folder: Path, cfg: dict[str, Any], size: tuple[int, int], missing: Sequence[str],
               calib: CalibrationSource, calib_count: int | None, progress: Callable[[str], None]) -> list[str]:
    """Export `missing` targets of this checkpoint at `size` into `folder` (the pipeline keeps valid ones); notes."""
    from ..contract import Manifest
    from ..export.pipeline import ExportOptions, export_model, recorded_fold

    check_calibration(missing, calib, cfg["model"])
    if "cpu" in missing:  # tuning chooses on labelled frames; the bench then evaluates on its own split
        raise SegedgeError(f"{folder} has no cpu target yet: tune it first (`segedge tune {folder} --val DIR`, or "
                           "`segedge export --target cpu --val DIR`), then bench it with --artifacts")
    fold = recorded_fold(None)
    if (folder / MANIFEST_NAME).is_file():  # add targets to the graph the folder has (another form re-traces it all)
        try:
            fold = recorded_fold(Manifest.read(folder).contract)
        except SegedgeError:
            pass
    res = export_model(ExportOptions(model=cfg["model"], weights=cfg["weights"], targets=list(missing),
                                     input_size=size, calib=calib.source, calib_count=calib_count, fold=fold,
                                     out=folder),
                       progress=progress)
    return list(res.notes)


__all__ = ["ArtifactFolder", "CalibrationSource", "calibration_source", "check_calibration", "default_folder",
           "manifest_mismatch", "plan_export", "present_targets", "read_artifact_folders", "run_export"]
