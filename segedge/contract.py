"""The model contract every artifact carries, torch-free: typed, read and written in this one module.

A `ModelContract` says what the runtime must know to use a model: the input (size, layout, colour order, dtype,
mean/std, io mode, dynamic axes), the output (logits or labels, stride, dtype), the classes and where the model came
from. A `Manifest` is an export folder's `manifest.json`: the contract plus one `TargetEntry` per target (file,
precision, sha256, quantization, calibration, verification). The same keys travel inside each artifact through one
metadata codec (`encode_metadata` / `decode_metadata`): ONNX `metadata_props`, OpenVINO `rt_info` (section
"segedge") and CoreML user metadata all hold string → string maps, strings as-is and everything else as JSON, so a
lone file describes itself. Manifests written by segedge 0.2 (format "segedge-export/1") load unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import SegedgeError

MANIFEST_NAME = "manifest.json"
TUNED_TARGET = "cpu"  # the target `segedge tune` / `--target cpu` writes; picked when no target is named
MANIFEST_FORMAT = "segedge-export/1"
IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale, as mmseg
IMAGENET_STD = (58.395, 57.12, 57.375)
# Largest input side segedge accepts anywhere (export, training, evaluation): 4096 covers 4K frames; SegFormer's
# stage-1 attention grows with the square of the pixel count, so larger inputs are refused before allocating.
MAX_INPUT_SIDE = 4096
IO_MODES = ("float", "raw")
COLOR_ORDERS = ("BGR", "RGB")
OUTPUT_KINDS = ("logits", "labels")
# Values stored as plain strings in metadata maps; every other key is JSON-encoded (numbers, lists, dicts).
STRING_KEYS = ("format", "segedge_version", "model", "family", "target", "precision", "exporter", "created", "file")
# Target-entry keys that an artifact's own metadata carries next to the contract (`Manifest.target_metadata`).
TARGET_META_KEYS = ("target", "file", "precision", "quantization", "calibration", "verification", "runtime",
                    "inference_precision_hint", "openvino_version", "nncf_version")


def _bad(what: str) -> SegedgeError:
    return SegedgeError(f"model contract is invalid: {what}; re-export the model with `segedge export`")


# -- the contract ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DynamicAxes:
    """Which input dimensions may change at run time."""

    batch: bool = False
    height: bool = False
    width: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DynamicAxes":
        """From {'batch': bool, 'height': bool, 'width': bool} (missing keys False)."""
        d = d or {}
        return cls(bool(d.get("batch", False)), bool(d.get("height", False)), bool(d.get("width", False)))

    def to_dict(self) -> dict[str, bool]:
        """{'batch', 'height', 'width'}."""
        return {"batch": self.batch, "height": self.height, "width": self.width}


@dataclass(frozen=True)
class InputContract:
    """What the graph input expects and how a BGR frame is turned into it."""

    height: int
    width: int
    name: str = "input"
    layout: str = "NCHW"  # NCHW float (io float) | NHWC uint8 (io raw)
    color_order: str = "RGB"  # channel order the graph expects (raw io: the frame order baked in)
    dtype: str = "float32"
    mean: tuple[float, ...] = IMAGENET_MEAN  # RGB, 0-255 scale
    std: tuple[float, ...] = IMAGENET_STD
    io: str = "float"  # float: normalised float NCHW RGB; raw: uint8 NHWC frames, normalisation in the graph
    size_multiple: int | None = None
    dynamic: DynamicAxes = DynamicAxes()
    preprocess: str | None = None  # human-readable recipe

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) the model runs at."""
        return self.height, self.width

    def validate(self) -> "InputContract":
        """Raise one line when a value cannot be right (sizes, mean/std, io mode, colour order)."""
        if self.height <= 0 or self.width <= 0:
            raise _bad(f"input size {self.height}x{self.width} is not positive")
        if self.io not in IO_MODES:
            raise _bad(f"input io '{self.io}' is not one of {', '.join(IO_MODES)}")
        if self.color_order not in COLOR_ORDERS:
            raise _bad(f"colour order '{self.color_order}' is not BGR or RGB")
        if self.io == "raw" and (self.layout, self.dtype) != ("NHWC", "uint8"):
            raise _bad(f"input io 'raw' takes uint8 NHWC frames but the input is {self.dtype} {self.layout}")
        if self.io == "float" and (self.layout != "NCHW" or self.dtype == "uint8"):
            raise _bad(f"input io 'float' takes normalised NCHW floats but the input is {self.dtype} {self.layout}")
        for what, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
                raise _bad(f"input {what} must be three finite numbers (R, G, B), got {list(vals)}")
        if min(self.std) <= 0:
            raise _bad(f"input std must be positive, got {list(self.std)}")
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InputContract":
        """From the manifest's `input` map."""
        io = str(d.get("io", "float"))
        return cls(
            height=int(d["height"]), width=int(d["width"]), name=str(d.get("name", "frames" if io == "raw" else "input")),
            layout=str(d.get("layout", "NHWC" if io == "raw" else "NCHW")),
            color_order=str(d.get("color_order", "RGB")).upper(),
            dtype=str(d.get("dtype", "uint8" if io == "raw" else "float32")),
            mean=tuple(float(v) for v in d.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in d.get("std", IMAGENET_STD)), io=io,
            size_multiple=int(d["size_multiple"]) if d.get("size_multiple") is not None else None,
            dynamic=DynamicAxes.from_dict(d.get("dynamic")), preprocess=d.get("preprocess"),
        ).validate()

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `input` map (keys as segedge 0.2 wrote them)."""
        out: dict[str, Any] = {"name": self.name, "height": self.height, "width": self.width, "layout": self.layout,
                               "color_order": self.color_order, "dtype": self.dtype, "mean": list(self.mean),
                               "std": list(self.std), "io": self.io}
        if self.size_multiple is not None:
            out["size_multiple"] = self.size_multiple
        out["dynamic"] = self.dynamic.to_dict()
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess
        return out


@dataclass(frozen=True)
class OutputContract:
    """What the graph returns."""

    kind: str = "logits"  # logits: N×C×h×w float; labels: N×h×w uint8 (argmax in the graph)
    stride: int = 4  # input size / output size
    dtype: str = "float32"
    name: str = "logits"
    size: tuple[int, int] | None = None  # (h, w) for static graphs

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "OutputContract":
        """From the manifest's `output` map."""
        kind = str(d.get("kind", "logits"))
        if kind not in OUTPUT_KINDS:
            raise _bad(f"output kind '{kind}' is not logits or labels")
        stride = int(d.get("stride", 4))
        if stride < 1:
            raise _bad(f"output stride {stride} is not positive")
        size = d.get("size")
        if size and (not isinstance(size, (list, tuple)) or len(size) != 2):
            raise _bad(f"output size must be [height, width], got {size!r}")
        return cls(kind=kind, stride=stride, dtype=str(d.get("dtype", "uint8" if kind == "labels" else "float32")),
                   name=str(d.get("name", "labels" if kind == "labels" else "logits")),
                   size=(int(size[0]), int(size[1])) if size else None)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `output` map."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "stride": self.stride}
        if self.size is not None:
            out["size"] = list(self.size)
        out["dtype"] = self.dtype
        return out


