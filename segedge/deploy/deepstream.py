"""A DeepStream `nvinfer` config (the `[property]` INI gst-nvinfer reads) for a segedge export, with its labels file
and the graph nvinfer builds its TensorRT engine from.

Key names and values follow NVIDIA's "Gst-nvinfer" configuration-file specification
(https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html; the key strings are the
CONFIG_GROUP_INFER_* macros of gstnvinfer_property_parser.h): `network-type` 2 = segmentation; `network-mode`
0 FP32 / 1 INT8 / 2 FP16; `model-color-format` 0 RGB / 1 BGR; `infer-dims` C;H;W; `segmentation-output-order`
0 NCHW; `scaling-filter` 1 = NvBufSurfTransformInter_Bilinear (segedge resizes with cv2.INTER_LINEAR);
`maintain-aspect-ratio` 0 (segedge resizes without letterboxing); relative paths are relative to the config file.
nvinfer pre-processes every frame as y = net-scale-factor × (x − offsets[c]) on 0-255 pixels, one scalar scale for
all channels: `fold.py` makes the graph fit that and proves it, and the figures go into the config's comments and
`deepstream_check.json` next to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SegedgeError
from ..io import ensure_writable_dir, sha256_file, write_bytes_atomic, write_json_atomic, write_text_atomic
from .fold import DeepStreamGraph, build_deepstream_graph, prove_equivalence
from .source import OPENVINO, DeployArtifact, labels_text, resolve_artifact

SPEC_URL = "https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html"
CONFIG_NAME = "config_infer_segedge.txt"
LABELS_NAME = "labels.txt"
CHECK_NAME = "deepstream_check.json"
NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2, "mixed": 2}  # mixed: FP16 engine with FP32 islands
COLOR_FORMATS = {"RGB": 0, "BGR": 1}
DEFAULT_CHECK_FRAMES = 8


@dataclass
class DeepStreamResult:
    """What `write_deepstream` wrote and the equivalence figures it proved."""

    config: Path
    onnx: Path
    labels: Path
    check_file: Path
    check: dict[str, Any]


def _source_graph(art: DeployArtifact) -> Path:
    """The ONNX nvinfer should build from: the target's ONNX, or the graph its TensorRT engine came from."""
    if art.kind == OPENVINO:
        raise SegedgeError(f"target {art.target} is an OpenVINO IR; DeepStream's nvinfer runs TensorRT engines built "
                           "from ONNX: deploy --target onnx (or a trt-* target) instead")
    graph = art.onnx_graph()
    if graph is None:
        raise SegedgeError(f"target {art.target}'s engine was built from an ONNX that is not in {art.folder}; "
                           "nvinfer needs that graph to fold the normalisation into: deploy --target onnx instead")
    return graph


def network_mode(precision: str, target: str) -> int:
    """nvinfer's `network-mode` for a target's precision (0 FP32, 1 INT8, 2 FP16)."""
    if precision not in NETWORK_MODES:
        raise SegedgeError(f"target {target} has precision '{precision}', which nvinfer has no network-mode for "
                           f"(it takes {', '.join(NETWORK_MODES)}); deploy --target onnx instead")
    return NETWORK_MODES[precision]


def _fmt(v: float) -> str:
    return repr(float(v))


def render_config(art: DeployArtifact, graph: DeepStreamGraph, check: dict[str, Any], onnx_name: str,
                  batch_size: int = 1, gie_id: int = 1, threshold: float = 0.0, engine: str | None = None) -> str:
    """The nvinfer config text: comments saying where every value comes from, then `[property]`."""
    c, inp = art.contract, art.contract.input
    how = (f"first Conv ({', '.join(graph.conv_nodes)}) weights on input channels x "
           f"{'; '.join(f'{f:.6f}' for f in graph.channel_factors)} so that one scale fits std {list(inp.std)}"
           if graph.folded else "nothing folded (the graph normalises itself, or the stds are equal)")
    lines = [
        f"# DeepStream nvinfer config for segedge model {c.model or '?'} ({c.family or '?'}), export target "
        f"{art.target} ({art.precision}), written by `segedge deploy deepstream` from {art.folder}",
        f"# Keys: Gst-nvinfer config file specification, {SPEC_URL}",
        f"# nvinfer feeds y = net-scale-factor * (x - offsets[c]) on 0-255 {graph.color_order} pixels; segedge's "
        f"contract is (x - mean) / std with mean {list(inp.mean)}, std {list(inp.std)} (RGB), io {inp.io}.",
        f"# {onnx_name}: {how}; a Softmax over classes is appended, so segmentation-threshold compares "
        "probabilities (0 = plain argmax).",
        f"# Proved with ONNX Runtime on {len(check['frames'])} frames against {art.path.name}: max |dlogits| "
        f"{check['max_abs_diff']:.3g} (max |logit| {check['max_abs_logit']:.3g}, allowed {check['tolerance']:.3g}), "
        f"argmax agreement {check['argmax_agreement']:.4%} over {check['pixels']} pixels; details in {CHECK_NAME}.",
        "# nvinfer builds the TensorRT engine from onnx-file on first start and logs where it serialized it: set",
        "# model-engine-file to that path to skip the rebuild (an engine must be built on the GPU that runs it).",
        *_islands_note(art),
        "[property]",
        "gpu-id=0",
        f"gie-unique-id={gie_id}",
        "process-mode=1",
        "network-type=2",
        f"onnx-file={onnx_name}",
        *([f"model-engine-file={engine}"] if engine else []),
        f"labelfile-path={LABELS_NAME}",
        f"batch-size={batch_size}",
        f"network-mode={network_mode(art.precision, art.target)}",
        f"infer-dims=3;{inp.height};{inp.width}",
        f"model-color-format={COLOR_FORMATS[graph.color_order]}",
        f"net-scale-factor={_fmt(graph.net_scale_factor)}",
        "offsets=" + ";".join(_fmt(v) for v in graph.offsets),
        "maintain-aspect-ratio=0",
        "scaling-filter=1",
        f"num-detected-classes={c.num_classes}",
        f"output-blob-names={graph.output_name}",
        "segmentation-output-order=0",
        f"segmentation-threshold={_fmt(threshold)}",
    ]
    return "\n".join(lines) + "\n"


