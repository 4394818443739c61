"""The one pre-processing used everywhere (training, export checks, calibration, runtime): plain resize + normalize.

No letterbox: the frame is resized (cv2.INTER_LINEAR) straight to the model's input size, converted BGR→RGB and
normalized with mean/std given on the 0-255 RGB scale, as mmseg does. Raw-io exports bake exactly these steps into
the graph (`segedge.export.wrappers.RawIOWrapper`), so both paths must stay in step with this file.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np

from ..errors import SegedgeError

COLOR_ORDERS = ("BGR", "RGB")


def check_frame(frame: object) -> np.ndarray:
    """Validate a frame and return it as H×W×3 uint8 (documented conversions below), or raise a one-line SegedgeError.

    Conversions: grayscale H×W or H×W×1 → replicated to 3 channels; 4-channel BGRA → alpha dropped.
    Refused with the fix named: 16-bit, float, bool and other dtypes, other channel counts, empty frames, non-arrays.
    """
    if not isinstance(frame, np.ndarray):
        raise SegedgeError(f"frame must be a numpy array (H×W×3 uint8 BGR, as cv2.imread returns), got "
                           f"{type(frame).__name__}; convert it with np.asarray(...)")
    if frame.dtype in (np.uint16, np.int16, np.uint32, np.int32):
        raise SegedgeError(f"frame is {frame.dtype} ({8 * frame.dtype.itemsize}-bit); segedge expects 8-bit frames: "
                           "convert with (frame >> 8).astype(np.uint8) for full-range 16-bit data, or "
                           "cv2.normalize(frame, None, 0, 255, cv2.NORM_MINMAX, cv2.CV_8U)")
    if frame.dtype != np.uint8:
        raise SegedgeError(f"frame dtype is {frame.dtype}; segedge expects uint8 0-255 frames: for floats in [0, 1] "
                           "use (frame * 255).clip(0, 255).astype(np.uint8)")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        if frame.size == 0:
            raise SegedgeError(f"frame is empty (shape {frame.shape}); check the image was read correctly")
        return np.ascontiguousarray(np.repeat(frame[:, :, None], 3, axis=2))
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise SegedgeError(f"frame shape {frame.shape} is not an image: expected H×W×3 (BGR), H×W×4 (BGRA) or "
                           "H×W grayscale; for a batch use predict_batch / preprocess_batch")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise SegedgeError(f"frame is empty (shape {frame.shape}); check the image was read correctly")
    if frame.shape[2] == 4:
        frame = frame[:, :, :3]
    return np.ascontiguousarray(frame)


def _check_color(color: str) -> str:
    c = str(color).upper()
    if c not in COLOR_ORDERS:
        raise SegedgeError(f"colour order '{color}' is not supported: use BGR (OpenCV frames) or RGB")
    return c


def resize_frame(frame_bgr: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resize a checked uint8 frame to (H, W) with cv2.INTER_LINEAR (no copy when it already has that size)."""
    h, w = int(size[0]), int(size[1])
    if frame_bgr.shape[0] == h and frame_bgr.shape[1] == w:
        return frame_bgr
    return cv2.resize(frame_bgr, (w, h), interpolation=cv2.INTER_LINEAR)


def normalize(img_hwc: np.ndarray, mean: Sequence[float], std: Sequence[float], flip: bool = False) -> np.ndarray:
    """(x - mean) / std on an H×W×3 uint8 image (0-255 scale, RGB mean/std) → contiguous float32 3×H×W.

    `flip=True` reads a BGR image (channel c of the result is channel 2 - c of the input). Written plane by plane
    into one output array: the same float32 arithmetic as a whole-array subtract/divide (bit-identical), about 4×
    faster on a 384×512 frame because no strided H×W×3 float copy or transpose is made.
    """
    h, w = img_hwc.shape[:2]
    out = np.empty((3, h, w), np.float32)
    for c in range(3):
        plane = out[c]
        np.subtract(img_hwc[:, :, 2 - c if flip else c], np.float32(mean[c]), out=plane, dtype=np.float32)
        np.divide(plane, np.float32(std[c]), out=plane)
    return out


def preprocess(frame_bgr: np.ndarray, size: Sequence[int], mean: Sequence[float], std: Sequence[float],
               color: str = "BGR") -> np.ndarray:
    """Frame (H×W×3 uint8, `color` order) → float32 1×3×H×W: resize to `size`, to RGB, (x - mean) / std."""
    frame = resize_frame(check_frame(frame_bgr), size)
    return normalize(frame, mean, std, flip=_check_color(color) == "BGR")[None]


def preprocess_batch(frames: Iterable[np.ndarray], size: Sequence[int], mean: Sequence[float],
                     std: Sequence[float], color: str = "BGR") -> np.ndarray:
    """Frames of any sizes → float32 N×3×H×W, each pre-processed as `preprocess`."""
    out = [preprocess(f, size, mean, std, color) for f in frames]
    if not out:
        raise SegedgeError("no frames given: pass at least one H×W×3 uint8 frame")
    return np.concatenate(out, axis=0)


def to_raw_input(frame_bgr: np.ndarray, size: Sequence[int], color: str = "BGR") -> np.ndarray:
    """Frame → uint8 1×H×W×3 in `color` order at `size`: the input of a raw-io export (it normalizes in-graph)."""
    frame = resize_frame(check_frame(frame_bgr), size)
    if _check_color(color) == "RGB":
        frame = frame[:, :, ::-1]
    return np.ascontiguousarray(frame)[None]
