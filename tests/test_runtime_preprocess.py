"""The shared pre-processing and frame checks (segedge.runtime.preprocess)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segedge.errors import SegedgeError
from segedge.runtime.preprocess import check_frame, preprocess, preprocess_batch, to_raw_input

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def _frame(h: int = 45, w: int = 60, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_preprocess_matches_manual_pipeline() -> None:
    f = _frame()
    x = preprocess(f, (32, 48), MEAN, STD)
    rgb = cv2.resize(f, (48, 32), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].astype(np.float32)
    ref = ((rgb - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(2, 0, 1)[None]
    assert x.shape == (1, 3, 32, 48) and x.dtype == np.float32
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6)


def test_rgb_input_skips_channel_swap() -> None:
    f = _frame()
    np.testing.assert_allclose(preprocess(f[:, :, ::-1].copy(), (32, 32), MEAN, STD, color="RGB"),
                               preprocess(f, (32, 32), MEAN, STD, color="BGR"), atol=1e-6)
    with pytest.raises(SegedgeError, match="colour order"):
        preprocess(f, (32, 32), MEAN, STD, color="HSV")


def test_batch_stacks_frames_of_different_sizes() -> None:
    a, b = _frame(40, 50, 1), _frame(70, 30, 2)
    x = preprocess_batch([a, b], (32, 32), MEAN, STD)
    assert x.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(x[1], preprocess(b, (32, 32), MEAN, STD)[0])
    with pytest.raises(SegedgeError, match="no frames"):
        preprocess_batch([], (32, 32), MEAN, STD)


def test_grayscale_is_replicated_and_bgra_drops_alpha() -> None:
    g = _frame()[:, :, 0]
    for gray in (g, g[:, :, None]):
        out = check_frame(gray)
        assert out.shape == g.shape + (3,) and np.array_equal(out[:, :, 2], g) and np.array_equal(out[:, :, 0], g)
    bgra = np.dstack([_frame(), np.full(g.shape, 7, np.uint8)])
    np.testing.assert_array_equal(check_frame(bgra), bgra[:, :, :3])


@pytest.mark.parametrize("frame, match", [
    (np.zeros((8, 8, 3), np.uint16), "16-bit.*>> 8"),
    (np.zeros((8, 8, 3), np.float32), "float32.*255"),
    (np.zeros((8, 8, 2), np.uint8), "shape"),
    (np.zeros((2, 8, 8, 3), np.uint8), "predict_batch"),
    (np.zeros((0, 8, 3), np.uint8), "empty"),
    ([[1, 2], [3, 4]], "numpy array"),
])
def test_bad_frames_give_one_line_errors(frame: object, match: str) -> None:
    with pytest.raises(SegedgeError, match=match) as e:
        check_frame(frame)
    assert "\n" not in str(e.value)


def test_raw_input_is_uint8_nhwc_in_the_requested_order() -> None:
    f = _frame()
    bgr = to_raw_input(f, (32, 40), "BGR")
    rgb = to_raw_input(f, (32, 40), "RGB")
    assert bgr.shape == (1, 32, 40, 3) and bgr.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0], bgr[0, :, :, ::-1])


def test_training_and_evaluation_normalise_exactly_like_the_runtime() -> None:
    """Training/eval (data.transforms) and deployment (runtime.preprocess) must feed the model identical tensors."""
    from segedge.data.transforms import normalize_batch, resize_pair
    from segedge.models import IMAGENET_MEAN, IMAGENET_STD

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    img, _ = resize_pair(frame, None, (32, 64))
    a = normalize_batch([img], IMAGENET_MEAN, IMAGENET_STD).numpy()
    b = preprocess(frame, (32, 64), IMAGENET_MEAN, IMAGENET_STD, "BGR")
    assert a.shape == b.shape == (1, 3, 32, 64)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
