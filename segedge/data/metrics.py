"""Confusion-matrix segmentation metrics: mIoU, per-class IoU, pixel accuracy, mean accuracy.

Convention: a class absent from both predictions and labels over the whole evaluation has an undefined IoU (0/0);
it is reported as NaN and excluded from the mean, as mmseg does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .datasets import IGNORE_INDEX


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy view of an array or a torch tensor (detected without importing torch: the runtime has none)."""
    if type(x).__module__.startswith("torch") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Accumulates an int64 C×C confusion matrix (rows = label, columns = prediction), skipping the ignore index."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), np.int64)

    def update(self, pred: Any, label: Any) -> "ConfusionMatrix":
        """Add a prediction/label pair (same shape, integer class ids)."""
        pred, label = _to_numpy(pred), _to_numpy(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        label = label.astype(np.int64).ravel()
        pred = pred.astype(np.int64).ravel()
        keep = (label != self.ignore_index) & (label >= 0) & (label < self.num_classes)
        n = self.num_classes
        self.mat += np.bincount(n * label[keep] + pred[keep], minlength=n * n).reshape(n, n)
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix of the same size."""
        self.mat += other.mat
        return self

    def compute(self, class_names: list[str] | None = None) -> "SegMetrics":
        """Metrics from the accumulated matrix."""
        return metrics_from_confusion(self.mat, class_names)


@dataclass
class SegMetrics:
    """Metrics of one evaluation; IoU/accuracy in [0, 1], NaN for classes absent from labels and predictions."""

    miou: float
    iou: list[float]
    pixel_acc: float
    mean_acc: float
    class_acc: list[float]
    class_names: list[str]
    confusion: np.ndarray
    present: list[bool]

    def as_dict(self) -> dict:
        """JSON-friendly dict (NaN → None), per-class figures keyed by class name."""
        def f(x: float) -> float | None:
            return None if np.isnan(x) else round(float(x), 6)
        return {
            "miou": f(self.miou), "pixel_acc": f(self.pixel_acc), "mean_acc": f(self.mean_acc),
            "per_class_iou": {n: f(v) for n, v in zip(self.class_names, self.iou)},
            "per_class_acc": {n: f(v) for n, v in zip(self.class_names, self.class_acc)},
            "pixels": int(self.confusion.sum()),
            "convention": "classes absent from both labels and predictions are excluded from the mean",
        }


def metrics_from_confusion(mat: np.ndarray, class_names: list[str] | None = None) -> SegMetrics:
    """mIoU, per-class IoU, pixel and mean accuracy from a confusion matrix (rows = label, columns = prediction)."""
    mat = np.asarray(mat, dtype=np.int64)
    tp = np.diag(mat).astype(np.float64)
    gt = mat.sum(1).astype(np.float64)
    pr = mat.sum(0).astype(np.float64)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    total = mat.sum()
    names = class_names or [f"class_{i}" for i in range(mat.shape[0])]
    return SegMetrics(
        miou=float(np.nanmean(iou)) if np.any(union > 0) else float("nan"),
        iou=iou.tolist(),
        pixel_acc=float(tp.sum() / total) if total else float("nan"),
        mean_acc=float(np.nanmean(acc)) if np.any(gt > 0) else float("nan"),
        class_acc=acc.tolist(),
        class_names=list(names),
        confusion=mat,
        present=(union > 0).tolist(),
    )
