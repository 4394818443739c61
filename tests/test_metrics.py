"""Metric arithmetic on hand-computed confusion matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segedge.data.metrics import ConfusionMatrix, metrics_from_confusion


def test_hand_computed_confusion():
    # rows = label, cols = prediction
    mat = np.array([[3, 1, 0],
                    [2, 4, 0],
                    [0, 0, 0]])
    m = metrics_from_confusion(mat, ["a", "b", "c"])
    # class a: tp 3, label 4, pred 5 -> union 6 -> 0.5 ; class b: tp 4, label 6, pred 5 -> union 7 -> 4/7
    assert m.iou[0] == pytest.approx(0.5)
    assert m.iou[1] == pytest.approx(4 / 7)
    assert math.isnan(m.iou[2])  # absent from labels and predictions: excluded from the mean
    assert m.miou == pytest.approx((0.5 + 4 / 7) / 2)
    assert m.pixel_acc == pytest.approx(7 / 10)
    assert m.mean_acc == pytest.approx((3 / 4 + 4 / 6) / 2)
    d = m.as_dict()
    assert d["per_class_iou"]["c"] is None and d["pixels"] == 10


def test_predicted_but_absent_class_counts_as_zero():
    mat = np.array([[2, 2], [0, 0]])  # class 1 never in labels but predicted twice
    m = metrics_from_confusion(mat)
    assert m.iou == [pytest.approx(0.5), 0.0]
    assert m.miou == pytest.approx(0.25)


def test_update_ignores_void_and_matches_bincount():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, (50, 60)).astype(np.uint8)
    lab[rng.random((50, 60)) < 0.1] = 255
    pred = rng.integers(0, 4, (50, 60)).astype(np.uint8)
    cm = ConfusionMatrix(4).update(pred, lab)
    keep = lab != 255
    expect = np.zeros((4, 4), np.int64)
    for a, b in zip(lab[keep], pred[keep]):
        expect[a, b] += 1
    assert (cm.mat == expect).all()
    assert cm.mat.dtype == np.int64
    half = ConfusionMatrix(4).update(pred[:25], lab[:25]).merge(ConfusionMatrix(4).update(pred[25:], lab[25:]))
    assert (half.mat == cm.mat).all()


def test_perfect_prediction_and_shape_mismatch():
    lab = np.array([[0, 1], [2, 255]])
    m = ConfusionMatrix(3).update(np.array([[0, 1], [2, 0]]), lab).compute()
    assert m.miou == 1.0 and m.pixel_acc == 1.0
    with pytest.raises(ValueError):
        ConfusionMatrix(3).update(np.zeros((2, 3)), lab)
