"""Class colours for overlays: the CamVid (SegNet) or Cityscapes palette when the class names match, else a
deterministic golden-ratio HSV palette."""

from __future__ import annotations

import colorsys
import numbers
from typing import Sequence

import cv2
import numpy as np

# RGB colours of the SegNet CamVid 11-class release and of the Cityscapes benchmark.
CAMVID_RGB = {
    "sky": (128, 128, 128), "building": (128, 0, 0), "pole": (192, 192, 128), "road": (128, 64, 128),
    "pavement": (60, 40, 222), "sidewalk": (60, 40, 222), "tree": (128, 128, 0), "signsymbol": (192, 128, 128),
    "fence": (64, 64, 128), "car": (64, 0, 128), "pedestrian": (64, 64, 0), "bicyclist": (0, 128, 192),
}
CITYSCAPES_RGB = {
    "road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "wall": (102, 102, 156),
    "fence": (190, 153, 153), "pole": (153, 153, 153), "traffic light": (250, 170, 30),
    "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "terrain": (152, 251, 152), "sky": (70, 130, 180),
    "person": (220, 20, 60), "rider": (255, 0, 0), "car": (0, 0, 142), "truck": (0, 0, 70), "bus": (0, 60, 100),
    "train": (0, 80, 100), "motorcycle": (0, 0, 230), "bicycle": (119, 11, 32),
}


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def deterministic_palette(n: int) -> np.ndarray:
    """n distinct RGB colours (uint8 n×3) that depend only on n's index order."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        s = 0.55 + 0.45 * ((i // 3) % 2)
        v = 0.95 - 0.3 * ((i // 6) % 2)
        out[i] = [int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


def palette_for(class_names: Sequence[str]) -> np.ndarray:
    """RGB palette (uint8 N×3): CamVid or Cityscapes colours when every class name is known there."""
    keys = [_key(c) for c in class_names]
    for table in (CAMVID_RGB, CITYSCAPES_RGB):
        norm = {_key(k): v for k, v in table.items()}
        if keys and all(k in norm for k in keys):
            return np.array([norm[k] for k in keys], np.uint8)
    return deterministic_palette(len(keys))


def colorize(labels: np.ndarray, palette_rgb: np.ndarray) -> np.ndarray:
    """H×W labels → H×W×3 BGR colours (labels outside the palette, e.g. 255 ignore, are black)."""
    if labels.dtype == np.uint8 and len(palette_rgb) <= 256:  # the common case: OpenCV's table lookup, ~7x faster
        lut = np.zeros((256, 1, 3), np.uint8)
        lut[:len(palette_rgb), 0] = palette_rgb[:, ::-1]
        return cv2.LUT(cv2.merge([labels, labels, labels]), lut)
    lut = np.zeros((max(256, len(palette_rgb), int(labels.max(initial=0)) + 1), 3), np.uint8)
    lut[:len(palette_rgb)] = palette_rgb[:, ::-1]
    return np.take(lut, labels, axis=0)


def check_labels(labels: object, num_classes: int | None = None) -> np.ndarray:
    """An H×W integer label map (uint8 / uint16 / int with values ≥ 0), or one line naming what is wrong."""
    from ..errors import SegedgeError

    if not isinstance(labels, np.ndarray):
        raise SegedgeError(f"labels must be an H×W integer numpy array (what predict returns), got "
                           f"{type(labels).__name__}")
    if labels.ndim != 2 or labels.size == 0:
        raise SegedgeError(f"labels must be an H×W array (what predict returns), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise SegedgeError(f"labels must hold integer class indices, got {labels.dtype}; pass what predict returns "
                           "(uint8), or labels.astype(np.uint8) after checking they are whole numbers")
    if labels.min() < 0:
        raise SegedgeError(f"labels hold negative values (min {int(labels.min())}); class indices start at 0")
    if labels.dtype != np.uint8:
        labels = labels.astype(np.uint16 if labels.max() > 255 else np.uint8)
    return labels


def overlay(frame_bgr: np.ndarray, labels: np.ndarray, palette_rgb: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over a BGR frame (labels resized nearest to the frame if needed; values outside the
    palette, such as 255 ignore, are left black)."""
    from ..errors import SegedgeError

    labels = check_labels(labels)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= float(alpha) <= 1.0:
        raise SegedgeError(f"alpha must be a number from 0 (frame only) to 1 (colours only), got {alpha!r}")
    h, w = frame_bgr.shape[:2]
    if labels.shape[:2] != (h, w):
        labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    color = colorize(labels, palette_rgb)
    a = float(alpha)
    return cv2.addWeighted(frame_bgr, 1.0 - a, color, a, 0.0)
