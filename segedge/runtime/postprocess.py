"""Logits → label maps at the frame's size: the fast path and the exact path.

fast:  argmax at the output stride, then nearest-neighbour upsampling of the labels (cv2.INTER_NEAREST). Cheap:
       resizes one uint8 plane.
exact: bilinear upsampling of every class's logits to the frame size (cv2.INTER_LINEAR, half-pixel centres like
       torch's align_corners=False), then argmax: what mmseg and `segedge.evaluation` measure mIoU with.
They differ only along class boundaries.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..errors import SegedgeError

MODES = ("fast", "exact")
_CV_MAX_CHANNELS = 512  # cv2.resize limit (CV_CN_MAX)


def check_mode(mode: str) -> str:
    """Validate a post-processing mode name."""
    m = str(mode).lower()
    if m not in MODES:
        raise SegedgeError(f"unknown postprocess '{mode}': choose fast (argmax then nearest upsample) or exact "
                           "(bilinear logits upsample then argmax)")
    return m


def _label_dtype(num_classes: int) -> type:
    return np.uint8 if num_classes <= 256 else np.uint16


def resize_labels(labels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resize of an H×W label map to (H, W)."""
    h, w = int(size[0]), int(size[1])
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


def labels_fast(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """C×h×w logits → argmax at stride → nearest upsample to (H, W)."""
    lab = logits.argmax(0).astype(_label_dtype(logits.shape[0]))
    return resize_labels(lab, size)


def upsample_logits(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """C×h×w logits → bilinear (half-pixel) → H×W×C float32."""
    h, w = int(size[0]), int(size[1])
    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0), dtype=np.float32)
    if hwc.shape[:2] == (h, w):
        return hwc
    if hwc.shape[2] <= _CV_MAX_CHANNELS:
        out = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)
        return out[:, :, None] if out.ndim == 2 else out
    chunks = [cv2.resize(np.ascontiguousarray(hwc[:, :, i:i + _CV_MAX_CHANNELS]), (w, h),
                         interpolation=cv2.INTER_LINEAR) for i in range(0, hwc.shape[2], _CV_MAX_CHANNELS)]
    return np.concatenate([c[:, :, None] if c.ndim == 2 else c for c in chunks], axis=2)


def labels_exact(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """C×h×w logits → bilinear upsample to (H, W) → argmax."""
    return upsample_logits(logits, size).argmax(2).astype(_label_dtype(logits.shape[0]))


def to_labels(logits: np.ndarray, size: Sequence[int], mode: str = "fast") -> np.ndarray:
    """Dispatch to the fast or exact path."""
    return labels_exact(logits, size) if check_mode(mode) == "exact" else labels_fast(logits, size)
