"""What `segedge export` accepts (ExportOptions) and returns (ExportResult); torch-free, so a folder can be tuned
or re-checked on a device without PyTorch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

IO_MODES = ("float", "raw")
DEFAULT_OPSET = 17
VERIFY_FRAMES = 4
DEFAULT_VAL_COUNT = 32


@dataclass
class ExportOptions:
    """Everything `segedge export` accepts (see the CLI help for each flag)."""

    model: str
    weights: str | Path | None = None  # None → the embedded demo checkpoint
    targets: Sequence[str] | str = ("onnx",)
    input_size: str | tuple[int, int] | None = None  # None → the checkpoint's training size
    calib: Any = None  # folder | video | "dataset:ROOT[:SPLIT]" | iterable/callable of BGR frames | dataset
    calib_count: int | None = None
    calib_method: str = "minmax"
    calib_seed: int = 0
    video_step: int | None = None
    opset: int = DEFAULT_OPSET
    dynamic: bool = False  # dynamic batch, height and width (SegFormer)
    dynamic_batch: bool = False  # dynamic batch only (any family)
    io: str = "float"
    raw_color: str = "BGR"
    upsample: bool = False  # raw io: labels at the input size instead of the output stride
    keep_float: Sequence[str] = ()
    quantize_all: bool = False
    fold: bool = True  # trace the model's exact inference form (segedge.models.deploy_form); False: as trained
    val: Any = None  # folder | dataset | iterable/callable of (frame, label) pairs
    val_count: int | None = DEFAULT_VAL_COUNT
    out: str | Path | None = None
    verify_frames: int = VERIFY_FRAMES
    replace: bool = False  # drop the folder's other targets when they no longer fit the new graph
    # INT8 accuracy budget (mIoU points lost vs FP32 on --val's budget half): float islands are searched until it is
    # met (segedge.export.sensitivity); None: the family defaults.
    max_miou_drop: float | None = None
    # Options that only some targets take (TargetSpec.options), by name, e.g. {"ov_precision": "bf16",
    # "ort_scope": "conv"}; one given for none of the requested targets is refused.
    target_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """What an export produced."""

    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    artifacts: dict[str, Path]
    notes: list[str] = field(default_factory=list)


__all__ = ["DEFAULT_OPSET", "DEFAULT_VAL_COUNT", "ExportOptions", "ExportResult", "IO_MODES", "VERIFY_FRAMES"]
