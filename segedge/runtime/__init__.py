"""Runtime: run exported (or PyTorch) segmentation models on BGR frames: `Segmenter.load(path).predict(frame)`.

The shared pre-processing lives in `segedge.runtime.preprocess` (training, export checks and calibration use it too).
"""

from __future__ import annotations

from .modelinfo import ModelInfo
from .preprocess import check_frame, preprocess, preprocess_batch, to_raw_input
from .segmenter import Segmenter

__all__ = ["ModelInfo", "Segmenter", "check_frame", "preprocess", "preprocess_batch", "to_raw_input"]
