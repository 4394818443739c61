"""Vendor toolkits, one module each: what segedge needs to know about a library before using it.

Each module registers one `Toolkit`: its import name, pip distributions (for the version), install hint,
availability (`unavailable() -> reason | None`), what running its artifacts needs on this host
(`run_unavailable()`: e.g. a CUDA GPU for TensorRT, macOS for CoreML) and the constants its export target and its
runtime backend share. Nothing here imports the library at module import; `segedge doctor` lists them all.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable

from ..errors import first_line
from ..plugins import Registry

__all__ = ["TOOLKITS", "Toolkit", "get_toolkit", "list_toolkits", "register_toolkit"]


@dataclass(frozen=True)
class Toolkit:
    """One vendor toolkit (ONNX Runtime, OpenVINO, TensorRT, CoreML, PyTorch)."""

    name: str  # registry key, e.g. "onnxruntime"
    title: str  # for people, e.g. "ONNX Runtime"
    module: str  # import name
    distributions: tuple[str, ...]  # pip distributions that provide it, best first
    install_hint: str  # one command (or sentence) that installs it
    host_check: Callable[[], str | None] = field(default=lambda: None)  # what running artifacts needs beyond import
    purpose: str = ""  # what segedge uses it for

    def version(self) -> str | None:
        """Installed version (from the distribution metadata, else the module's __version__), or None."""
        for dist in self.distributions:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        try:
            if importlib.util.find_spec(self.module) is None:
                return None
            return str(getattr(importlib.import_module(self.module), "__version__", None) or "") or None
        except Exception:  # noqa: BLE001 - reported by unavailable()
            return None

    def unavailable(self) -> str | None:
        """Why the library cannot be used here (missing or broken install), or None when it imports."""
        return _import_problem(self.module, self.title, self.install_hint)

    def run_unavailable(self) -> str | None:
        """Why artifacts of this toolkit cannot run here (library missing, no GPU, not macOS), or None."""
        return self.unavailable() or self.host_check()

    def describe(self) -> dict[str, Any]:
        """{name, title, version, available, reason, runs_here, run_reason, install_hint} for `segedge doctor`."""
        why = self.unavailable()
        run_why = why or self.host_check()
        return {"name": self.name, "title": self.title, "version": self.version(), "available": why is None,
                "reason": why, "runs_here": run_why is None, "run_reason": run_why,
                "install_hint": self.install_hint, "purpose": self.purpose}


def _import_problem(module: str, title: str, hint: str) -> str | None:
    """Import `module` (a dictionary lookup once imported); a missing or broken install is one line with the hint."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            return f"{title} is not installed: {hint}"
        return f"{title} cannot be imported ({first_line(e)}): {hint}"
    except Exception as e:  # noqa: BLE001 - a broken install is as unusable as a missing one
        return f"{title} cannot be imported ({first_line(e)}): {hint}"
    return None


TOOLKITS: Registry[Toolkit] = Registry("toolkit", __name__)


def register_toolkit(toolkit: Toolkit) -> Toolkit:
    """Add a toolkit to the registry (each toolkit module calls this at import)."""
    return TOOLKITS.register(toolkit)


def get_toolkit(name: str) -> Toolkit:
    """A toolkit by name, or a one-line error with suggestions."""
    return TOOLKITS.get(name)


def list_toolkits() -> list[Toolkit]:
    """Every registered toolkit, by name."""
    return sorted(TOOLKITS.items(), key=lambda t: t.name)
