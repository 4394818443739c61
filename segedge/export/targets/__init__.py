"""Export targets: a registry of name → builder, one module per target (polygraphy/timm style).

A target module calls `register_target(TargetSpec(...))` at import; every module in this package is imported on
first use, so adding a target (trt-fp16, trt-int8, coreml-fp16/int8, openvino, openvino-int8, …) is one new file
here and nothing else. A builder receives the `ExportContext` (the verified FP32 ONNX, the calibration table on
demand, options, verification helpers, the staging folder) and returns a `TargetArtifact`: the staged file and its
manifest entry. The pipeline commits staged files only once every requested target has succeeded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...errors import SegedgeError
from ...plugins import import_plugins
from .base import ExportContext, TargetArtifact

__all__ = ["ExportContext", "TargetArtifact", "TargetSpec", "get_target", "list_targets", "register_target",
           "resolve_targets"]


@dataclass(frozen=True)
class TargetSpec:
    """One export target."""

    name: str
    build: Callable[[ExportContext], TargetArtifact]
    description: str
    precision: str  # fp32 | fp16 | int8 | mixed
    needs_calibration: bool = False
    companions: tuple[str, ...] = ()  # targets always written alongside this one
    requires: Callable[[], str | None] = field(default=lambda: None)  # → reason it cannot run here, or None


_TARGETS: dict[str, TargetSpec] = {}
_loaded = False


def register_target(spec: TargetSpec) -> TargetSpec:
    """Add a target to the registry (called by each target module at import)."""
    _TARGETS[spec.name] = spec
    return spec


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import_plugins(__name__, __path__)


def list_targets() -> list[TargetSpec]:
    """Every registered target."""
    _load_all()
    return list(_TARGETS.values())


def get_target(name: str) -> TargetSpec:
    """A target by name (case-insensitive), or a one-line error listing the valid names."""
    _load_all()
    key = name.strip().lower()
    if key not in _TARGETS:
        raise SegedgeError(f"unknown export target '{name}': choose from {', '.join(sorted(_TARGETS))}")
    return _TARGETS[key]


def resolve_targets(names: Any) -> list[TargetSpec]:
    """'onnx,ort-int8' or a list → specs in build order: onnx (the FP32 spine) first, companions after their target."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    wanted = [n.strip() for n in names if n and n.strip()]
    if not wanted:
        raise SegedgeError("no export target given: pass --target onnx (or e.g. onnx,ort-int8)")
    out: list[TargetSpec] = [get_target("onnx")]
    for n in wanted:
        spec = get_target(n)
        for s in (spec, *(get_target(c) for c in spec.companions)):
            if s not in out:
                why = s.requires()
                if why:
                    raise SegedgeError(f"target '{s.name}' cannot be built here: {why}")
                out.append(s)
    return out
