"""Which file of an export folder a serving config points at, and why a target cannot be served (one line each).

A target's artifact is one of three kinds, told by its file name: an ONNX graph (`onnx`, `ort-int8`, `qdq`, and a
TensorRT target whose engine is still pending: its `file` is then the flavour ONNX), an OpenVINO IR (`.xml` + its
`.bin` companion) or a TensorRT engine (`model.trt-*.engine`, after `segedge engine build` on the device).
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import Manifest, ModelContract, TargetEntry
from ..engine.bundle import BUILT, build_command, engine_block
from ..errors import SegedgeError
from ..io import atomic_path

ONNX, OPENVINO, TENSORRT = "onnx", "openvino", "tensorrt"
_KINDS = {".onnx": ONNX, ".xml": OPENVINO, ".engine": TENSORRT, ".plan": TENSORRT}


@dataclass
class DeployArtifact:
    """One target of an export folder, resolved to files that exist."""

    folder: Path
    manifest: Manifest
    target: str
    entry: TargetEntry
    kind: str  # onnx | openvino | tensorrt
    path: Path  # the artifact itself (for a pending TensorRT target: its flavour ONNX)
    companions: list[Path] = field(default_factory=list)
    engine: dict[str, Any] | None = None  # a TensorRT target's `engine` block

    @property
    def contract(self) -> ModelContract:
        """The export's model contract."""
        return self.manifest.contract

    @property
    def precision(self) -> str:
        """fp32 | fp16 | int8 | mixed (fp32 when the entry does not say)."""
        return str(self.entry.precision or "fp32").lower()

    @property
    def pending(self) -> bool:
        """Whether this is a TensorRT target whose engine has not been built on the device yet."""
        return self.engine is not None and self.engine.get("status") != BUILT

    def onnx_graph(self) -> Path | None:
        """The ONNX graph this artifact is (or, for a TensorRT engine, was built from), when it is here."""
        if self.path.suffix == ".onnx":
            return self.path
        name = (self.engine or {}).get("onnx")
        if isinstance(name, str) and (self.folder / name).is_file():
            return self.folder / name
        return None

    def require_built(self, what: str) -> None:
        """Refuse (one line) a TensorRT target whose engine is still pending: build it first or use the ONNX."""
        if self.pending:
            cmd = (self.engine or {}).get("build_command") or build_command(self.folder, self.target)
            raise SegedgeError(f"{what} needs target {self.target}'s TensorRT engine, which is not built yet: build "
                               f"it on the serving GPU first (`{cmd}`), or deploy --target onnx instead")


def _kind_of(name: str, target: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix not in _KINDS:
        raise SegedgeError(f"target {target}'s file {name} is neither ONNX, OpenVINO IR nor a TensorRT engine; "
                           "segedge deploy serves those only")
    return _KINDS[suffix]


def _existing(folder: Path, name: str, target: str) -> Path:
    p = folder / name
    if not p.is_file():
        raise SegedgeError(f"{name} (target {target}) is missing from {folder}: re-run `segedge export --target "
                           f"{target}` into that folder")
    return p


def resolve_artifact(folder: str | Path, target: str | None) -> DeployArtifact:
    """The export folder's `target` (or its only target) with its files checked; a one-line error otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegedgeError(f"export folder {folder} does not exist: pass a folder written by `segedge export`")
    manifest = Manifest.read(folder)
    name, entry = manifest.choose(target, folder)
    block = engine_block(entry.to_dict())
    path = _existing(folder, entry.file, name)
    companions = [_existing(folder, c, name) for c in entry.companion_files if Path(c).suffix == ".bin"]
    return DeployArtifact(folder, manifest, name, entry, _kind_of(entry.file, name), path, companions, block)


def labels_text(contract: ModelContract) -> str:
    """One class name per line, in class-index order (whitespace inside a name collapsed to single spaces)."""
    return "".join(" ".join(n.split()) + "\n" for n in contract.class_names)


def link_or_copy(src: Path, dst: Path) -> Path:
    """Place `src` at `dst` atomically: a hard link when both are on one file system, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() and os.path.samefile(src, dst):  # already linked (rename onto the same inode is a no-op)
        return dst
    tmp = dst.parent / f".{dst.name}.{secrets.token_hex(4)}.tmp"
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        return dst
    except OSError:  # another file system, or links not allowed: copy instead
        if tmp.exists():
            tmp.unlink()
    with atomic_path(dst) as t:
        shutil.copyfile(src, t)
    return dst


__all__ = ["DeployArtifact", "ONNX", "OPENVINO", "TENSORRT", "labels_text", "link_or_copy", "resolve_artifact"]
