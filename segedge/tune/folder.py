"""`segedge tune EXPORT_DIR`: add the `cpu` target to an existing export folder from its own FP32 ONNX, no PyTorch.

The folder's model.onnx (its `onnx` target, checked against the manifest's sha256) is the graph every target of the
folder was built from, so the candidates are built from it as `--target cpu` builds them during an export: the same
calibration table (reused when it matches the graph, frames and method), the frames of the folder's recorded
calibration source (or `--calib`) for NNCF, the same measurement and choice. Only the reference differs: the chosen
model is checked against the FP32 ONNX (ONNX Runtime) instead of PyTorch; that FP32 ONNX was itself checked against
PyTorch at export (its entry keeps the figures). The folder's next state is committed the way an export commits
(segedge.export.assemble): every other target stays as it is, byte for byte. This is what runs on the device that
will serve the model (`pip install 'segedge[ort,openvino]'` and nncf, no torch): the CPU that is measured is the one
that matters.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..contract import Manifest, ModelContract
from ..errors import SegedgeError
from ..export.assemble import RunBackend, build_targets, commit, make_input, pre_quant, val_pairs
from ..export.calibration import check_method, get_calibration_table, load_calibration_frames
from ..export.folder import FolderTransaction
from ..export.options import VERIFY_FRAMES, ExportOptions, ExportResult
from ..export.targets import ExportContext, TargetSpec, get_target, resolve_option_values
from ..io import sha256_path

REFERENCE = "fp32-onnx"  # what the tuned model is checked against here (an export checks against PyTorch)


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


def _cpu_target() -> TargetSpec:
    """The `cpu` target, once the runtimes it builds with are here (PyTorch is not needed: nothing is traced)."""
    from ..toolkits import get_toolkit

    spec = get_target("cpu")
    for name in spec.toolkits:
        why = get_toolkit(name).unavailable()
        if why:
            raise SegedgeError(f"segedge tune cannot build the cpu target here: {why}")
    return spec


def _fp32_graph(folder: Path, manifest: Manifest) -> Any:
    """The folder's FP32 ONNX without its metadata, after checking it is the file the manifest describes."""
    import onnx

    entry = manifest.targets.get("onnx")
    path = folder / (entry.file if entry is not None else "model.onnx")
    if entry is None or not path.is_file():
        raise SegedgeError(f"{folder} has no FP32 ONNX (target onnx, model.onnx) to tune from; re-export it with "
                           "`segedge export --target onnx,…`")
    if entry.sha256 and sha256_path(path) != entry.sha256:
        raise SegedgeError(f"{path.name} changed since it was exported (sha256 differs from manifest.json); re-export "
                           "the folder")
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return model


class _OnnxChecks:
    """The export's checks with the FP32 ONNX as the reference: Δlogits / argmax agreement on the check frames and,
    with --val, mIoU next to the FP32 ONNX's."""

    def __init__(self, fp32: Any, batches: list[np.ndarray], pairs: list[Any] | None, contract: ModelContract,
                 say: Callable[[str], None]) -> None:
        from ..export import verify as verify_

        self.verify_, self.batches, self.pairs, self.contract, self.say = verify_, batches, pairs, contract, say
        session = verify_.ort_session(fp32)
        self.reference = [session.run(None, {contract.input.name: x})[0] for x in batches]
        self.fp32 = fp32
        self._fp32_miou: float | None = None

    def _miou(self, backend: Any) -> dict[str, Any]:
        from ..runtime.modelinfo import ModelInfo
        from ..runtime.segmenter import Segmenter

        c = self.contract
        return self.verify_.evaluate_miou(Segmenter(backend, ModelInfo(c), postprocess="exact").predict, self.pairs,
                                          c.num_classes, c.class_names)

    def _val(self, backend: Any) -> dict[str, Any]:
        from ..runtime.backends.ort import OnnxRuntimeBackend

        res = self._miou(backend)
        if self._fp32_miou is None:
            self._fp32_miou = self._miou(OnnxRuntimeBackend(self.fp32))["miou"]
        res["fp32_onnx_miou"] = self._fp32_miou
        return res

    def verify_model(self, onnx_m: Any, what: str) -> dict[str, Any]:
        """An ONNX ModelProto against the FP32 ONNX (+ mIoU with --val)."""
        from ..runtime.backends.ort import OnnxRuntimeBackend

        self.say(f"checking {what} against the FP32 ONNX")
        res = {**self.verify_.compare_to_torch(onnx_m, self.batches, self.reference), "reference": REFERENCE}
        if self.pairs is not None:
            res["val"] = self._val(OnnxRuntimeBackend(onnx_m))
        return res

    def verify_run(self, run: Callable[[np.ndarray], Any], what: str) -> dict[str, Any]:
        """`verify_model` for a non-ONNX runtime (`run(batch)` → logits)."""
        self.say(f"checking {what} against the FP32 ONNX")
        res = {**self.verify_.compare_run_to_torch(run, self.batches, self.reference), "reference": REFERENCE}
        if self.pairs is not None:
            res["val"] = self._val(RunBackend(run, self.contract))
        return res


