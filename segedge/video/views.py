"""What a pipeline shows or writes for each frame: overlay, colour mask, raw labels or side by side, with an
optional legend of the classes in view and an optional FPS / latency line.

| view | image | for |
|---|---|---|
| `overlay` | the frame with class colours blended in (`alpha`) | videos, display, folders |
| `mask` | class colours only | videos, display, folders |
| `labels` | H×W uint8 class indices at the frame's size (no legend, no text) | folders of label PNGs |
| `side` | the frame and the colour mask next to each other (twice as wide) | videos, display, folders |
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..errors import SegedgeError
from ..runtime.palette import colorize, overlay

VIEWS = ("overlay", "mask", "labels", "side")
LEGEND_MAX = 12  # classes listed at most (the largest areas first)


def check_view(view: str) -> str:
    """A view name, validated."""
    v = str(view).lower()
    if v not in VIEWS:
        raise SegedgeError(f"unknown view '{view}': choose overlay, mask, labels or side")
    return v


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour=(255, 255, 255)) -> None:
    th = max(1, int(round(scale * 2)))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, th, cv2.LINE_AA)


class Renderer:
    """Turns (frame, labels) into the chosen view; the palette and class names come from the model."""

    def __init__(self, palette_rgb: np.ndarray, class_names: Sequence[str], view: str = "overlay",
                 alpha: float = 0.5, legend: bool = False, info: bool = False) -> None:
        self.view = check_view(view)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
            raise SegedgeError(f"alpha must be a number from 0 (frame only) to 1 (colours only), got {alpha!r}")
        self.palette = np.asarray(palette_rgb, np.uint8)
        self.class_names = list(class_names)
        self.alpha, self.legend, self.info = float(alpha), bool(legend), bool(info)

    @property
    def makes_labels(self) -> bool:
        """Whether the view is the raw label map (uint8 H×W) rather than a BGR image."""
        return self.view == "labels"

    def render(self, frame: np.ndarray, labels: np.ndarray, info_text: str | None = None) -> np.ndarray:
        """The view of one frame: BGR H×W×3 (H×2W×3 for side), or the labels themselves for view 'labels'."""
        if self.view == "labels":
            return labels
        if self.view == "overlay":
            img = overlay(frame, labels, self.palette, self.alpha)
        elif self.view == "mask":
            img = colorize(labels, self.palette)
        else:
            img = np.hstack([frame, colorize(labels, self.palette)])
        if self.legend:
            self.draw_legend(img, labels)
        if self.info and info_text:
            self.draw_info(img, info_text)
        return img

    def draw_legend(self, img: np.ndarray, labels: np.ndarray) -> None:
        """Swatches and names of the classes in view (largest first, at most LEGEND_MAX), top right, in place."""
        counts = np.bincount(labels.ravel(), minlength=len(self.class_names))
        present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0 and c < len(self.class_names)]
        present = present[:LEGEND_MAX]
        if not present:
            return
        h, w = img.shape[:2]
        scale = max(0.35, min(1.0, h / 900))
        row = int(22 * scale / 0.5)
        box = int(row * 0.7)
        names = [self.class_names[c] for c in present]
        tw = max(cv2.getTextSize(n, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for n in names)
        width, height = box + 12 + tw + 8, row * len(present) + 8
        x0, y0 = max(0, w - width - 6), 6
        x1, y1 = min(w, x0 + width), min(h, y0 + height)
        panel = img[y0:y1, x0:x1]
        panel[:] = (panel.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken behind the text
        for i, (c, name) in enumerate(zip(present, names)):
            y = y0 + 4 + i * row
            if y + box > h:
                break
            b, g, r = (int(v) for v in self.palette[c][::-1]) if c < len(self.palette) else (0, 0, 0)
            cv2.rectangle(img, (x0 + 4, y + 2), (x0 + 4 + box, y + 2 + box), (b, g, r), -1)
            cv2.putText(img, name, (x0 + box + 12, y + box), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                        cv2.LINE_AA)

    def draw_info(self, img: np.ndarray, text: str) -> None:
        """A line of text (e.g. '24.8 fps  41 ms'), top left, in place."""
        scale = max(0.4, min(1.2, img.shape[0] / 720))
        _text(img, text, (8, int(8 + 24 * scale)), scale)


__all__ = ["LEGEND_MAX", "Renderer", "VIEWS", "check_view"]