@dataclass
class ModelContract:
    """The model-level contract: classes, input, output and provenance (the manifest's top level)."""

    num_classes: int
    class_names: list[str]
    input: InputContract
    output: OutputContract = OutputContract()
    model: str | None = None
    family: str | None = None
    weights: dict[str, Any] | None = None
    opset: int | None = None
    exporter: str | None = None
    graph_sha256: str | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    created: str | None = None
    format: str = MANIFEST_FORMAT
    segedge_version: str | None = None
    # {"form": "inference" | "as-trained", "folded": [module paths]}: which modules were traced in their exact
    # inference form (segedge.models.deploy_form); None in folders written before segedge recorded it (as trained)
    graph_form: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this segedge does not know, kept on round trips

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise _bad(f"num_classes {self.num_classes} is not positive")
        if len(self.class_names) != self.num_classes:
            raise _bad(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.output.kind == "labels" and self.num_classes > 256:
            raise _bad(f"a labels output is uint8 but the model has {self.num_classes} classes")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelContract":
        """From a manifest / metadata map; a missing or malformed key is one line naming it."""
        if not isinstance(d, Mapping):
            raise _bad(f"expected a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        try:
            n = int(d["num_classes"])
            names = d.get("class_names") or [f"class_{i}" for i in range(n)]
            return cls(
                num_classes=n, class_names=[str(c) for c in names],
                input=InputContract.from_dict(d["input"]), output=OutputContract.from_dict(d.get("output") or {}),
                model=d.get("model"), family=d.get("family"), weights=d.get("weights"),
                opset=int(d["opset"]) if d.get("opset") is not None else None, exporter=d.get("exporter"),
                graph_sha256=d.get("graph_sha256"), tool_versions=dict(d.get("tool_versions") or {}),
                created=d.get("created"), format=str(d.get("format", MANIFEST_FORMAT)),
                segedge_version=d.get("segedge_version"), graph_form=d.get("graph_form"),
                extra={k: v for k, v in d.items() if k not in known and k != "targets" and k not in TARGET_META_KEYS},
            )
        except KeyError as e:
            raise _bad(f"key {e} is missing") from e
        except (TypeError, ValueError, AttributeError, IndexError) as e:
            raise _bad(f"{type(e).__name__}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The manifest's top level (without `targets`), keys in segedge 0.2's order."""
        out: dict[str, Any] = {"format": self.format, "segedge_version": self.segedge_version, "model": self.model,
                               "family": self.family, "weights": self.weights, "num_classes": self.num_classes,
                               "class_names": list(self.class_names), "input": self.input.to_dict(),
                               "output": self.output.to_dict(), "opset": self.opset, "exporter": self.exporter,
                               "graph_sha256": self.graph_sha256, "tool_versions": dict(self.tool_versions),
                               "created": self.created}
        if self.graph_form is not None:
            out["graph_form"] = dict(self.graph_form)
        out.update(self.extra)
        return out


# -- targets and the manifest ---------------------------------------------------------------------------------------
@dataclass
class TargetEntry:
    """One target of an export folder: its file and what was done to make it. Target-specific keys live in
    `extra` (e.g. OpenVINO's `inference_precision_hint`) and are read with `get`."""

    file: str
    precision: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    opset: int | None = None
    runtime: str | None = None
    quantization: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    companion_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. OpenVINO's .bin
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TargetEntry":
        """From a manifest `targets` value; the file name must stay inside the export folder."""
        if not isinstance(d, Mapping) or not isinstance(d.get("file"), str) or not d["file"]:
            raise _bad("a target entry has no 'file'")
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: d[k] for k in known if k in d}
        companions = d.get("companion_files") or {}
        if not isinstance(companions, Mapping) or not all(isinstance(v, Mapping) for v in companions.values()):
            raise _bad(f"target file {d['file']}: 'companion_files' must map file names to {{size_bytes, sha256}}")
        for what, v in (("size_bytes", d.get("size_bytes")),
                        *((f"{c} size_bytes", m.get("size_bytes")) for c, m in companions.items())):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise _bad(f"target file {d['file']}: {what} must be a whole number of bytes, got {v!r}")
        for what, v in (("sha256", d.get("sha256")),
                        *((f"{c} sha256", m.get("sha256")) for c, m in companions.items())):
            if v is not None and not isinstance(v, str):
                raise _bad(f"target file {d['file']}: {what} must be a hex string, got {v!r}")
        kw["companion_files"] = dict(companions)
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry (None-valued fields left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("extra", "companion_files")}
        out = {k: v for k, v in out.items() if v is not None}
        if self.companion_files:
            out["companion_files"] = self.companion_files
        out.update(self.extra)
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """A field or a target-specific key."""
        if key in {f.name for f in fields(self)} - {"extra"}:
            value = getattr(self, key)
            return default if value is None else value
        return self.extra.get(key, default)

    def files(self) -> list[str]:
        """The artifact and its companions, as names inside the export folder."""
        return [self.file, *self.companion_files]


@dataclass
class Manifest:
    """manifest.json: the model contract and one entry per target."""

    contract: ModelContract
    targets: dict[str, TargetEntry] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = MANIFEST_NAME) -> "Manifest":
        """From parsed JSON; a missing `targets` map or an invalid contract is one line."""
        if not isinstance(d, Mapping) or not isinstance(d.get("targets"), Mapping):
            raise SegedgeError(f"{where} has no 'targets' map; it was not written by `segedge export` (re-run it)")
        return cls(ModelContract.from_dict(d), {str(k): TargetEntry.from_dict(v) for k, v in d["targets"].items()})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready manifest."""
        return {**self.contract.to_dict(), "targets": {k: v.to_dict() for k, v in self.targets.items()}}

    @classmethod
    def read(cls, folder: str | Path) -> "Manifest":
        """Load and check `folder/manifest.json`."""
        p = Path(folder) / MANIFEST_NAME
        if not p.is_file():
            raise SegedgeError(f"{folder} has no {MANIFEST_NAME}: pass an export folder made by `segedge export`, "
                               "an .onnx / .xml file or a checkpoint")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise SegedgeError(f"{p} is not valid JSON ({e}); re-run `segedge export`") from e
        return cls.from_dict(data, str(p))

    def write(self, folder: str | Path) -> Path:
        """Write `folder/manifest.json` atomically."""
        from .io import write_json_atomic

        return write_json_atomic(Path(folder) / MANIFEST_NAME, self.to_dict())

    def add_target(self, name: str, entry: TargetEntry | Mapping[str, Any]) -> TargetEntry:
        """Record (or replace) one target's entry."""
        e = entry if isinstance(entry, TargetEntry) else TargetEntry.from_dict(entry)
        self.targets[name] = e
        return e

    def target_metadata(self, name: str, entry: TargetEntry | Mapping[str, Any]) -> dict[str, Any]:
        """The keys embedded in a target's own file: the contract + this target's entry (no self-hash)."""
        e = entry.to_dict() if isinstance(entry, TargetEntry) else dict(entry)
        meta = self.contract.to_dict()
        meta["target"] = name
        for k in ("opset", *TARGET_META_KEYS):
            if k in e:
                meta[k] = e[k]
        return meta

    def choose(self, target: str | None, where: str | Path = "the export folder") -> tuple[str, TargetEntry]:
        """(name, entry) of `target`, or of the only target; a one-line error otherwise."""
        if not self.targets:
            raise SegedgeError(f"{where} lists no targets in its {MANIFEST_NAME}; re-run `segedge export`")
        if target is None:
            if len(self.targets) == 1:
                return next(iter(self.targets.items()))
            if TUNED_TARGET in self.targets:  # `--target cpu` measured the fastest: the folder's default
                return TUNED_TARGET, self.targets[TUNED_TARGET]
            raise SegedgeError(f"{where} holds several targets ({', '.join(self.targets)}); choose one with "
                               f"target=… (--target), e.g. target='{next(iter(self.targets))}'")
        if target not in self.targets:
            raise SegedgeError(f"target '{target}' is not in {where}: it holds {', '.join(self.targets)}; "
                               f"re-export with --target {target} or pick one of those")
        return target, self.targets[target]

    def entry_for_file(self, file_name: str) -> tuple[str, TargetEntry] | None:
        """(target, entry) whose artifact is `file_name`, if any."""
        for name, entry in self.targets.items():
            if entry.file == file_name:
                return name, entry
        return None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """`folder/manifest.json` checked against the contract, as a plain dict (for reports and comparisons)."""
    return Manifest.read(folder).to_dict()


# -- metadata codec: ONNX metadata_props, OpenVINO rt_info, CoreML user metadata ------------------------------------
def encode_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """Manifest-style keys → string map: strings as-is for STRING_KEYS, JSON for everything else."""
    return {str(k): v if (k in STRING_KEYS and isinstance(v, str)) else json.dumps(v, default=str)
            for k, v in meta.items()}


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Inverse of `encode_metadata`."""
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


def describes_model(meta: Mapping[str, Any]) -> bool:
    """Whether decoded metadata carries a contract (foreign files carry none)."""
    return "input" in meta and "output" in meta and "num_classes" in meta


def embed_onnx_metadata(model: Any, meta: Mapping[str, Any]) -> Any:
    """Replace an onnx.ModelProto's metadata_props with `meta` (encoded)."""
    del model.metadata_props[:]
    for k, v in encode_metadata(meta).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """segedge keys from an ONNX file's metadata_props (empty for a foreign ONNX), without loading weights."""
    import onnx

    from .errors import first_line

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends on a corrupt file
        raise SegedgeError(f"{Path(path).name} is not a readable ONNX file ({first_line(e, 120)}); re-export it "
                           "with `segedge export`") from e
    return decode_metadata({p.key: p.value for p in model.metadata_props})


RT_INFO_SECTION = "segedge"  # OpenVINO rt_info section holding the contract


def write_rt_info(model: Any, meta: Mapping[str, Any]) -> Any:
    """Store `meta` (encoded) in an ov.Model's rt_info under section "segedge"."""
    for k, v in encode_metadata(meta).items():
        model.set_rt_info(v, [RT_INFO_SECTION, k])
    return model


def read_rt_info(model: Any) -> dict[str, Any]:
    """The segedge keys of an ov.Model's rt_info (empty for a foreign or unreadable IR)."""
    try:
        if not model.has_rt_info([RT_INFO_SECTION]):
            return {}
        section = model.get_rt_info([RT_INFO_SECTION]).astype(dict)
        return decode_metadata({str(k): v.astype(str) if hasattr(v, "astype") else str(v)
                                for k, v in section.items()})
    except Exception:  # noqa: BLE001 - unreadable rt_info: a manifest next to the file can still describe it
        return {}


# -- provenance -----------------------------------------------------------------------------------------------------
def utc_now() -> str:
    """ISO-8601 UTC timestamp (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shaped an artifact (missing optional tools are left out)."""
    from importlib import metadata

    from . import __version__

    out = {"segedge": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy", "opencv-python-headless",
                 "opencv-python"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out
