"""segedge: SegFormer and TopFormer from PyTorch to edge runtimes, with the cost of each deployment measured."""

from __future__ import annotations

__version__ = "0.2.0"

from .errors import SegedgeError  # noqa: E402
from .models import create_model, list_models  # noqa: E402

__all__ = ["SegedgeError", "__version__", "create_model", "list_models"]
