"""What every target builder receives (ExportContext) and returns (TargetArtifact)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    from ...contract import Manifest
    from ..calibration import CalibrationFrames, CalibrationTable


@dataclass
class TargetArtifact:
    """A staged file and its manifest entry (file name relative to the export folder)."""

    path: Path
    entry: dict[str, Any]
    extra_files: list[Path] = field(default_factory=list)  # staged companions (e.g. OpenVINO .bin)


@dataclass
class ExportContext:
    """The state shared by all targets of one export.

    fp32_model: the verified FP32 ONNX ModelProto without metadata; fp32_path: it saved in the staging folder
    (metadata-free, for tools that need a file). `calibration()` computes or reuses the calibration table once and
    returns it; `pre_quant_model()` is the quant_pre_process'ed FP32 graph the table's tensor names refer to.
    `verify(model)` compares any ONNX ModelProto with PyTorch on the export's check frames (+ mIoU with --val);
    `verify_with(run, name)` does the same for any other runtime: `run(batch)` returns the model's output (the
    logits), or `(first_output, logits)` for a labels-out (raw io) model; same figures dict as `verify`.
    """

    out_dir: Path
    stage_dir: Path
    options: Any  # segedge.export.pipeline.ExportOptions
    manifest: "Manifest"
    fp32_model: Any
    fp32_path: Path
    graph_sha256: str
    input_name: str
    make_input: Callable[[np.ndarray], np.ndarray]  # BGR frame → one model input batch
    frames: "CalibrationFrames"
    verify: Callable[..., dict[str, Any]]
    progress: Callable[[str], None]
    verify_with: Callable[..., dict[str, Any]] | None = None
    _calibration: Callable[[], tuple["CalibrationTable", bool]] | None = None
    _pre_quant: Callable[[], Path] | None = None
    cache: dict[str, Any] = field(default_factory=dict)
    target_options: dict[str, Any] = field(default_factory=dict)  # parsed values of the targets' own options
    work_dir: Path | None = None  # scratch space inside the staging folder (temp files, intermediates)
    torch_module: Any = None  # the eval-mode PyTorch model (no raw-io wrapper), for targets converted from PyTorch

    def option(self, name: str) -> Any:
        """The value of a target option (see TargetSpec.options), its default when not given."""
        return self.target_options[name]

    def calibration(self) -> tuple["CalibrationTable", bool]:
        """(table, reused): the export folder's calibration table, computed at most once per export."""
        if "calibration" not in self.cache:
            assert self._calibration is not None
            self.cache["calibration"] = self._calibration()
        return self.cache["calibration"]

    def pre_quant_model(self) -> Path:
        """Path of the quant_pre_process'ed FP32 model (staged, never committed)."""
        if "pre_quant" not in self.cache:
            assert self._pre_quant is not None
            self.cache["pre_quant"] = self._pre_quant()
        return self.cache["pre_quant"]

    def staged(self, name: str) -> Path:
        """A path in the staging folder for an artifact that will be committed as `out_dir/name`."""
        return self.stage_dir / name


def write_onnx_artifact(ctx: ExportContext, target: str, filename: str, model: Any,
                        entry: dict[str, Any]) -> TargetArtifact:
    """Embed the manifest keys for `target` in `model`'s metadata_props and save it to the staging folder."""
    import onnx

    from ...contract import embed_onnx_metadata

    entry = {"file": filename, **entry}
    embed_onnx_metadata(model, ctx.manifest.target_metadata(target, entry))
    path = ctx.staged(filename)
    onnx.save(model, str(path))
    return TargetArtifact(path, entry)
