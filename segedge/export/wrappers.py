"""Modules wrapped around a segmentation model before export: `--io raw` bakes pre- and post-processing in-graph.

The raw graph takes the frame as a camera gives it (uint8, N×H×W×3, BGR or RGB, already at the model input size)
and returns uint8 labels, so a deployment needs no NumPy/OpenCV normalisation code. The arithmetic mirrors
`segedge.runtime.preprocess.preprocess` exactly: float cast, (x - mean) / std on the 0-255 RGB scale, NCHW.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class RawIOWrapper(nn.Module):
    """uint8 NHWC frame → normalised NCHW → model → (optionally upsampled) logits → argmax → uint8 labels."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], color: str = "BGR",
                 upsample: bool = False) -> None:
        super().__init__()
        self.model = model
        self.color = color.upper()
        self.upsample = upsample
        mean_t = torch.tensor([float(v) for v in mean], dtype=torch.float32)
        std_t = torch.tensor([float(v) for v in std], dtype=torch.float32)
        if self.color == "BGR":
            # Normalise in the frame's own channel order, then reorder to RGB with one Gather.
            mean_t, std_t = mean_t.flip(0), std_t.flip(0)
        self.register_buffer("mean", mean_t.view(1, 1, 1, 3), persistent=False)
        self.register_buffer("std", std_t.view(1, 1, 1, 3), persistent=False)
        self.register_buffer("to_rgb", torch.tensor([2, 1, 0], dtype=torch.long), persistent=False)

    def logits(self, frames: torch.Tensor) -> torch.Tensor:
        """Float logits (at the model's stride, or at the input size with `upsample`) for uint8 NHWC frames."""
        x = (frames.to(torch.float32) - self.mean) / self.std
        if self.color == "BGR":
            x = torch.index_select(x, 3, self.to_rgb)
        x = x.permute(0, 3, 1, 2)
        y = self.model(x)
        if self.upsample:
            y = nn.functional.interpolate(y, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        return y

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.logits(frames).argmax(1).to(torch.uint8)
