"""Export targets: a registry of name → builder, one module per target (polygraphy/timm style).

A target module calls `register_target(TargetSpec(...))` at import; every module in this package (and external
plug-ins, see segedge.plugins) is imported on first use, so adding a target is one new file here and nothing else:
its toolkits (`segedge.toolkits`) say whether it can be built here, its `options` (e.g. OpenVINO's precision hint,
ONNX Runtime's INT8 scope) become `segedge export` flags, and the `--target` help is generated from the registry.
A builder receives the `ExportContext` (the verified FP32 ONNX, the calibration table on demand, options,
verification helpers, the staging folder) and returns a `TargetArtifact`: the staged file and its manifest entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ...errors import SegedgeError
from ...plugins import Registry
from .base import ExportContext, TargetArtifact

__all__ = ["TARGETS", "ExportContext", "TargetArtifact", "TargetOption", "TargetSpec", "get_target", "list_targets",
           "option_owners", "register_target", "resolve_targets", "target_options", "targets_help"]


@dataclass(frozen=True)
class TargetOption:
    """An option that only some targets take; it becomes `segedge export --<flag>` and is refused for others."""

    name: str  # key in ExportOptions.target_options, e.g. "ov_precision"
    flag: str  # CLI flag, e.g. "--ov-precision"
    default: Any
    help: str
    parse: Callable[[Any], Any] = str  # normalise + validate; raises SegedgeError with one line


@dataclass(frozen=True)
class TargetSpec:
    """One export target."""

    name: str
    build: Callable[[ExportContext], TargetArtifact]
    description: str
    precision: str  # fp32 | fp16 | int8 | mixed
    needs_calibration: bool = False
    companions: tuple[str, ...] = ()  # targets always written alongside this one
    toolkits: tuple[str, ...] = ()  # segedge.toolkits names needed to build it
    backend: str | None = None  # runtime backend that runs its artifact
    options: tuple[TargetOption, ...] = ()
    requires: Callable[[], str | None] = field(default=lambda: None)  # extra reason it cannot be built, or None

    def unavailable(self) -> str | None:
        """Why this target cannot be built here (a toolkit missing, …), or None."""
        from ...toolkits import get_toolkit

        for name in dict.fromkeys((*EXPORT_TOOLKITS, *self.toolkits)):
            why = get_toolkit(name).unavailable()
            if why:
                return why
        return self.requires()

    def run_unavailable(self) -> str | None:
        """Why its artifact cannot run here (backend missing, no GPU, not macOS), or None."""
        if self.backend is None:
            return "no runtime backend runs this target"
        from ...runtime.backends import BACKENDS

        if self.backend not in BACKENDS:
            return f"backend '{self.backend}' is not registered"
        return BACKENDS.get(self.backend).unavailable()


# Every target is built from the FP32 ONNX that torch.onnx exports and onnxsim simplifies.
EXPORT_TOOLKITS = ("torch", "onnx", "onnxsim")
TARGETS: Registry[TargetSpec] = Registry("export target", __name__)


def register_target(spec: TargetSpec) -> TargetSpec:
    """Add a target to the registry (called by each target module at import)."""
    return TARGETS.register(spec)


def list_targets() -> list[TargetSpec]:
    """Every registered target."""
    return TARGETS.items()


def get_target(name: str) -> TargetSpec:
    """A target by name (case-insensitive), or a one-line error with suggestions."""
    return TARGETS.get(name)


def targets_help() -> str:
    """The `--target` help text: every registered target with what it is."""
    return "Comma-separated targets: " + "; ".join(f"{t.name} ({t.description})" for t in list_targets()) + "."


def target_options() -> list[TargetOption]:
    """Every option declared by a registered target, once each (two targets may share one)."""
    seen: dict[str, TargetOption] = {}
    for t in list_targets():
        for o in t.options:
            seen.setdefault(o.name, o)
    return list(seen.values())


def option_owners(name: str) -> list[str]:
    """Targets that take the option `name`."""
    return [t.name for t in list_targets() if any(o.name == name for o in t.options)]


def resolve_option_values(specs: Iterable[TargetSpec], given: dict[str, Any]) -> dict[str, Any]:
    """Parsed values for every option of `specs` (defaults filled in); an option none of them takes is refused."""
    specs = list(specs)
    known = {o.name: o for t in specs for o in t.options}
    for name in given:
        if name not in known:
            owners = option_owners(name)
            flag = next((o.flag for o in target_options() if o.name == name), name)
            if not owners:
                raise SegedgeError(f"unknown target option '{name}'")
            raise SegedgeError(f"{flag} applies to --target {' or '.join(owners)} only; add that target or drop "
                               f"{flag}")
    return {name: o.parse(given[name]) if given.get(name) is not None else o.parse(o.default)
            for name, o in known.items()}


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
                why = s.unavailable()
                if why:
                    raise SegedgeError(f"target '{s.name}' cannot be built here: {why}")
                out.append(s)
    return out
