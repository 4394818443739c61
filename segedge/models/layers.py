"""Small building blocks shared by the model families."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference, so it never reaches an export)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def resize(x: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Bilinear resize with align_corners=False (exports as ONNX Resize half_pixel)."""
    return nn.functional.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)
