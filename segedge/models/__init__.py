"""Model zoo: SegFormer MiT-B0…B5 and TopFormer T/S/B behind a timm-style registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .checkpoints import LoadedCheckpoint, load_into, read_checkpoint, save_checkpoint
from .layers import deploy_form, export_mode, set_export_mode
from .pretrained import default_weights
from .registry import ModelSpec, get_spec, list_models, parse_size, register_model, validate_input_size

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale, as mmseg
IMAGENET_STD = (58.395, 57.12, 57.375)


def create_model(name: str, num_classes: int | None = None, weights: str | Path | None = None,
                 backbone_only: bool = False, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model; `weights` is a checkpoint path, "default" for the embedded demo, or None.

    num_classes defaults to the checkpoint's (or 150 without one). The returned module carries a
    `pretrained_cfg` dict: name, num_classes, class names, mean/std, input size and where the weights came from.
    """
    spec = get_spec(name)
    ckpt: LoadedCheckpoint | None = None
    if isinstance(weights, str) and weights == "default":
        path = default_weights(spec.name)
        if path is None:
            raise CheckpointError(f"no embedded demo weights for '{spec.name}' (only b0 and topformer-t ship "
                                  "them); pass --weights PATH")
        weights = path
    if weights is not None:
        ckpt = read_checkpoint(weights, spec.name, backbone_only=backbone_only)
        if num_classes is None:
            num_classes = ckpt.num_classes
        elif ckpt.num_classes is not None and ckpt.num_classes != num_classes and not backbone_only:
            raise CheckpointError(f"{Path(weights).name} has {ckpt.num_classes} classes but num_classes="
                                  f"{num_classes} was asked; drop --num-classes or use matching weights")
        if spec.family == "segformer" and "ln_eps" in ckpt.meta:
            kwargs.setdefault("ln_eps", float(ckpt.meta["ln_eps"]))
    num_classes = int(num_classes or 150)
    model = spec.builder(num_classes=num_classes, **kwargs)
    meta = dict(ckpt.meta) if ckpt else {}
    if ckpt is not None:
        load_into(model, ckpt)
    model.pretrained_cfg = {
        "model": spec.name,
        "family": spec.family,
        "num_classes": num_classes,
        "class_names": meta.get("class_names") or [f"class_{i}" for i in range(num_classes)],
        "mean": meta.get("mean", list(IMAGENET_MEAN)),
        "std": meta.get("std", list(IMAGENET_STD)),
        "input_size": meta.get("input_size", list(spec.default_input_size)),
        "output_stride": spec.output_stride,
        "weights": str(ckpt.path) if ckpt else None,
        "weights_format": ckpt.format if ckpt else None,
        "weights_sha256": ckpt.sha256 if ckpt else None,
        "ln_eps": getattr(model, "ln_eps", None),
        "meta": meta,
    }
    return model


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample head logits to (H, W)."""
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_full(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution logits and labels (N×C×H×W, N×H×W) for a normalized input batch."""
    logits = upsample_logits(model(x), (x.shape[2], x.shape[3]))
    return logits, logits.argmax(1)


__all__ = [
    "ModelSpec", "create_model", "default_weights", "deploy_form", "export_mode", "get_spec", "list_models", "load_into", "parse_size",
    "predict_full", "read_checkpoint", "register_model", "save_checkpoint", "set_export_mode", "upsample_logits",
    "validate_input_size",
    "IMAGENET_MEAN", "IMAGENET_STD",
]
