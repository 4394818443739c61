"""Inference backends behind one registry: a backend is one module in this package.

Each module defines a `Backend` subclass decorated with `@register_backend`, naming the file kinds it opens
(`suffixes`, e.g. ".onnx", ".xml", ".safetensors"). Every module here is imported on first lookup, so adding
OpenVINO (`openvino.py`, suffix ".xml"), TensorRT (".engine") or CoreML (".mlpackage") is one new file. Heavy
libraries are imported inside the backend's methods, never at module import.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SegedgeError
from ...plugins import import_plugins
from .base import Backend

__all__ = ["Backend", "backend_for_path", "get_backend", "list_backends", "register_backend"]

_BACKENDS: dict[str, type[Backend]] = {}
_loaded = False


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: add a backend to the registry under `cls.name`."""
    _BACKENDS[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_plugins(__name__, __path__, tolerate_import_errors=True)


def list_backends() -> list[type[Backend]]:
    """Every registered backend class."""
    _load_all()
    return list(_BACKENDS.values())


def get_backend(name: str) -> type[Backend]:
    """A backend by name, or a one-line error listing the registered ones."""
    _load_all()
    key = str(name).strip().lower()
    aliases = {"ort": "onnxruntime", "pytorch": "torch", "ov": "openvino", "trt": "tensorrt"}
    key = aliases.get(key, key)
    if key not in _BACKENDS:
        raise SegedgeError(f"unknown backend '{name}': available here: {', '.join(sorted(_BACKENDS))}")
    cls = _BACKENDS[key]
    why = cls.unavailable()
    if why:
        raise SegedgeError(f"backend '{cls.name}' cannot run here: {why}")
    return cls


def backend_for_path(path: str | Path) -> type[Backend]:
    """The default backend for a file kind (by suffix), or a clear error naming the supported kinds."""
    _load_all()
    suffix = Path(path).suffix.lower()
    for cls in _BACKENDS.values():
        if suffix in cls.suffixes:
            why = cls.unavailable()
            if why:
                raise SegedgeError(f"{Path(path).name} needs the {cls.name} backend, which cannot run here: {why}")
            return cls
    kinds = sorted({s for c in _BACKENDS.values() for s in c.suffixes})
    hint = " (the OpenVINO backend is not installed: pip install 'segedge[openvino]')" if suffix == ".xml" else ""
    raise SegedgeError(f"no runtime backend opens '{suffix or Path(path).name}' files{hint}; supported: "
                       f"{', '.join(kinds)} or an export folder")
