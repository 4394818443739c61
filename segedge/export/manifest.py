"""manifest.json: what an export folder holds, and the same keys embedded in each ONNX file's metadata_props.

One manifest per export folder. Its top level describes the model (name, family, weights, classes, input and output
contract, opset, tools); `targets` maps each target name (onnx, ort-int8, qdq, later trt-*, coreml-*, openvino*) to
its file, precision, sha256, quantization, calibration and verification. Every ONNX artifact carries the model keys
plus its own target entry in `metadata_props`, so a lone .onnx file is self-describing (`read_onnx_metadata`).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from pathlib import Path
from typing import Any, Mapping

from ..errors import SegedgeError
from ..io import write_json_atomic

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "segedge-export/1"
# Values stored as plain strings in metadata_props; every other key is JSON-encoded (numbers, lists, dicts).
STRING_KEYS = ("format", "segedge_version", "model", "family", "target", "precision", "exporter", "created", "file")
MODEL_KEYS = ("format", "segedge_version", "model", "family", "weights", "num_classes", "class_names", "input",
              "output", "opset", "exporter", "graph_sha256", "tool_versions", "created")
TARGET_KEYS = ("target", "file", "precision", "opset", "quantization", "calibration", "verification", "runtime")


def utc_now() -> str:
    """ISO-8601 UTC timestamp (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped an artifact (missing optional tools are left out)."""
    from importlib import metadata

    from .. import __version__

    out = {"segedge": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy", "opencv-python-headless",
                 "opencv-python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class ManifestBuilder:
    """Collects the model description and one entry per target, then writes manifest.json atomically."""

    def __init__(self, model: Mapping[str, Any]) -> None:
        missing = [k for k in MODEL_KEYS if k not in model]
        if missing:
            raise ValueError(f"manifest model description lacks {missing}")
        self.model = {k: model[k] for k in MODEL_KEYS}
        self.targets: dict[str, dict[str, Any]] = {}

    def add_target(self, name: str, entry: Mapping[str, Any]) -> None:
        """Record one target's entry (file, precision, sha256, quantization, calibration, verification…)."""
        self.targets[name] = dict(entry)

    def target_metadata(self, name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The keys embedded in a target's ONNX file: model description + this target's entry (no self-hash)."""
        meta = dict(self.model)
        meta["target"] = name
        for k in TARGET_KEYS[1:]:
            if k in entry:
                meta[k] = entry[k]
        return meta

    def as_dict(self) -> dict[str, Any]:
        """The manifest as a JSON-ready dict."""
        return {**self.model, "targets": self.targets}

    def write(self, folder: str | Path) -> Path:
        """Write `folder/manifest.json` atomically."""
        return write_json_atomic(Path(folder) / MANIFEST_NAME, self.as_dict())


def embed_metadata(model: Any, meta: Mapping[str, Any]) -> Any:
    """Replace an onnx.ModelProto's metadata_props with `meta` (strings as-is, everything else JSON)."""
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key = k
        entry.value = v if (k in STRING_KEYS and isinstance(v, str)) else json.dumps(v, default=str)
    return model


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of `embed_metadata` on a plain key → string mapping."""
    out: dict[str, Any] = {}
    for k, v in props.items():
        if k in STRING_KEYS:
            out[k] = v
            continue
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """segedge keys from an ONNX file's metadata_props (empty dict for a foreign ONNX), without loading weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends on a corrupt file
        raise SegedgeError(f"{Path(path).name} is not a readable ONNX file ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
                           "re-export it with `segedge export`") from None
    return decode_metadata({p.key: p.value for p in model.metadata_props})


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Load and sanity-check an export folder's manifest.json."""
    p = Path(folder) / MANIFEST_NAME
    if not p.is_file():
        raise SegedgeError(f"{folder} has no {MANIFEST_NAME}: pass an export folder made by `segedge export`, "
                           "an .onnx / .xml file or a checkpoint")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise SegedgeError(f"{p} is not valid JSON ({e}); re-run `segedge export`") from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        raise SegedgeError(f"{p} has no 'targets' map; it was not written by `segedge export` (re-run it)")
    return data
