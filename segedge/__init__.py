"""segedge: SegFormer and TopFormer from PyTorch to edge runtimes, with the cost of each deployment measured.

The package root is lazy: `import segedge.runtime` (what ships on a device) never imports torch; the model zoo
(`create_model`, `list_models`) is imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

from .errors import SegedgeError  # noqa: E402

__all__ = ["SegedgeError", "__version__", "create_model", "list_models"]
_LAZY = {"create_model": "models", "list_models": "models"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'segedge' has no attribute '{name}'")
