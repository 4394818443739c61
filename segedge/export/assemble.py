"""The torch-free half of an export: labelled frames, model inputs, the quantization pre-pass, building targets
into a staging folder and committing the folder's next state. `export_model` (pipeline.py, PyTorch → ONNX) and
`segedge tune` (segedge.tune.folder, an existing folder's FP32 ONNX, no PyTorch) both assemble folders with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..contract import MANIFEST_NAME, Manifest, ModelContract
from ..errors import ExportError, SegedgeError
from ..io import path_size, sha256_path
from ..runtime.backends.base import Backend, InputSpec
from ..runtime.preprocess import preprocess, to_raw_input
from ..testhooks import pause_point
from .folder import FolderTransaction
from .options import ExportResult
from .targets import ExportContext, TargetSpec


def val_pairs(val: Any, count: int | None, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, label) pairs from a folder (dataset layout auto-detected), a dataset, or an iterable/callable."""
    if callable(val) and not hasattr(val, "samples"):
        val = val()
    if isinstance(val, (str, Path)):
        from ..data.datasets import open_labelled_folder

        val = open_labelled_folder(val, num_classes)
    if hasattr(val, "samples") and hasattr(val, "__getitem__"):
        if getattr(val, "num_classes", num_classes) != num_classes:
            raise ExportError(f"--val dataset has {val.num_classes} classes but the model has {num_classes}")
        n = len(val) if count is None else min(count, len(val))
        return [val[i] for i in range(n)]
    pairs = []
    for item in val:
        if count is not None and len(pairs) >= count:
            break
        frame, label = item
        pairs.append((np.asarray(frame), np.asarray(label)))
    return pairs


def make_input(frame: np.ndarray, size: tuple[int, int], raw: bool, raw_color: str, mean: Sequence[float],
                std: Sequence[float]) -> np.ndarray:
    """One BGR frame → one model-input batch, exactly as the runtime prepares it."""
    return to_raw_input(frame, size, raw_color) if raw else preprocess(frame, size, mean, std)


