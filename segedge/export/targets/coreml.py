"""Targets `coreml-fp16`, `coreml-int8` and `coreml-w8a8`: app-ready CoreML ML programs (.mlpackage) from PyTorch.

All take an image input (`ct.ImageType` in the contract's colour order, normalisation folded in: see
`segedge.export.coreml_convert`), have fixed shapes (flexible shapes knock LayerNorm off the Neural Engine), compute
in FP16 and return FP32 logits, or int32 labels for `--io raw` (argmax in the model). `coreml-int8` stores the
weights as int8 per output channel, or as 4/6/8-bit palettes with `--palettize`; `coreml-w8a8` also quantizes the
activations (calibrated on the export's frames, see `segedge.export.coreml_w8a8`). The user metadata carries the
contract and the target entry (shared codec, `segedge.contract.encode_metadata`) plus a `coreml` block describing
the image input. Nothing here can run a package (prediction needs macOS): the verification is the PyTorch-side
numerics of exactly what was converted (FP16 proxy; compressed weights read back from the ML program; the W8A8
fake-quant module), recorded as a proxy, and the saved package's ML program is inspected
(`segedge.export.coreml_inspect`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...contract import encode_metadata
from ...errors import ExportError
from ...toolkits.coreml import DEFAULT_DEPLOYMENT_TARGET, check_deployment_target, check_palettize
from . import TargetOption, TargetSpec, register_target
from .base import ExportContext, TargetArtifact

COREML_TARGET = TargetOption(
    "coreml_target", "--coreml-target", DEFAULT_DEPLOYMENT_TARGET,
    "CoreML deployment target: iOS15..iOS18 or macOS12..macOS15 (default iOS17 = macOS14; coreml-* targets).",
    check_deployment_target)
PALETTIZE = TargetOption(
    "palettize", "--palettize", None,
    "coreml-int8: palettised weights of 4, 6 or 8 bits (k-means per tensor) instead of int8 per channel.",
    check_palettize)
PROXY_FP16 = ("PyTorch proxy, not a CoreML prediction: the converted module (BatchNorm and input std folded) with "
              "FP16-rounded weights and every op output rounded to FP16")
PROXY_COMPRESSED = ("PyTorch proxy, not a CoreML prediction: the compressed weights read back from the ML program "
                    "and dequantized into the converted module, FP16 rounding of every op output")
PROXY_W8A8 = ("PyTorch proxy, not a CoreML prediction: the W8A8 module that was converted (coremltools' fake-quant "
              "reference model: int8 weights, quantize/dequantize on activations), FP16 rounding of every op output")
_CONSTEXPR = {None: "constexpr_affine_dequantize", "palette": "constexpr_lut_to_dense"}


def _prepared(ctx: ExportContext) -> dict[str, Any]:
    """The module every CoreML target converts (BatchNorm and the input std folded, checked), made once per export."""
    if "coreml_module" in ctx.cache:
        return ctx.cache["coreml_module"]
    import torch

    from ..coreml_convert import prepare_module

    if ctx.torch_module is None:
        raise ExportError("the CoreML targets need the PyTorch model in the export context; run them through "
                          "`segedge export`")
    c = ctx.manifest.contract
    inp, out = c.input, c.output
    if inp.dynamic.batch or inp.dynamic.height:
        raise ExportError("CoreML packages are exported with fixed shapes (flexible shapes knock LayerNorm off the "
                          "Neural Engine); drop --dynamic / --dynamic-batch for the coreml-* targets")
    raw = inp.io == "raw"
    example = torch.from_numpy(np.concatenate([_normalised(ctx, f) for f in ctx.frames.frames[:2]]))
    upsample = raw and out.stride == 1
    ctx.progress("preparing the CoreML module (BatchNorm and the input std folded into the convolutions)")
    module, image, fold_diff = prepare_module(ctx.torch_module, inp.mean, inp.std, inp.color_order, raw, upsample,
                                              example)
    ctx.cache["coreml_module"] = {"module": module, "image": image, "fold_max_abs_diff": fold_diff,
                                  "target": ctx.option("coreml_target"), "raw": raw}
    return ctx.cache["coreml_module"]


def _fp16_program(ctx: ExportContext) -> dict[str, Any]:
    """The converted FP16 program and its module, made once per export (coreml-fp16 and coreml-int8 start from it)."""
    if "coreml_fp16" in ctx.cache:
        return ctx.cache["coreml_fp16"]
    from ..coreml_convert import convert

    program = dict(_prepared(ctx))
    ctx.progress(f"converting to a CoreML ML program ({program['target']}, FP16)")
    c = ctx.manifest.contract
    program["mlmodel"], program["seconds"] = convert(program["module"], c.input.size, program["image"],
                                                     program["target"], c.output.name)
    ctx.cache["coreml_fp16"] = program
    return program


def _normalised(ctx: ExportContext, frame: np.ndarray) -> np.ndarray:
    """A frame as the FP32 model's normalised RGB input (the fold check runs on real frames)."""
    from ...runtime.preprocess import preprocess

    inp = ctx.manifest.contract.input
    return preprocess(frame, inp.size, inp.mean, inp.std)


