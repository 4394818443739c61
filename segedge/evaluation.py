"""Evaluate any predictor (frame → label map) on a labelled dataset, at the label's resolution."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

from .data.datasets import SegDataset
from .data.metrics import ConfusionMatrix, SegMetrics
from .data.transforms import normalize_batch, resize_pair

Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(model: torch.nn.Module, input_size: tuple[int, int], mean, std) -> Predictor:
    """Exact PyTorch path: resize to the model size, logits upsampled bilinearly to the frame size, argmax."""
    model.eval()

    @torch.no_grad()
    def predict(frame_bgr: np.ndarray) -> np.ndarray:
        img, _ = resize_pair(frame_bgr, None, input_size)
        logits = model(normalize_batch([img], mean, std))
        up = torch.nn.functional.interpolate(logits, size=frame_bgr.shape[:2], mode="bilinear", align_corners=False)
        return up.argmax(1)[0].to(torch.uint8).numpy()

    return predict


def evaluate(predict: Predictor, dataset: SegDataset, limit: int | None = None,
             indices: Iterable[int] | None = None, progress: Callable[[int, int], None] | None = None) -> SegMetrics:
    """Confusion-matrix metrics of `predict` over a dataset (optionally the first `limit` samples or `indices`)."""
    idx = list(indices) if indices is not None else list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    cm = ConfusionMatrix(dataset.num_classes, dataset.ignore_index)
    for n, i in enumerate(idx):
        item = dataset.get(i)  # unreadable samples are skipped and counted unless the dataset is strict
        if item is not None:
            img, lab = item
            cm.update(predict(img), lab)
        if progress:
            progress(n + 1, len(idx))
    return cm.compute(dataset.class_names)
