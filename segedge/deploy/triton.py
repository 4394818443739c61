"""A Triton Inference Server model-repository entry for a segedge export: `<repo>/<name>/config.pbtxt` and
`<repo>/<name>/1/model.<ext>` (a hard link to the artifact, or a copy across file systems).

Backends and the file names Triton looks for by default (Triton's model-repository and model-configuration docs;
the OpenVINO backend's README, github.com/triton-inference-server/openvino_backend): ONNX → platform
`onnxruntime_onnx`, `model.onnx`; OpenVINO IR → backend `openvino`, `model.xml` with its weights beside it as
`model.bin`; TensorRT engine → platform `tensorrt_plan`, `model.plan`, which only loads on the GPU model and
TensorRT version it was built with. Inputs and outputs come from the contract: float32 N×3×H×W in / float32
N×C×h×w logits out, or (`--io raw`) uint8 N×H×W×3 frames in / uint8 N×h×w labels out. A dynamic-batch export
gets `max_batch_size` and dims without the batch; a fixed-batch one `max_batch_size: 0` and its full shape.
The text is checked by parsing it with Triton's own protobuf (tritonclient.grpc.model_config_pb2) when that is
installed (`segedge[dev]`), so a typo cannot reach the server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..contract import ModelContract
from ..errors import SegedgeError
from ..io import ensure_writable_dir, write_text_atomic
from .source import ONNX, OPENVINO, TENSORRT, DeployArtifact, labels_text, link_or_copy, resolve_artifact

PLATFORMS = {ONNX: ("platform", "onnxruntime_onnx", "model.onnx"), OPENVINO: ("backend", "openvino", "model.xml"),
             TENSORRT: ("platform", "tensorrt_plan", "model.plan")}
KINDS = ("auto", "cpu", "gpu")
DATA_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}
DEFAULT_MAX_BATCH = 8
VERSION = "1"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_MODEL_FILES = ("model.onnx", "model.xml", "model.bin", "model.plan")


@dataclass
class TritonResult:
    """What `write_triton` wrote."""

    config: Path
    model_dir: Path
    files: list[Path]
    text: str


def tensor_dims(contract: ModelContract, batched: bool) -> tuple[list[int], list[int]]:
    """(input dims, output dims) as Triton wants them: -1 for dynamic sizes, batch left out when `batched`."""
    inp, out = contract.input, contract.output
    h = -1 if inp.dynamic.height else inp.height
    w = -1 if inp.dynamic.width else inp.width
    in_dims = [h, w, 3] if inp.io == "raw" else [3, h, w]
    if out.size is not None and h > 0 and w > 0:
        oh, ow = out.size
    else:
        oh = -1 if h < 0 else h // out.stride
        ow = -1 if w < 0 else w // out.stride
    out_dims = [oh, ow] if out.kind == "labels" else [contract.num_classes, oh, ow]
    if not batched:
        in_dims, out_dims = [1, *in_dims], [1, *out_dims]
    return in_dims, out_dims


def instance_kind(art: DeployArtifact, kind: str) -> str:
    """KIND_GPU / KIND_CPU / KIND_AUTO: TensorRT needs the GPU, OpenVINO and ORT's u8s8 INT8 run on the CPU."""
    kind = kind.lower()
    if kind not in KINDS:
        raise SegedgeError(f"--kind must be one of {', '.join(KINDS)}, got '{kind}'")
    if art.kind == TENSORRT:
        if kind == "cpu":
            raise SegedgeError("a TensorRT plan runs on the GPU only: drop --kind cpu or deploy --target onnx")
        return "KIND_GPU"
    if kind == "auto":
        return "KIND_CPU" if art.kind == OPENVINO or art.target == "ort-int8" else "KIND_AUTO"
    if kind == "gpu" and art.kind == OPENVINO:
        raise SegedgeError("Triton's OpenVINO backend runs on the CPU: drop --kind gpu or deploy --target onnx")
    return f"KIND_{kind.upper()}"


def _dims(d: list[int]) -> str:
    return "[ " + ", ".join(str(v) for v in d) + " ]"


