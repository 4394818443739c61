"""Targets `trt-fp16` and `trt-int8`: TensorRT engines, built on the device from a bundle made here.

An engine is specific to one GPU and one TensorRT version, so `export` writes the *device bundle*
(`segedge.engine.bundle`): the ONNX flavour for the chosen TensorRT generation (`--trt-version`, default 10 =
JetPack 6), `reference.npz` (golden inputs from the export's real frames and the FP32 ONNX's outputs for them) and a
manifest entry marked pending with the one command to run on the device (`segedge engine build …`). When this host
has TensorRT and an NVIDIA GPU, the same build runs here at once. No IInt8Calibrator anywhere: INT8 comes from the
Q/DQ graph (the `qdq` target's quantization, shared calibration table), FP16 from the builder flag with FP32 layer
constraints (≤ 10) or from an FP16-typed graph (11).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...engine.bundle import (DEFAULT_GENERATION, PENDING, REFERENCE_NAME, Reference, build_command,
                              check_generation, describe_islands, engine_file, onnx_file)
from ...errors import ExportError
from . import TargetOption, TargetSpec, register_target
from .base import ExportContext, TargetArtifact, write_onnx_artifact

REFERENCE_FRAMES = 8  # golden inputs in reference.npz: enough to catch a wrong engine, small enough to ship
TRT_VERSION = TargetOption(
    "trt_version", "--trt-version", DEFAULT_GENERATION,
    "TensorRT generation the device runs: 8.5 (JetPack 5.1), 8.6, 10 (JetPack 6) or 11; picks the ONNX flavour "
    "(trt-* targets).", check_generation)


def _reference(ctx: ExportContext) -> Path:
    """reference.npz in the staging folder, written once per export (both trt targets share it)."""
    if "trt_reference" in ctx.cache:
        return ctx.cache["trt_reference"]
    from ...runtime.backends.ort import OnnxRuntimeBackend

    frames = ctx.frames.frames[:REFERENCE_FRAMES]
    names = [Path(n).name for n in ctx.frames.names[:REFERENCE_FRAMES]]
    if not frames:
        raise ExportError("no frames to make the TensorRT reference from; pass --calib with real frames")
    inputs = np.concatenate([ctx.make_input(f) for f in frames], axis=0)
    with OnnxRuntimeBackend(ctx.fp32_model) as be:
        outputs = np.concatenate([be.run(inputs[i:i + 1]) for i in range(len(inputs))], axis=0)
    ctx.progress(f"writing {REFERENCE_NAME}: {len(inputs)} golden inputs and the FP32 ONNX's outputs")
    path = Reference(inputs, outputs, names).save(ctx.staged(REFERENCE_NAME))
    ctx.cache["trt_reference"] = path
    return path


def _engine_block(ctx: ExportContext, target: str, generation: str, builder: dict[str, Any],
                  islands: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `engine` block of a bundle whose engine is still to be built."""
    return {"status": PENDING, "file": engine_file(target), "onnx": onnx_file(target), "generation": generation,
            "reference": REFERENCE_NAME, "build_command": build_command(ctx.out_dir, target),
            "builder": builder, "fp32_islands": islands}


def _build_here_or_say(ctx: ExportContext, target: str) -> None:
    """Say how the engine gets built: here when TensorRT and a GPU are present (after commit), else on the device."""
    from ...toolkits.tensorrt import TOOLKIT

    why = TOOLKIT.unavailable()
    if why is None:
        ctx.cache.setdefault("trt_build_after_commit", []).append(target)
        ctx.progress(f"{target}: TensorRT and a GPU are here: the engine is built after the bundle is written")
    else:
        ctx.progress(f"{target}: engine pending ({why}); on the device run: {build_command(ctx.out_dir, target)}")


