"""INT8 calibration: where the frames come from, the ONNX Runtime data reader, and the cached calibration table.

Sources (`load_calibration_frames`): a folder of images (recursive jpg/png/bmp/webp), a video file (every k-th
frame), a dataset split (`"camvid:ROOT[:SPLIT]"`, or any object with `.samples[i].image_path` such as
`segedge.data.datasets.open_dataset(...)`), or any iterable / callable yielding BGR uint8 frames (or
(frame, label) pairs). Default: the synthetic street scenes shipped inside the package (`segedge/assets/frames/`,
drawn by `calib_data/make_frames.py`; see `calib_data/README.md`), so an installed wheel exports from any directory.

Statistics are computed ONCE per export folder with onnxruntime.quantization's calibrators (minmax | entropy |
percentile, strided so memory stays bounded) and cached as `calibration.<method>.json`: tensor → [min, max], plus the
method, frame count, seed, a sha256 over the frames' pixels and a sha256 of the calibrated graph. Every INT8 target
(ort-int8, qdq, later trt-int8 / openvino-int8) reads that one table; a re-export with the same frames, method,
count and graph reuses it instead of re-running calibration.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from ..errors import DataError, ExportError, SegedgeError
from ..io import read_image_file, write_json_atomic
from ..runtime.preprocess import check_frame

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# Package data (see pyproject's package-data), found next to this module, never relative to cwd or a checkout.
DEFAULT_CALIB_DIR = Path(__file__).resolve().parents[1] / "assets" / "frames"
DEFAULT_CALIB_COUNT = 32
MIN_FRAME_SIDE = 32  # a frame is resized to the model size: tinier ones carry no statistics worth having
DEFAULT_VIDEO_STEP = 15
METHODS = ("minmax", "entropy", "percentile")
TABLE_FORMAT = "segedge-calibration-table/1"
# onnxruntime calibrator options per method. Entropy: onnxruntime's default 128 histogram bins for 128 quantized bins
# leave its KL threshold search a single candidate (the full range), so "entropy" was minmax for most tensors
# (results/calibration/); 2048 bins is what TensorRT's entropy calibrator uses.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {"entropy": {"num_bins": 2048}}
COLLECT_STRIDE = 4  # frames per calibrator pass (CalibStridedMinMax-style): bounds memory for entropy/percentile


@dataclass
class CalibrationFrames:
    """The selected calibration frames (BGR uint8, original sizes) and where they came from."""

    frames: list[np.ndarray]
    names: list[str]
    source: str
    kind: str  # folder | video | dataset | iterable
    sha256: str = ""
    skipped: int = 0  # unreadable image files passed over while selecting

    def __post_init__(self) -> None:
        for frame, name in zip(self.frames, self.names):
            if min(frame.shape[:2]) < MIN_FRAME_SIDE:
                raise DataError(f"calibration frame {name} is {frame.shape[1]}x{frame.shape[0]} px: too small to "
                                f"calibrate on (at least {MIN_FRAME_SIDE} px per side); pass real camera frames "
                                "with --calib")
        if not self.sha256:
            self.sha256 = frames_sha256(self.frames)

    def __len__(self) -> int:
        return len(self.frames)


def frames_sha256(frames: Iterable[np.ndarray]) -> str:
    """sha256 over the frames' shapes and pixels (independent of file names or encodings)."""
    h = hashlib.sha256()
    for f in frames:
        h.update(repr(tuple(f.shape)).encode())
        h.update(np.ascontiguousarray(f).tobytes())
    return h.hexdigest()


def check_method(method: str) -> str:
    """Normalise a calibration method name or raise a one-line error listing the valid ones."""
    m = str(method).strip().lower()
    if m not in METHODS:
        raise SegedgeError(f"unknown calibration method '{method}': choose one of {', '.join(METHODS)}")
    return m


def _read_image(p: Path) -> np.ndarray | None:
    img = read_image_file(p)
    return None if img is None else check_frame(img)


def _pick_files(files: list[Path], count: int, seed: int, where: str) -> tuple[list[np.ndarray], list[str], int]:
    """Decode up to `count` readable images from `files` in a seeded order (all of them when count ≥ len)."""
    order = list(range(len(files)))
    if count < len(files):
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(files))]
    chosen: list[int] = []
    frames: dict[int, np.ndarray] = {}
    bad = 0
    for i in order:
        if len(chosen) >= count:
            break
        img = _read_image(files[i])
        if img is None:
            bad += 1
            continue
        chosen.append(i)
        frames[i] = img
    if not chosen:
        raise DataError(f"none of the {len(files)} image files in {where} could be read; they may be corrupt "
                        "or not images: point --calib at real frames")
    chosen.sort()
    return [frames[i] for i in chosen], [str(files[i]) for i in chosen], bad