def render_config(art: DeployArtifact, name: str, instances: int = 1, kind: str = "auto",
                  max_batch_size: int | None = None) -> str:
    """config.pbtxt text for `art` served as model `name`."""
    c, inp, out = art.contract, art.contract.input, art.contract.output
    batched = inp.dynamic.batch
    mbs = (DEFAULT_MAX_BATCH if max_batch_size is None else max_batch_size) if batched else 0
    if max_batch_size is not None and not batched:
        raise SegedgeError("--max-batch-size needs a dynamic-batch export (re-export with --dynamic-batch); this one "
                           "has a fixed batch of 1")
    if batched and mbs < 1:
        raise SegedgeError(f"--max-batch-size must be at least 1, got {mbs}")
    field, value, _ = PLATFORMS[art.kind]
    in_dims, out_dims = tensor_dims(c, batched)
    prep = (f"uint8 {inp.color_order} frames resized to HxW, normalised in the graph" if inp.io == "raw" else
            f"resize to HxW (bilinear), {inp.color_order}, (x - mean) / std, mean {list(inp.mean)}, "
            f"std {list(inp.std)}")
    lines = [
        f"# Triton model for segedge {c.model or '?'} ({c.family or '?'}), export target {art.target} "
        f"({art.precision}), written by `segedge deploy triton` from {art.folder}",
        f"# input {inp.name}: {prep}; output {out.name}: {out.kind} at 1/{out.stride} of the input size; "
        f"classes in labels.txt ({c.num_classes})",
    ]
    if art.kind == TENSORRT:
        built = (art.engine or {}).get("built_on") or {}
        where = ", ".join(f"{k} {v}" for k, v in built.items()) if isinstance(built, dict) else str(built)
        lines.append("# The plan must be built on the serving GPU: it loads only on the GPU model and TensorRT version "
                     f"it was built with{f' (this one: {where})' if where else ''}; rebuild it there with "
                     "`segedge engine build` otherwise.")
    lines += [
        f'name: "{name}"',
        f'{field}: "{value}"',
        f"max_batch_size: {mbs}",
        "input [",
        "  {",
        f'    name: "{inp.name}"',
        f"    data_type: {DATA_TYPES[inp.dtype]}",
        f"    dims: {_dims(in_dims)}",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{out.name}"',
        f"    data_type: {DATA_TYPES[out.dtype]}",
        f"    dims: {_dims(out_dims)}",
        "  }",
        "]",
        "instance_group [",
        "  {",
        f"    count: {instances}",
        f"    kind: {instance_kind(art, kind)}",
        "  }",
        "]",
    ]
    return "\n".join(lines) + "\n"


def _check_inputs(art: DeployArtifact, name: str, instances: int) -> None:
    if not _NAME_RE.match(name):
        raise SegedgeError(f"model name '{name}' may hold only letters, digits, '_', '.' and '-', and not start with "
                           "'.' or '-' (it is a folder name in the repository); pass another --name")
    if instances < 1:
        raise SegedgeError(f"--instances must be at least 1, got {instances}")
    for what, dtype in (("input", art.contract.input.dtype), ("output", art.contract.output.dtype)):
        if dtype not in DATA_TYPES:
            raise SegedgeError(f"the model's {what} is {dtype}, which segedge cannot map to a Triton data type; "
                               "re-export it")
    art.require_built("a Triton tensorrt_plan model")


def validate_config(text: str) -> object:
    """Parse config.pbtxt text with Triton's ModelConfig protobuf; one line naming the problem otherwise."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise SegedgeError(f"generated config.pbtxt does not parse as a Triton ModelConfig ({e}); report this") from e


def _validate_if_possible(text: str) -> None:
    """Validate with Triton's protobuf when tritonclient is installed (it is optional at run time)."""
    import importlib.util

    if importlib.util.find_spec("tritonclient") is not None:
        validate_config(text)


def _place_model(art: DeployArtifact, version_dir: Path) -> list[Path]:
    """Link or copy the artifact (and an IR's .bin) under the names Triton loads by default."""
    main = PLATFORMS[art.kind][2]
    wanted = [(art.path, version_dir / main)]
    if art.kind == OPENVINO:
        if not art.companions:
            raise SegedgeError(f"target {art.target}'s weights (.bin) are not listed next to {art.path.name}; "
                               "re-export the target")
        wanted.append((art.companions[0], version_dir / "model.bin"))
    keep = {dst.name for _, dst in wanted}
    for stale in _MODEL_FILES:  # a previous deploy of another backend under this name
        p = version_dir / stale
        if stale not in keep and p.is_file():
            p.unlink()
    return [link_or_copy(src, dst) for src, dst in wanted]


def write_triton(folder: str | Path, repo: str | Path, target: str | None = None, name: str | None = None,
                 instances: int = 1, kind: str = "auto", max_batch_size: int | None = None) -> TritonResult:
    """Write `repo/name/config.pbtxt`, `repo/name/labels.txt` and `repo/name/1/model.<ext>` for `target` of `folder`."""
    art = resolve_artifact(folder, target)
    name = name or f"{art.contract.model or 'segedge'}-{art.target}".replace("_", "-")
    _check_inputs(art, name, instances)
    text = render_config(art, name, instances, kind, max_batch_size)
    _validate_if_possible(text)
    model_dir = ensure_writable_dir(Path(repo) / name, "the Triton model repository")
    files = _place_model(art, model_dir / VERSION)
    labels = write_text_atomic(model_dir / "labels.txt", labels_text(art.contract))
    config = write_text_atomic(model_dir / "config.pbtxt", text)  # last: Triton loads a model once it has one
    return TritonResult(config, model_dir, [*files, labels], text)


__all__ = ["DATA_TYPES", "PLATFORMS", "TritonResult", "render_config", "tensor_dims", "validate_config",
           "write_triton"]
