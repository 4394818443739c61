"""Small building blocks shared by the model families, and the export-friendly mode.

Export mode (timm's `set_exportable` idea, but per model): a flag on every `ExportAware` module, switched with
`set_export_mode(model)` or the `export_mode(model)` context. In export mode the model's forward is traceable by
`torch.fx.symbolic_trace` (and `torch.jit.trace` keeps shapes symbolic): `resize_symbolic` replaces `resize`,
passing traced sizes through instead of turning them into Python ints, and `DropPath` is the identity even in
training mode (stochastic depth draws a random per-sample mask whose shape arithmetic FX cannot trace; a graph
prepared for QAT or conversion never needs it). Normal mode is unchanged, bit for bit.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class ExportAware:
    """Mixin for modules whose forward has an export-friendly variant (`export_mode` is False by default)."""

    export_mode: bool = False


def set_export_mode(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every `ExportAware` submodule of `model` to (or out of) export mode; returns `model`."""
    for m in model.modules():
        if isinstance(m, ExportAware):
            m.export_mode = bool(enabled)
    return model


def deploy_form(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of `model` with every submodule that has an exact inference form (a `deploy_form()` method, as
    RepVGG's `switch_to_deploy`) replaced by it; (copy, the replaced modules' paths). `model` is left as it is."""
    import copy

    folded: list[str] = []
    out = copy.deepcopy(model)

    def swap(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}{name}"
            if callable(getattr(child, "deploy_form", None)):
                setattr(parent, name, child.deploy_form())
                folded.append(path)
            else:
                swap(child, f"{path}.")

    if callable(getattr(out, "deploy_form", None)):
        return out.deploy_form(), [""]
    swap(out, "")
    return out, folded


@contextlib.contextmanager
def export_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """`with export_mode(model): torch.fx.symbolic_trace(model)` — each module's previous mode is restored after."""
    before = [(m, m.export_mode) for m in model.modules() if isinstance(m, ExportAware)]
    set_export_mode(model, enabled)
    try:
        yield model
    finally:
        for m, was in before:
            m.export_mode = was


class DropPath(ExportAware, nn.Module):
    """Stochastic depth per sample (identity at inference and in export mode, so it never reaches an export)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training or self.export_mode:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def resize(x: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """Bilinear resize with align_corners=False (exports as ONNX Resize half_pixel); int() sizes: a traced graph gets
    constant sizes."""
    return nn.functional.interpolate(x, size=(int(size[0]), int(size[1])), mode="bilinear", align_corners=False)


def resize_symbolic(x: torch.Tensor, size: tuple[int, int] | list[int]) -> torch.Tensor:
    """`resize` for export mode: symbolic sizes (FX proxies, traced shapes) flow through unchanged."""
    return nn.functional.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)
