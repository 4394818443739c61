"""The checkpoint an existing export folder was made from, for the analyses that need the PyTorch model again
(`segedge quantize sensitivity --target coreml-w8a8`): the recorded path, or the embedded demo checkpoint with the
same sha256, or `--weights`. (`segedge tune` needs none of this: segedge.tune.folder works from the folder's ONNX.)
"""

from __future__ import annotations

from pathlib import Path

from ..contract import Manifest
from ..errors import SegedgeError


def export_weights(manifest: Manifest, given: str | None = None) -> str | None:
    """The checkpoint to re-export from: --weights, the recorded path, or the embedded demo with the same sha256."""
    if given:
        return given
    w = manifest.contract.weights or {}
    if w.get("embedded"):
        return None
    path = w.get("path")
    if path and Path(path).is_file():
        return str(path)
    from ..models import default_weights
    from ..io import sha256_file

    demo = default_weights(manifest.contract.model)
    if demo is not None and w.get("sha256") and sha256_file(demo) == w.get("sha256"):
        return str(demo)
    raise SegedgeError(f"the folder was exported from {path or 'an unrecorded checkpoint'}, which is not here; pass "
                       "--weights PATH (the same checkpoint: the graph must come out identical)")


__all__ = ["export_weights"]
