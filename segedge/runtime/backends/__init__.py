"""Inference backends behind one registry: a backend is one module in this package (or an external plug-in).

Each module defines a `Backend` subclass decorated with `@register_backend`, naming the file kinds it opens
(`suffixes`, e.g. ".onnx", ".xml", ".safetensors") and the toolkit it needs (`segedge.toolkits`). Modules are
imported on first lookup, so adding TensorRT (".engine") or CoreML (".mlpackage") is one new file here. Heavy
libraries are imported inside the backend's methods, never at module import.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SegedgeError
from ...plugins import Registry
from .base import Backend, InputSpec

__all__ = ["BACKENDS", "Backend", "InputSpec", "backend_for_path", "get_backend", "list_backends",
           "register_backend"]

BACKENDS: Registry[type[Backend]] = Registry("backend", __name__)
_ALIASES = {"onnxruntime": ("ort",), "torch": ("pytorch",), "openvino": ("ov",), "tensorrt": ("trt",)}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add a backend to the registry under `cls.name`."""
    return BACKENDS.register(cls, aliases=_ALIASES.get(cls.name, ()))


def list_backends() -> list[type[Backend]]:
    """Every registered backend class."""
    return BACKENDS.items()


def get_backend(name: str) -> type[Backend]:
    """A backend by name that can run here, or a one-line error (unknown name, or why it cannot run)."""
    cls = BACKENDS.get(name)
    why = cls.unavailable()
    if why:
        raise SegedgeError(f"backend '{cls.name}' cannot run here: {why}")
    return cls


def backend_for_path(path: str | Path) -> type[Backend]:
    """The backend for a file kind (by suffix), or a clear error naming the supported kinds and the install hint."""
    suffix = Path(path).suffix.lower()
    for cls in BACKENDS.items():
        if suffix in cls.suffixes:
            why = cls.unavailable()
            if why:
                raise SegedgeError(f"{Path(path).name} needs the {cls.name} backend, which cannot run here: {why}")
            return cls
    kinds = sorted({s for c in BACKENDS.items() for s in c.suffixes})
    raise SegedgeError(f"no runtime backend opens '{suffix or Path(path).name}' files; supported: "
                       f"{', '.join(kinds)} or an export folder (`segedge doctor` lists the backends and what is "
                       "missing)")
