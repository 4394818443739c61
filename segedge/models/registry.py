"""timm-style model registry: families register named configs; `create_model` builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..contract import MAX_INPUT_SIDE
from ..errors import SegedgeError
from ..plugins import Registry


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one named model, kept as data."""

    name: str
    family: str  # "segformer" | "topformer"
    builder: Callable[..., torch.nn.Module]
    config: dict[str, Any]
    aliases: tuple[str, ...] = ()
    default_input_size: tuple[int, int] = (512, 512)
    output_stride: int = 4
    size_multiple: int = 32  # input H and W must be multiples of this
    description: str = ""


# Families register themselves on import (their modules are the registry's plug-ins).
MODELS: Registry[ModelSpec] = Registry(
    "model", modules=("segedge.models.segformer", "segedge.models.topformer"),
    normalize=lambda s: s.strip().lower().replace("_", "-"), hint="choose one of")


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model spec (and its aliases) to the registry."""
    return MODELS.register(spec, aliases=spec.aliases)


def list_models() -> list[str]:
    """Canonical names of every registered model."""
    return MODELS.names()


def get_spec(name: str) -> ModelSpec:
    """Resolve a name or alias (case-insensitive) to its spec, or a one-line error with suggestions."""
    return MODELS.get(name)


# Peak activation bytes per input pixel of one batch-1 eager forward on CPU, measured for B0 and TopFormer-T at
# 512-1024 px (ru_maxrss growth), without SegFormer's attention matrices (counted separately below).
_BYTES_PER_PIXEL = {"segformer": 900.0, "topformer": 300.0}
_SEGFORMER_STAGES = ((4, 8, 1), (8, 4, 2), (16, 2, 5), (32, 1, 8))  # (stride, spatial reduction, heads)


def estimate_forward_bytes(name: str, size: tuple[int, int]) -> int:
    """Estimated peak memory of one batch-1 forward pass at `size` (activations and attention, not weights)."""
    spec = get_spec(name)
    px = float(size[0]) * float(size[1])
    per_px = _BYTES_PER_PIXEL.get(spec.family, 1000.0)
    if spec.family == "segformer":
        dims, dec = spec.config["embed_dims"], spec.config["decoder_dim"]
        linear = per_px * px * (sum(dims) + 4 * dec) / (512 + 4 * 256)  # relative to B0's widths
        # Each stage frees its attention matrices before the next: the largest one counts (scores + softmax copy).
        attention = max(4.0 * 2 * heads * (px / s ** 2) * (px / (s * r) ** 2) for s, r, heads in _SEGFORMER_STAGES)
        return int(linear + attention)
    variant_scale = {"t": 1.0, "s": 1.6, "b": 2.2}.get(str(spec.config.get("variant")), 2.2)
    return int(per_px * px * variant_scale)


def validate_input_size(name: str, size: tuple[int, int]) -> tuple[int, int]:
    """Check an (H, W) input size against the family's rules; raise a clear error naming valid sizes."""
    spec = get_spec(name)
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise SegedgeError(f"input size {h}x{w} must be positive, e.g. {spec.default_input_size[0]}x{spec.default_input_size[1]}")
    if max(h, w) > MAX_INPUT_SIDE:
        raise SegedgeError(f"input size {h}x{w} is larger than segedge allows ({MAX_INPUT_SIDE} per side; about "
                           f"{estimate_forward_bytes(spec.name, (h, w)) / 1e9:.0f} GB for one frame of {spec.name}); "
                           "choose a smaller --input-size (frames of any size are resized to it)")
    m = spec.size_multiple
    if h % m or w % m:
        def near(v: int) -> str:
            lo = max(m, v // m * m)
            hi = lo + m if lo < v else lo
            return f"{lo}" if lo == hi else f"{lo} or {hi}"
        raise SegedgeError(
            f"input size {h}x{w} is not valid for {spec.name}: height and width must be multiples of {m} "
            f"(nearest valid: height {near(h)}, width {near(w)})"
        )
    return h, w


def parse_size(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Parse 'HxW' (or 'N' for square) into (H, W), with a clear error on malformed input."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise SegedgeError(f"input size {text!r} must have two values (height, width)")
        return int(text[0]), int(text[1])
    s = str(text).strip().lower().replace("×", "x").replace("*", "x").replace(",", "x")
    parts = [p for p in s.split("x") if p != ""]
    try:
        if len(parts) == 1:
            v = int(parts[0])
            return v, v
        if len(parts) == 2:
            h, w = int(parts[0]), int(parts[1])
            return h, w
    except ValueError:
        pass
    raise SegedgeError(f"cannot parse input size '{text}': write it as HEIGHTxWIDTH, e.g. 384x512")
