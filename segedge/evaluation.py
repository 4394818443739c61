"""Evaluate predictors (frame → label map at the frame's size) on labelled frames, at the label's resolution.

`evaluate_predictors` is the one accuracy loop: `segedge evaluate`, training validation, the export's `--val`
check (`segedge.export.verify.evaluate_miou`), `segedge bench` and the study scripts under benchmarks/ all go
through it. It needs no torch (the runtime must stay torch-free); `torch_predictor` imports torch when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np

from .data.datasets import IGNORE_INDEX, SegDataset

if TYPE_CHECKING:
    from .data.metrics import SegMetrics

Predictor = Callable[[np.ndarray], np.ndarray]
Sample = tuple[np.ndarray, np.ndarray]  # (BGR frame, label map in train ids)
K = TypeVar("K", bound=Hashable)


def torch_predictor(model: Any, input_size: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> Predictor:
    """Exact PyTorch path: resize to the model size, logits upsampled bilinearly to the frame size, argmax."""
    import torch

    from .data.transforms import normalize_batch, resize_pair

    model.eval()

    @torch.no_grad()
    def predict(frame_bgr: np.ndarray) -> np.ndarray:
        img, _ = resize_pair(frame_bgr, None, input_size)
        logits = model(normalize_batch([img], mean, std))
        up = torch.nn.functional.interpolate(logits, size=frame_bgr.shape[:2], mode="bilinear", align_corners=False)
        return up.argmax(1)[0].to(torch.uint8).numpy()

    return predict


@dataclass
class Agreement:
    """Running count of pixels where a target's labels equal the reference's labels."""

    agree: int = 0
    total: int = 0

    def update(self, pred: np.ndarray, reference: np.ndarray) -> "Agreement":
        """Add one frame (both label maps at the same size)."""
        pred, reference = np.asarray(pred), np.asarray(reference)
        if pred.shape != reference.shape:
            raise ValueError(f"label maps differ in shape: {pred.shape} vs {reference.shape}")
        self.agree += int(np.count_nonzero(pred == reference))
        self.total += int(pred.size)
        return self

    @property
    def value(self) -> float | None:
        """Fraction of agreeing pixels, None before any frame."""
        return self.agree / self.total if self.total else None


@dataclass
class Evaluation(Generic[K]):
    """What `evaluate_predictors` measured: metrics and reference agreement per predictor, frames used/skipped."""

    metrics: dict[K, "SegMetrics"]
    agreement: dict[K, float | None]  # share of pixels labelled as the predictor's reference; None without one
    frames: int
    skipped: int


def dataset_samples(dataset: SegDataset, indices: Iterable[int]) -> Iterator[Sample | None]:
    """Samples `indices` of `dataset`; None for one that is unreadable or mismatched (counted in
    `dataset.skipped`; strict datasets and out-of-range labels raise instead, see `SegDataset.get`)."""
    for i in indices:
        yield dataset.get(i)


def evaluate_predictors(predictors: Mapping[K, Predictor], samples: Iterable[Sample | None], num_classes: int,
                        class_names: Sequence[str] | None = None, ignore_index: int = IGNORE_INDEX,
                        references: Mapping[K, K] | None = None,
                        progress: Callable[[int], None] | None = None) -> Evaluation[K]:
    """Confusion-matrix metrics of every predictor on the same samples, in one pass over them.

    `samples` yields (frame, label) pairs, or None for a sample that could not be read (counted as skipped).
    `references` maps a predictor to the one whose labels it is compared with pixel by pixel (argmax agreement; a
    predictor may be its own reference). Each predictor runs once per frame, in `predictors` order, a reference
    before the predictors compared with it. `progress(n)` is told after each sample, skipped ones included.
    """
    from .data.metrics import ConfusionMatrix

    refs = dict(references or {})
    cms = {k: ConfusionMatrix(num_classes, ignore_index) for k in predictors}
    agree = {k: Agreement() for k in predictors if k in refs}
    frames = skipped = 0
    for n, sample in enumerate(samples, 1):
        if sample is None:
            skipped += 1
        else:
            frame, label = sample
            preds: dict[K, np.ndarray] = {}
            for k in predictors:
                ref = _predicted(predictors, preds, refs[k], frame) if k in refs else None
                pred = _predicted(predictors, preds, k, frame)
                cms[k].update(pred, label)
                if ref is not None:
                    agree[k].update(pred, ref)
            frames += 1
        if progress:
            progress(n)
    names = list(class_names) if class_names else None
    return Evaluation({k: cm.compute(names) for k, cm in cms.items()},
                      {k: (agree[k].value if k in agree else None) for k in predictors}, frames, skipped)


def _predicted(predictors: Mapping[K, Predictor], preds: dict[K, np.ndarray], k: K, frame: np.ndarray) -> np.ndarray:
    """Predictor k's labels for `frame`, computed once per frame."""
    if k not in preds:
        preds[k] = predictors[k](frame)
    return preds[k]


def evaluate(predict: Predictor, dataset: SegDataset, limit: int | None = None,
             indices: Iterable[int] | None = None, progress: Callable[[int, int], None] | None = None) -> "SegMetrics":
    """Confusion-matrix metrics of `predict` over a dataset (optionally the first `limit` samples or `indices`).

    Unreadable samples are skipped and counted in `dataset.skipped` unless the dataset is strict."""
    idx = list(indices) if indices is not None else list(range(len(dataset) if limit is None else min(limit, len(dataset))))
    res = evaluate_predictors({0: predict}, dataset_samples(dataset, idx), dataset.num_classes, dataset.class_names,
                              dataset.ignore_index, progress=(lambda n: progress(n, len(idx))) if progress else None)
    return res.metrics[0]


__all__ = ["Agreement", "Evaluation", "Predictor", "Sample", "dataset_samples", "evaluate", "evaluate_predictors",
           "torch_predictor"]