def _output(ctx: ExportContext) -> dict[str, Any]:
    """The package's output as inspection reports it."""
    c = ctx.manifest.contract
    h, w = c.output.size or (c.input.height // c.output.stride, c.input.width // c.output.stride)
    if c.output.kind == "labels":
        return {"name": c.output.name, "kind": "labels", "dtype": "int32", "shape": [1, h, w]}
    return {"name": c.output.name, "kind": "logits", "dtype": "float32", "shape": [1, c.num_classes, h, w]}


def _save(ctx: ExportContext, target: str, filename: str, mlmodel: Any, entry: dict[str, Any],
          program: dict[str, Any]) -> Path:
    """Write the package into the staging folder with the contract and entry in its user metadata."""
    from ..coreml_convert import quiet_tools

    meta = ctx.manifest.target_metadata(target, entry)
    meta["coreml"] = {"input": program["image"].to_dict(), "output": _output(ctx),
                      "deployment_target": program["target"], "compute_precision": "fp16"}
    c = ctx.manifest.contract
    mlmodel.short_description = (f"segedge {c.model} semantic segmentation, {c.num_classes} classes, "
                                 f"{c.input.width}x{c.input.height} image in, {c.output.kind} out ({target})")
    for key, value in encode_metadata(meta).items():
        mlmodel.user_defined_metadata[key] = value
    path = ctx.staged(filename)
    with quiet_tools():
        mlmodel.save(str(path))
    return path


def _inspect(ctx: ExportContext, path: Path, program: dict[str, Any], compressed: str | None,
             activations: bool) -> dict[str, Any]:
    from ..coreml_inspect import check_package, inspect_package, summarize

    report = inspect_package(path, program["target"])
    check_package(report, compressed, _output(ctx), activations=activations)
    return summarize(report)


def _finish(ctx: ExportContext, target: str, filename: str, mlmodel: Any, entry: dict[str, Any],
            program: dict[str, Any], compressed: str | None, activations: bool = False) -> TargetArtifact:
    """Save, inspect the saved package, record its size and digest: the target's artifact."""
    from ..coreml_convert import package_files, package_size, path_sha256

    entry = {"file": filename, **entry}
    path = _save(ctx, target, filename, mlmodel, entry, program)
    entry["inspection"] = _inspect(ctx, path, program, compressed, activations)
    entry["package"] = {"size_bytes": package_size(path), "files": len(package_files(path)),
                        "sha256": path_sha256(path)}
    ctx.progress(f"{target}: {filename} {entry['package']['size_bytes'] / 1e6:.1f} MB, "
                 f"{entry['inspection']['op_count']} ops")
    return TargetArtifact(path, entry)


def _common_entry(program: dict[str, Any]) -> dict[str, Any]:
    return {"runtime": "coreml (macOS / iOS; prediction not run here)",
            "coreml": {"deployment_target": program["target"], "compute_precision": "fp16",
                       "input": program["image"].to_dict(), "shapes": "fixed"},
            "conversion_seconds": round(program["seconds"], 2),
            "fold_max_abs_diff": program["fold_max_abs_diff"]}


def build_fp16(ctx: ExportContext) -> TargetArtifact:
    """The FP16 package, its FP16 proxy checked against PyTorch FP32."""
    from ..coreml_convert import proxy_module, proxy_runner

    program = _fp16_program(ctx)
    inp = ctx.manifest.contract.input
    run = proxy_runner(proxy_module(program["module"]).logits, program["image"], program["raw"], inp.mean, inp.std)
    assert ctx.verify_with is not None
    verification = {**ctx.verify_with(run, "coreml-fp16 (FP16 PyTorch proxy)"), "proxy": PROXY_FP16}
    entry = {"precision": "fp16", **_common_entry(program), "verification": verification}
    return _finish(ctx, "coreml-fp16", "model.fp16.mlpackage", program["mlmodel"], entry, program, None)


def build_int8(ctx: ExportContext) -> TargetArtifact:
    """The compressed-weights package (int8 per channel or palettised), its weights read back for the proxy."""
    from ..coreml_convert import check_compression_target, compress, compressed_weights, proxy_module, proxy_runner

    check_compression_target(ctx.option("coreml_target"))
    program = _fp16_program(ctx)
    bits = ctx.option("palettize")
    ctx.progress("compressing the CoreML weights: " + (f"{bits}-bit palettes" if bits else "int8 per channel"))
    mlmodel, quantization, seconds = compress(program["mlmodel"], bits, program["target"])
    weights = compressed_weights(mlmodel, program["module"])
    quantization.update({"compressed_tensors": len(weights), "compression_seconds": round(seconds, 2)})
    inp = ctx.manifest.contract.input
    run = proxy_runner(proxy_module(program["module"], weights).logits, program["image"], program["raw"], inp.mean,
                       inp.std)
    assert ctx.verify_with is not None
    verification = {**ctx.verify_with(run, "coreml-int8 (compressed-weights PyTorch proxy)"),
                    "proxy": PROXY_COMPRESSED}
    entry = {"precision": "int8" if bits is None else f"pal{bits}", **_common_entry(program),
             "quantization": quantization, "verification": verification}
    filename = "model.int8.mlpackage" if bits is None else f"model.pal{bits}.mlpackage"
    return _finish(ctx, "coreml-int8", filename, mlmodel, entry, program, _CONSTEXPR["palette" if bits else None])


def _calibration_images(ctx: ExportContext, image: Any) -> list[Any]:
    """The export's calibration frames as what the package computes from its image input (1×3×H×W each)."""
    import torch

    from ..coreml_convert import to_image_space

    return [to_image_space(torch.from_numpy(_normalised(ctx, f)), image) for f in ctx.frames.frames]


def build_w8a8(ctx: ExportContext) -> TargetArtifact:
    """W8A8 package: calibrated on the export's frames with coremltools' torch-side quantizer, the fake-quant
    (reference-quantized) module as the proxy."""
    from ..coreml_convert import convert, proxy_runner
    from ..coreml_w8a8 import LabelsOutput, calibrate, check_w8a8_target, float_modules, image_batches

    check_w8a8_target(ctx.option("coreml_target"))
    program = dict(_prepared(ctx))
    c = ctx.manifest.contract
    keep = float_modules(program["module"], str(c.family or ""), c.model)
    ctx.progress(f"preparing W8A8 with coremltools' LinearQuantizer ({len(keep)} modules kept float)")
    images = _calibration_images(ctx, program["image"])
    qmodule, quantization = calibrate(program["module"], image_batches(images), keep, ctx.progress)
    ctx.progress(f"converting the W8A8 module to a CoreML ML program ({program['target']})")
    mlmodel, program["seconds"] = convert(LabelsOutput(qmodule) if program["raw"] else qmodule, c.input.size,
                                          program["image"], program["target"], c.output.name, labels=program["raw"])
    run = proxy_runner(qmodule, program["image"], program["raw"], c.input.mean, c.input.std)
    assert ctx.verify_with is not None
    verification = {**ctx.verify_with(run, "coreml-w8a8 (fake-quant PyTorch proxy)"), "proxy": PROXY_W8A8}
    frames = ctx.frames
    calibration = {"frames": len(frames), "source": frames.source, "kind": frames.kind, "sha256": frames.sha256,
                   "method": "min_max", "shared_with": "the export's other INT8 targets (same frames)"}
    entry = {"precision": "w8a8", **_common_entry(program), "quantization": quantization,
             "calibration": calibration, "verification": verification}
    return _finish(ctx, "coreml-w8a8", "model.w8a8.mlpackage", mlmodel, entry, program, _CONSTEXPR[None],
                   activations=True)


register_target(TargetSpec("coreml-fp16", build_fp16, "CoreML ML program (.mlpackage), FP16, image input", "fp16",
                           toolkits=("coreml",), backend="coreml", options=(COREML_TARGET,)))
register_target(TargetSpec("coreml-int8", build_int8, "CoreML ML program, int8 per-channel (or --palettize 4|6|8) "
                           "weights, FP16 compute", "int8", toolkits=("coreml",), backend="coreml",
                           options=(COREML_TARGET, PALETTIZE)))
register_target(TargetSpec("coreml-w8a8", build_w8a8, "CoreML ML program, int8 weights and activations "
                           "(quantize/dequantize ops, calibrated on the export's frames), FP16 compute", "int8",
                           needs_calibration=True, toolkits=("coreml",), backend="coreml", options=(COREML_TARGET,)))