def build_int8(ctx: ExportContext) -> TargetArtifact:
    """The INT8 bundle: Q/DQ graph in the generation's flavour, checked through ONNX Runtime, + the reference."""
    from ...engine.bundle import describe_islands as _describe
    from ..torch2onnx import opset_of
    from ..trt_flavours import flavour_for, islands_in
    from .qdq import check_tensorrt_graph, tensorrt_qdq_graph

    generation = ctx.option("trt_version")
    qmodel, quantization, calibration = tensorrt_qdq_graph(ctx)
    graph = flavour_for(qmodel, generation)
    check_tensorrt_graph(graph, onnx_file("trt-int8"))  # still true after the generation's rewrites
    islands = islands_in(graph, [{"node": k["node"], "op": k["op"], "reason": k["reason"]}
                                 for k in quantization.get("kept_float", [])])
    # ≤ 10: INT8 from the Q/DQ graph needs the INT8 flag; FP16 lets the layers left float run in half precision
    # with the islands pinned to FP32. 11: strongly typed, the graph's types decide.
    builder = ({"strongly_typed": True} if generation == "11" else
               {"int8": True, "fp16": True, "precision_constraints": "obey", "strongly_typed": False})
    ctx.progress(f"trt-int8 for TensorRT {generation}: {_describe(islands)}")
    entry = {
        "precision": "int8", "opset": opset_of(graph), "runtime": "tensorrt",
        "quantization": quantization, "calibration": calibration,
        "verification": ctx.verify(graph, "trt-int8 graph (ONNX Runtime proxy)"),
        "engine": _engine_block(ctx, "trt-int8", generation, builder, islands),
    }
    art = write_onnx_artifact(ctx, "trt-int8", onnx_file("trt-int8"), graph, entry)
    art.extra_files.append(_reference(ctx))
    _build_here_or_say(ctx, "trt-int8")
    return art


def build_fp16(ctx: ExportContext) -> TargetArtifact:
    """The FP16 bundle: the generation's graph with FP32 islands from measured ranges, checked through an FP16 proxy."""
    from ..fp16 import fp16_flavour, fp16_proxy, tensor_ranges
    from ..torch2onnx import opset_of
    from ..trt_flavours import flavour_for

    generation = ctx.option("trt_version")
    base = flavour_for(ctx.fp32_model, generation)
    ctx.progress(f"measuring activation ranges for FP16 on {len(ctx.frames)} frames")
    ranges = tensor_ranges(base, [ctx.make_input(f) for f in ctx.frames.frames])
    graph, islands, builder = fp16_flavour(base, generation, ranges)
    ctx.progress(f"trt-fp16 for TensorRT {generation}: {describe_islands(islands)}")
    entry = {
        "precision": "fp16", "opset": opset_of(graph), "runtime": "tensorrt",
        "fp16": {"fp32_islands": len(islands), "ranges_from": f"{len(ctx.frames)} frames ({ctx.frames.source})",
                 "max_abs_activation": max((max(abs(lo), abs(hi)) for lo, hi in ranges.values()), default=0.0)},
        "verification": ctx.verify(fp16_proxy(base, islands), "trt-fp16 graph (FP16 storage proxy)"),
        "engine": _engine_block(ctx, "trt-fp16", generation, builder, islands),
    }
    art = write_onnx_artifact(ctx, "trt-fp16", onnx_file("trt-fp16"), graph, entry)
    art.extra_files.append(_reference(ctx))
    _build_here_or_say(ctx, "trt-fp16")
    return art


register_target(TargetSpec(
    "trt-int8", build_int8, "TensorRT INT8 engine (device bundle: Q/DQ ONNX + reference; built on the device)",
    "int8", needs_calibration=True, toolkits=("onnxruntime",), backend="tensorrt", options=(TRT_VERSION,)))
register_target(TargetSpec(
    "trt-fp16", build_fp16, "TensorRT FP16 engine (device bundle: ONNX with FP32 islands + reference; built on the "
    "device)", "fp16", toolkits=("onnxruntime",), backend="tensorrt", options=(TRT_VERSION,)))