def _weights(manifest: Manifest, given: str | None, notes: list[str]) -> str | None:
    """The checkpoint whose QAT ranges (if any) the INT8 candidates use: --weights, else the recorded file when it is
    here; only its safetensors header is read (no PyTorch)."""
    w = manifest.contract.weights or {}
    if given or w.get("embedded") or not w.get("path"):
        return given
    if Path(w["path"]).is_file():
        return str(w["path"])
    if any((e.calibration or {}).get("method") == "qat" for e in manifest.targets.values()):
        notes.append(f"the QAT checkpoint {w['path']} is not here: INT8 candidates use calibrated ranges (pass "
                     "--weights to use its learned ones)")
    return None


def tune_options(folder: Path, manifest: Manifest, val: Any, val_count: int | None, calib: str | None,
                 max_miou_drop: float | None, target_options: dict[str, Any] | None,
                 weights: str | None = None) -> tuple[ExportOptions, list[str]]:
    """The options `--target cpu` gets for this folder (its size, calibration source, count, seed, method, QAT
    checkpoint), and notes on what was assumed."""
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
    method = str(cal.get("method") or "minmax")
    opts = ExportOptions(
        model=str(c.model), weights=_weights(manifest, weights, notes), targets=["cpu"], input_size=(c.input.height, c.input.width), calib=calib,
        calib_count=cal.get("count"), calib_method=method if method in ("minmax", "entropy", "percentile")
        else "minmax", calib_seed=int(cal.get("seed") or 0), val=val, val_count=val_count, out=folder,
        max_miou_drop=max_miou_drop, target_options=dict(target_options or {}))
    return opts, notes


def tune_folder(folder: str | Path, val: Any, val_count: int | None = 32, calib: str | None = None,
                max_miou_drop: float | None = None, target_options: dict[str, Any] | None = None,
                progress: Callable[[str], None] | None = None, weights: str | None = None) -> ExportResult:
    """Measure the CPU candidates here and add the fastest within budget to `folder` as target `cpu` (see module
    docstring); returns what an export returns."""
    say = progress or (lambda msg: None)
    folder = Path(folder)
    if not folder.is_dir():
        raise SegedgeError(f"export folder not found: {folder}; pass the folder `segedge export` wrote")
    old = Manifest.read(folder)
    opts, notes = tune_options(folder, old, val, val_count, calib, max_miou_drop, target_options, weights)
    targets = [_cpu_target()]  # the folder's model.onnx stays as it is
    values = resolve_option_values(targets, dict(opts.target_options))
    fp32 = _fp32_graph(folder, old)
    c = old.contract
    say("reading calibration frames")
    frames = load_calibration_frames(opts.calib, opts.calib_count, opts.calib_seed)
    to_input = functools.partial(make_input, size=(c.input.height, c.input.width), raw=False, raw_color="BGR",
                                 mean=c.input.mean, std=c.input.std)
    pairs = val_pairs(val, val_count, c.num_classes) if val is not None else None
    checks = _OnnxChecks(fp32, [to_input(f) for f in frames.frames[:VERIFY_FRAMES]], pairs, c, say)
    manifest = Manifest(c)  # the next state: the new target, then every old one still valid (commit keeps them)
    txn = FolderTransaction(folder)
    notes.extend(txn.notes)
    try:
        import onnx

        fp32_path = txn.work / "model.fp32-nometa.onnx"
        onnx.save(fp32, str(fp32_path))
        ctx = ExportContext(
            out_dir=folder, stage_dir=txn.stage, options=opts, manifest=manifest, fp32_model=fp32, fp32_path=fp32_path,
            graph_sha256=str(c.graph_sha256), input_name=c.input.name, make_input=to_input, frames=frames,
            verify=checks.verify_model, progress=say, verify_with=checks.verify_run,
            _pre_quant=functools.partial(pre_quant, fp32_path, txn.work, say), target_options=values,
            work_dir=txn.work)
        ctx._calibration = lambda: get_calibration_table(
            folder, ctx.pre_quant_model(), str(c.graph_sha256), frames, to_input, c.input.name,
            check_method(opts.calib_method), opts.calib_seed, say, save_to=txn.stage, work_dir=txn.work)
        ctx.cache["val_pairs"] = pairs
        staged = build_targets(targets, ctx)
        say("writing the export folder")
        commit(txn, old, manifest, staged, str(c.graph_sha256), notes)
    finally:
        txn.abort()  # a no-op once committed
    data = manifest.to_dict()
    return ExportResult(folder, folder / "manifest.json", data,
                        {name: folder / e.file for name, e in manifest.targets.items()}, notes)


__all__ = ["REFERENCE", "tune_folder", "tune_options"]