def pre_quant(fp32_path: Path, work: Path, say: Callable[[str], None]) -> Path:
    """The quant_pre_process'ed FP32 graph that calibration tables and ONNX INT8 targets work on (staged)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    say("pre-processing the graph for quantization")
    dst = work / "model.prequant.onnx"
    try:
        quant_pre_process(str(fp32_path), str(dst))
    except Exception:  # noqa: BLE001 - symbolic shape inference can fail on dynamic graphs
        quant_pre_process(str(fp32_path), str(dst), skip_symbolic_shape=True)
    return dst


def build_targets(targets: Sequence[TargetSpec], ctx: ExportContext) -> dict[str, Path]:
    """Step 4: build every target into the staging folder and record its entry; returns file name → staged path."""
    staged: dict[str, Path] = {}
    for t in targets:
        ctx.progress(f"building target {t.name}")
        art = t.build(ctx)
        entry = dict(art.entry)
        entry["sha256"] = sha256_path(art.path)  # a file, or a folder artifact (a CoreML .mlpackage)
        entry["size_bytes"] = path_size(art.path)
        if art.extra_files:  # e.g. OpenVINO's .bin: hashed too, so a stale pair is never carried over
            entry["companion_files"] = {x.name: {"sha256": sha256_path(x), "size_bytes": path_size(x)}
                                        for x in art.extra_files}
        ctx.manifest.add_target(t.name, entry)
        staged[entry["file"]] = art.path
        for extra in art.extra_files:
            staged[extra.name] = extra
    return staged


def previous_export(out: Path) -> Manifest | None:
    """The manifest already in `out` (None when there is none or it is unreadable)."""
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        return Manifest.read(out)
    except SegedgeError:
        return None


def _kept_entries(txn: FolderTransaction, old: Manifest | None, manifest: Manifest, staged: dict[str, Path],
                  graph_sha: str, notes: list[str]) -> list[str]:
    """Names in the current folder that the next state keeps: the previous targets still valid for this graph (same
    FP32 graph, files intact, not replaced), calibration tables of this graph, and files segedge does not manage."""
    out = txn.out
    if not out.is_dir():
        return []
    drop = {MANIFEST_NAME, *staged}
    for name, entry in (old.targets.items() if old else ()):
        files = entry.files()
        if name in manifest.targets:
            drop.update(files)
            continue
        intact = old.contract.graph_sha256 == graph_sha and all(
            Path(f).name == f and f not in staged and (out / f).exists() for f in files) \
            and entry.sha256 == sha256_path(out / entry.file) \
            and all(m.get("sha256") == sha256_path(out / c) for c, m in entry.companion_files.items())
        if intact:
            manifest.add_target(name, entry)  # same FP32 graph: that artifact is still valid
        else:
            drop.update(files)
            if old.contract.graph_sha256 == graph_sha:
                notes.append(f"dropped target {name}: its files changed or went missing since it was exported")
    for table in out.glob("calibration.*.json"):
        if table.name not in drop and _table_graph(table) != graph_sha:
            drop.add(table.name)  # statistics of another graph
    return [p.name for p in out.iterdir() if p.name not in drop]


def _table_graph(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text()).get("graph_sha256"))
    except (OSError, ValueError, AttributeError):
        return None


def commit(txn: FolderTransaction, old: Manifest | None, manifest: Manifest, staged: dict[str, Path],
            graph_sha: str, notes: list[str]) -> None:
    """Complete the next state (kept files linked in, manifest last) and swap it in."""
    txn.keep(_kept_entries(txn, old, manifest, staged, graph_sha, notes))
    pause_point("export:kept")
    manifest.write(txn.stage)
    txn.commit()


class RunBackend(Backend):
    """A Backend over a plain `run(batch)` function (for the --val mIoU of non-ONNX targets during export)."""

    name = "export-check"

    def __init__(self, run: Callable[[np.ndarray], Any], contract: ModelContract) -> None:
        self._run = run
        self._spec = InputSpec((1, None, None, None), contract.input.dtype)

    def input_spec(self) -> InputSpec:
        return self._spec

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        out = self._run(x)
        return out[0] if isinstance(out, tuple) else out


def summarize_result(result: ExportResult) -> list[str]:
    """One line per target with the verification figures (what the CLI prints at the end)."""
    lines = []
    for name, e in result.manifest["targets"].items():
        v = e.get("verification", {})
        companions = (e.get("companion_files") or {}).values()  # e.g. OpenVINO's .bin: the size is the pair's
        size = e.get("size_bytes", 0) + sum(c.get("size_bytes", 0) for c in companions)
        line = f"{name:<13} {e['file']:<18} {e['precision']:<5} {size / 1e6:6.1f} MB"
        if v:
            line += f"  max|Δ| {v.get('max_abs_diff', float('nan')):.3g}  argmax agree {v.get('argmax_agreement', 0):.2%}"
        lat = e.get("latency") if isinstance(e.get("latency"), dict) else None
        if lat and lat.get("ratio") is not None:  # ort-int8: its speed against its FP32 graph on this CPU
            line += f"  {lat['ratio']:.2f}x FP32 time here"
        if "val" in v and v["val"].get("miou") is not None:
            ref = v["val"].get("pytorch_miou")
            line += f"  mIoU {v['val']['miou']:.4f}" + (f" (PyTorch {ref:.4f})" if ref is not None else "")
        lines.append(line)
        engine = e.get("engine") if isinstance(e.get("engine"), dict) else None
        if engine and engine.get("status") == "pending":
            lines.append(f"{'':<13} engine pending (TensorRT {engine.get('generation')}): on the device run "
                         f"`{engine.get('build_command')}`")
    return lines


__all__ = ["RunBackend", "build_targets", "commit", "make_input", "pre_quant", "previous_export",
           "summarize_result", "val_pairs"]