def _islands_note(art: DeployArtifact) -> list[str]:
    """A comment naming the FP32 islands segedge's own engine build pins, which nvinfer's network-mode does not."""
    from ..engine.bundle import describe_islands

    islands = (art.engine or {}).get("fp32_islands") or []
    if not islands:
        return []
    names = ";".join(str(i.get("node", "?")) for i in islands)
    return [f"# `segedge engine build` pins FP32 islands ({describe_islands(islands)}) for accuracy; nvinfer's "
            "network-mode alone does not: pin them with the layer-device-precision key (see the spec) if masks "
            "degrade.",
            f"# FP32 nodes: {names}"]


def _check_batch(art: DeployArtifact, batch_size: int) -> None:
    if batch_size < 1:
        raise SegedgeError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size > 1 and not art.contract.input.dynamic.batch:
        raise SegedgeError(f"the export has a fixed batch of 1, so nvinfer cannot batch {batch_size} frames: "
                           "re-export with --dynamic-batch, or use --batch-size 1")


def _deployed_bytes(graph: DeepStreamGraph, art: DeployArtifact, check: dict[str, Any]) -> bytes:
    """The deployed ONNX, its metadata replaced by what was done to it (the export contract no longer fits it)."""
    model = graph.model
    del model.metadata_props[:]
    note = {"source": art.path.name, "target": art.target, "net_scale_factor": graph.net_scale_factor,
            "offsets": list(graph.offsets), "color_order": graph.color_order, "folded": graph.folded,
            "output": graph.output_name, "max_abs_diff": check["max_abs_diff"]}
    entry = model.metadata_props.add()
    entry.key, entry.value = "segedge_deepstream", json.dumps(note)
    return model.SerializeToString()


def write_deepstream(folder: str | Path, out: str | Path, target: str | None = None, frames: Any = None,
                     frame_count: int = DEFAULT_CHECK_FRAMES, batch_size: int = 1, gie_id: int = 1,
                     threshold: float = 0.0, engine: str | None = None) -> DeepStreamResult:
    """Write the nvinfer config, labels, deployed ONNX and check JSON for `target` of `folder` into `out`."""
    import onnx

    from ..export.calibration import load_calibration_frames

    art = resolve_artifact(folder, target)
    src = _source_graph(art)
    _check_batch(art, batch_size)
    network_mode(art.precision, art.target)  # refuse before any work
    out = ensure_writable_dir(out, "the DeepStream config")
    original = onnx.load(str(src))
    graph = build_deepstream_graph(original, art.contract)
    picked = load_calibration_frames(frames, frame_count)
    check = prove_equivalence(original, graph, art.contract, picked.frames, picked.names)
    check.update({"frames_source": picked.source, "target": art.target, "source_graph": src.name})
    onnx_path = write_bytes_atomic(out / f"{src.stem}.deepstream.onnx", _deployed_bytes(graph, art, check))
    labels = write_text_atomic(out / LABELS_NAME, labels_text(art.contract))
    record = {"format": "segedge-deepstream-check/1", "export_folder": str(Path(folder).resolve()),
              "deployed_onnx": onnx_path.name, "deployed_sha256": sha256_file(onnx_path),
              "net_scale_factor": graph.net_scale_factor, "offsets": list(graph.offsets),
              "color_order": graph.color_order, "folded": graph.folded, "conv_nodes": graph.conv_nodes,
              "channel_factors": graph.channel_factors, "output_blob": graph.output_name, "check": check}
    check_file = write_json_atomic(out / CHECK_NAME, record)
    text = render_config(art, graph, check, onnx_path.name, batch_size, gie_id, threshold, engine)
    config = write_text_atomic(out / CONFIG_NAME, text)  # last: a config exists only with everything it names
    return DeepStreamResult(config, onnx_path, labels, check_file, check)


__all__ = ["CONFIG_NAME", "DeepStreamResult", "LABELS_NAME", "NETWORK_MODES", "network_mode", "render_config",
           "write_deepstream"]
