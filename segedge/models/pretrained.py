"""The demo checkpoints embedded in the package (trained on CamVid by `segedge train`, see their model cards)."""

from __future__ import annotations

from pathlib import Path

from .registry import get_spec

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = {
    "b0": "b0-camvid-384x512.safetensors",
    "topformer-t": "topformer-t-camvid-384x512.safetensors",
}


def default_weights(model_name: str) -> Path | None:
    """Path of the embedded demo checkpoint for a model, or None when it has none."""
    fname = DEFAULT_WEIGHTS.get(get_spec(model_name).name)
    if fname is None:
        return None
    p = WEIGHTS_DIR / fname
    return p if p.exists() else None