def _from_folder(folder: Path, count: int, seed: int) -> CalibrationFrames:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        others = [p for p in folder.rglob("*") if p.is_file()]
        what = f"holds {len(others)} file(s) but no images" if others else "is empty"
        raise DataError(f"calibration folder {folder} {what}; put .jpg/.png/.bmp/.webp frames there "
                        "(e.g. ffmpeg -i cam.mp4 -vf fps=1 frames/%04d.jpg) or pass --calib VIDEO")
    frames, names, bad = _pick_files(files, count, seed, str(folder))
    names = [str(Path(n).relative_to(folder)) for n in names]
    return CalibrationFrames(frames, names, str(folder), "folder", skipped=bad)


def _read_video(path: Path, count: int, step: int | None) -> tuple[list[np.ndarray], list[str], int]:
    """Every `step`-th decodable frame of a video (spread over all of it when `step` is None): frames, names, step."""
    from ..video.sources import open_source

    try:
        src = open_source(path)
        src.open()
    except SegedgeError as e:
        raise DataError(f"cannot open video {path}; the file is corrupt or its codec is not supported by "
                        "OpenCV: convert it (ffmpeg -i in.mov out.mp4) or extract frames into a folder") from e
    frames, names = [], []
    try:
        total = src.frame_count or 0
        if step is None:
            step = max(1, total // count) if total > 0 else DEFAULT_VIDEO_STEP
        for frame in src:  # undecodable frames are skipped (and counted) by the source
            if frame.index % step == 0:
                frames.append(check_frame(frame.image))
                names.append(f"frame {frame.index}")
                if len(frames) >= count:
                    break
    finally:
        src.close()
    return frames, names, step


def _from_video(path: Path, count: int, step: int | None) -> CalibrationFrames:
    """Every `step`-th decodable frame (spread over the whole video by default), read through segedge.video: the one
    way segedge reads video, so a file that `segedge run` plays calibrates the same way."""
    # FFmpeg prints its own errors ("moov atom not found") on stderr; the DataError below says it in one line. Read
    # by OpenCV when it first opens a video, so this is set before; a value the user set is kept.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    level = cv2.utils.logging.getLogLevel()
    if not os.environ.get("SEGEDGE_DEBUG"):  # OpenCV's own "[ WARN ] … can't be used to capture" lines, likewise
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        frames, names, step = _read_video(path, count, step)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not frames:
        raise DataError(f"no frame could be decoded from video {path}; check the file plays, or extract frames "
                        "into a folder (ffmpeg -i in.mp4 -vf fps=1 frames/%04d.jpg)")
    return CalibrationFrames(frames, names, f"{path} (every {step}th frame)", "video")


def _from_items(items: Iterable[Any], count: int, source: str) -> CalibrationFrames:
    frames, names = [], []
    for i, item in enumerate(items):
        if len(frames) >= count:
            break
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        if hasattr(item, "image_path"):
            img = _read_image(Path(item.image_path))
            if img is None:
                continue
            names.append(str(item.image_path))
        else:
            img = check_frame(item)
            names.append(f"item {i}")
        frames.append(img)
    if not frames:
        raise DataError(f"calibration source {source} yielded no frames; pass BGR uint8 frames")
    return CalibrationFrames(frames, names, source, "iterable")


def _from_dataset(ds: Any, count: int, seed: int, source: str) -> CalibrationFrames:
    files = [Path(s.image_path) for s in ds.samples]
    if not files:
        raise DataError(f"dataset {source} has no images in this split; check the path and split name")
    frames, names, bad = _pick_files(files, count, seed, source)
    return CalibrationFrames(frames, names, source, "dataset", skipped=bad)


def _dataset_spec(text: str) -> tuple[str, str, str] | None:
    """'camvid:ROOT[:SPLIT]' → (name, root, split) when NAME is a registered dataset reader."""
    if ":" not in text:
        return None
    name, rest = text.split(":", 1)
    try:
        from ..data.datasets import DATASETS
    except ImportError:
        return None
    if name.lower() not in DATASETS:
        return None
    root, _, split = rest.rpartition(":") if rest.count(":") and not Path(rest).exists() else (rest, "", "train")
    return name.lower(), root, split or "train"


def _dataset_hint(text: str) -> str:
    """' (unknown dataset 'camvdi': did you mean 'camvid'?)' when `text` looks like a mistyped DATASET:ROOT."""
    name = text.split(":", 1)[0]
    if ":" not in text or not name.isidentifier():
        return ""
    from ..data.datasets import DATASETS

    close = DATASETS.suggest(name)
    return f" (unknown dataset '{name}': did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def default_calibration_dir() -> Path:
    """The shipped default frames (package data); a DataError naming the fix when the install lacks them."""
    if not DEFAULT_CALIB_DIR.is_dir() or not any(p.suffix.lower() in IMAGE_EXTS for p in DEFAULT_CALIB_DIR.iterdir()):
        raise DataError(f"no calibration frames: the default frames shipped with segedge ({DEFAULT_CALIB_DIR}) are "
                        "missing from this install; reinstall segedge, or pass --calib FOLDER|VIDEO")
    return DEFAULT_CALIB_DIR


def load_calibration_frames(source: Any = None, count: int | None = None, seed: int = 0,
                            video_step: int | None = None) -> CalibrationFrames:
    """Select up to `count` calibration frames from `source` (see module docstring); clear DataError on bad input."""
    count = DEFAULT_CALIB_COUNT if count is None else int(count)
    if count <= 0:
        raise SegedgeError(f"--calib-count must be positive, got {count}")
    if source is None:
        source = default_calibration_dir()
    if callable(source) and not hasattr(source, "samples"):
        source = source()
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            return _from_folder(p, count, seed)
        if p.is_file():
            if p.suffix.lower() in IMAGE_EXTS:
                return _from_folder_files([p], count, seed)
            return _from_video(p, count, video_step)
        spec = _dataset_spec(str(source))
        if spec:
            from ..data.datasets import open_dataset

            name, root, split = spec
            return _from_dataset(open_dataset(name, root, split), count, seed, f"{name}:{root}:{split}")
        raise DataError(f"calibration source {source} does not exist{_dataset_hint(str(source))}; pass a folder of "
                        "images, a video file or DATASET:ROOT[:SPLIT] (e.g. camvid:/data/camvid:train)")
    if hasattr(source, "samples"):
        return _from_dataset(source, count, seed, repr(source))
    if isinstance(source, np.ndarray):
        source = [source] if source.ndim in (2, 3) else list(source)
    try:
        it = iter(source)
    except TypeError as e:
        raise SegedgeError(f"cannot calibrate from a {type(source).__name__}: pass a folder, a video, a dataset or "
                           "an iterable of BGR uint8 frames") from e
    return _from_items(it, count, type(source).__name__)


def _from_folder_files(files: list[Path], count: int, seed: int) -> CalibrationFrames:
    frames, names, bad = _pick_files(files, count, seed, str(files[0]))
    return CalibrationFrames(frames, names, str(files[0]), "folder", skipped=bad)


try:  # the ORT base class gives isinstance() compatibility; the protocol is what calibrators actually use
    from onnxruntime.quantization import CalibrationDataReader as _ReaderBase
except ImportError:  # pragma: no cover - onnxruntime is a hard dependency
    _ReaderBase = object  # type: ignore[assignment,misc]


class FrameDataReader(_ReaderBase):
    """onnxruntime.quantization CalibrationDataReader over pre-processed inputs, with `__len__` and `set_range`
    so strided calibration (CalibStridedMinMax) can walk it in chunks."""

    def __init__(self, inputs: Sequence[np.ndarray], input_name: str) -> None:
        self.inputs = list(inputs)
        self.input_name = input_name
        self.start, self.end, self.pos = 0, len(self.inputs), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """Next {input_name: batch} within the current range, or None when exhausted."""
        if self.pos >= self.end:
            return None
        x = self.inputs[self.pos]
        self.pos += 1
        return {self.input_name: x}

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict the reader to inputs[start_index:end_index] and rewind to its start."""
        self.start = max(0, int(start_index))
        self.end = min(len(self.inputs), int(end_index))
        self.pos = self.start

    def rewind(self) -> None:
        """Restart the current range."""
        self.pos = self.start


def _ort_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[check_method(method)]


def compute_ranges(model_path: str | Path, reader: FrameDataReader, method: str,
                   stride: int = COLLECT_STRIDE, work_dir: str | Path | None = None) -> dict[str, list[float]]:
    """Run an onnxruntime calibrator over every float tensor of `model_path`; tensor name → [min, max]."""
    from onnxruntime.quantization.calibrate import create_calibrator

    with tempfile.TemporaryDirectory(prefix="segedge-calib-", dir=work_dir) as td:
        calibrator = create_calibrator(Path(model_path), None, augmented_model_path=str(Path(td) / "augmented.onnx"),
                                       calibrate_method=_ort_method(method),
                                       extra_options=dict(METHOD_OPTIONS.get(method, {})))
        for start in range(0, len(reader), stride):
            reader.set_range(start, start + stride)
            calibrator.collect_data(reader)
        data = calibrator.compute_data()
        del calibrator
    out = {}
    for name, td_ in data.items():
        lo, hi = td_.range_value
        out[name] = [float(np.asarray(lo).min()), float(np.asarray(hi).max())]
    return out


@dataclass
class CalibrationTable:
    """Per-tensor ranges of one calibrated graph, plus what they were computed from."""

    method: str
    ranges: dict[str, list[float]]
    count: int
    seed: int
    source: str
    source_kind: str
    source_sha256: str
    graph_sha256: str
    frames: list[str] = field(default_factory=list)
    created: str = ""
    tool_versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the calibrator's options (METHOD_OPTIONS)

    def as_dict(self) -> dict[str, Any]:
        """JSON form (format tag first)."""
        return {"format": TABLE_FORMAT, "method": self.method, "count": self.count, "seed": self.seed,
                "source": self.source, "source_kind": self.source_kind, "source_sha256": self.source_sha256,
                "graph_sha256": self.graph_sha256, "frames": self.frames, "created": self.created,
                "tool_versions": self.tool_versions, "options": self.options, "tensors": len(self.ranges),
                "ranges": self.ranges}

    @classmethod
    def load(cls, path: str | Path) -> "CalibrationTable":
        """Read a table written by `save`; ValueError when it is not one."""
        import json

        d = json.loads(Path(path).read_text())
        if d.get("format") != TABLE_FORMAT:
            raise ValueError(f"{path} is not a {TABLE_FORMAT} file")
        return cls(d["method"], {k: [float(v[0]), float(v[1])] for k, v in d["ranges"].items()}, int(d["count"]),
                   int(d["seed"]), d["source"], d["source_kind"], d["source_sha256"], d["graph_sha256"],
                   list(d.get("frames", [])), d.get("created", ""), dict(d.get("tool_versions", {})), Path(path),
                   dict(d.get("options") or {}))

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        self.path = write_json_atomic(path, self.as_dict())
        return self.path

    def matches(self, method: str, count: int, source_sha256: str, graph_sha256: str) -> bool:
        """Same frames, method (and its calibrator options), count and graph → the cached ranges are valid."""
        return (self.method, self.count, self.source_sha256, self.graph_sha256, self.options) == \
            (method, count, source_sha256, graph_sha256, METHOD_OPTIONS.get(method, {}))

    def to_tensors_data(self) -> Any:
        """As onnxruntime.quantization's TensorsData (what quantize_static consumes)."""
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        return TensorsData(_ort_method(self.method), {
            k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in self.ranges.items()})

    def write_ort_cache(self, path: str | Path) -> Path:
        """Write the ranges in onnxruntime's calibration-cache format (quantize_static(calibration_cache_path=…))."""
        from onnxruntime.quantization.calibrate import save_tensors_data

        save_tensors_data(self.to_tensors_data(), path)
        return Path(path)

    def summary(self) -> dict[str, Any]:
        """The manifest's `calibration` entry."""
        return {"source": self.source, "source_kind": self.source_kind, "count": self.count, "method": self.method,
                "seed": self.seed, "table": self.path.name if self.path else None,
                "source_sha256": self.source_sha256, "graph_sha256": self.graph_sha256}


def table_path(folder: str | Path, method: str) -> Path:
    """Where an export folder keeps its calibration table for `method`."""
    return Path(folder) / f"calibration.{check_method(method)}.json"


def get_calibration_table(folder: str | Path, model_path: str | Path, graph_sha256: str, frames: CalibrationFrames,
                          make_input: Callable[[np.ndarray], np.ndarray], input_name: str, method: str, seed: int,
                          progress: Callable[[str], None] | None = None, save_to: str | Path | None = None,
                          work_dir: str | Path | None = None) -> tuple[CalibrationTable, bool]:
    """The folder's cached table when it matches (frames, method, count, graph), else calibrate and save the new table
    in `save_to` (the export's staging folder, so the table is versioned with the export that uses it; default
    `folder`). Returns (table, reused).
    """
    from ..contract import tool_versions, utc_now

    method = check_method(method)
    path = table_path(folder, method)
    dest = table_path(save_to if save_to is not None else folder, method)
    if path.is_file():
        try:
            cached = CalibrationTable.load(path)
            if cached.matches(method, len(frames), frames.sha256, graph_sha256):
                return cached, True  # the export carries the file over (a hard link) since it fits the graph
        except (ValueError, KeyError, TypeError, OSError):
            pass  # unreadable or foreign: recompute and overwrite
    if progress:
        progress(f"calibrating ({method}, {len(frames)} frames)")
    reader = FrameDataReader([make_input(f) for f in frames.frames], input_name)
    try:
        ranges = compute_ranges(model_path, reader, method, work_dir=work_dir)
    except MemoryError as e:
        raise ExportError(f"{method} calibration ran out of memory on {len(frames)} frames; lower --calib-count or "
                          "use --calib-method minmax") from e
    table = CalibrationTable(method, ranges, len(frames), seed, frames.source, frames.kind, frames.sha256,
                             graph_sha256, frames.names, utc_now(), tool_versions(),
                             options=dict(METHOD_OPTIONS.get(method, {})))
    table.save(dest)
    return table, False
