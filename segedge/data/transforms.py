"""Training augmentation and the normalisation every stage shares (OpenCV/NumPy, BGR uint8 in)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .datasets import IGNORE_INDEX


def normalize_batch(images_bgr: list[np.ndarray] | np.ndarray, mean, std) -> torch.Tensor:
    """Stack BGR uint8 HxWx3 images into a normalized float32 N×3×H×W RGB tensor (mean/std on the 0-255 scale)."""
    arr = np.ascontiguousarray(np.stack(list(images_bgr))[..., ::-1], dtype=np.float32)
    arr = (arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(arr.transpose(0, 3, 1, 2).copy())


def resize_pair(img: np.ndarray, lab: np.ndarray | None, size_hw: tuple[int, int]):
    """Resize an image (bilinear) and its label (nearest) to (H, W)."""
    h, w = size_hw
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    if lab is not None:
        lab = cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, lab


def photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg-style photometric distortion: brightness, contrast, saturation and hue jitter, each with p=0.5."""
    x = img.astype(np.float32)
    if rng.random() < 0.5:
        x += rng.uniform(-32, 32)
    if rng.random() < 0.5:
        x *= rng.uniform(0.5, 1.5)
    x = np.clip(x, 0, 255)
    if rng.random() < 0.5 or rng.random() < 0.5:
        hsv = cv2.cvtColor(x.astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.float32)
        if rng.random() < 0.5:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
        if rng.random() < 0.5:
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-18, 19)) % 180
        x = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
    return x.astype(np.uint8)


def augment(img: np.ndarray, lab: np.ndarray, base_hw: tuple[int, int], crop_hw: tuple[int, int],
            rng: np.random.Generator, scale_range: tuple[float, float] = (0.5, 2.0),
            cat_max_ratio: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """Random scale of the base size → crop (ignore-padded) → flip → photometric jitter."""
    s = rng.uniform(*scale_range)
    h, w = max(8, int(base_hw[0] * s + 0.5)), max(8, int(base_hw[1] * s + 0.5))
    img, lab = resize_pair(img, lab, (h, w))
    ch, cw = crop_hw
    ph, pw = max(ch - h, 0), max(cw - w, 0)
    if ph or pw:
        img = cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=0)
        lab = cv2.copyMakeBorder(lab, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        h, w = lab.shape
    # mmseg's cat_max_ratio: re-draw crops dominated by a single class (up to 10 tries) so thin classes show up.
    for _ in range(10):
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = lab[y0:y0 + ch, x0:x0 + cw]
        vals, cnt = np.unique(crop[crop != IGNORE_INDEX], return_counts=True)
        if len(cnt) > 1 and cnt.max() / cnt.sum() < cat_max_ratio:
            break
    img, lab = img[y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    img = photometric(np.ascontiguousarray(img), rng)
    return img, np.ascontiguousarray(lab)
