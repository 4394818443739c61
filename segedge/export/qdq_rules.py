"""Check an ONNX Q/DQ graph against TensorRT's explicit-quantization rules; returns the list of violations.

Rules (TensorRT: symmetric signed INT8, scale-only quantization):
- every QuantizeLinear / DequantizeLinear has a constant, finite, strictly positive float scale;
- a zero point is present (absent means uint8), is int8 (no uint8, no int32 bias quantization) and is all 0;
- weights (constant inputs of Conv / ConvTranspose / MatMul / Gemm, as int8 initializer→DQ or float→Q→DQ) are
  quantized per-channel on the output-channel axis: Conv 0, ConvTranspose 1, MatMul last, Gemm 0 if transB else 1;
  int8 weight values stay in [-127, 127];
- activations are quantized per-tensor (scalar scale).
Usage: `validate_qdq(onnx.load("model.qdq.onnx"))` → [] when the graph follows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


@dataclass(frozen=True)
class Violation:
    """One broken rule at one node."""

    node: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.node}: {self.message} [{self.rule}]"


def _constants(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute:
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    return consts


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _weight_axis(consumer: Any, input_index: int, rank: int) -> int | None:
    """Output-channel axis of the weight feeding `consumer` at `input_index`, or None when it is not a weight slot."""
    if consumer.op_type == "Conv" and input_index == 1:
        return 0
    if consumer.op_type == "ConvTranspose" and input_index == 1:
        return 1
    if consumer.op_type == "MatMul" and input_index == 1:
        return rank - 1
    if consumer.op_type == "Gemm" and input_index == 1:
        return 0 if _attr(consumer, "transB", 0) else 1
    return None


def validate_qdq(model: Any, require_per_channel_weights: bool = True) -> list[Violation]:
    """Every rule violation in `model` (an onnx.ModelProto or a path); an empty list means TensorRT-compatible."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    consts = _constants(model)
    nodes = list(model.graph.node)
    consumers: dict[str, list[tuple[Any, int]]] = {}
    producer: dict[str, Any] = {}
    for n in nodes:
        for o in n.output:
            producer[o] = n
        for i, t in enumerate(n.input):
            consumers.setdefault(t, []).append((n, i))
    qdq = [n for n in nodes if n.op_type in QDQ_OPS]
    out: list[Violation] = []
    if not qdq:
        return [Violation(model.graph.name or "graph", "has-qdq", "no QuantizeLinear/DequantizeLinear nodes: "
                          "this is not a Q/DQ model")]

    def weight_of(node: Any) -> np.ndarray | None:
        """The constant tensor a Q (float weight) or DQ (int8 weight, or fed by a weight Q) quantizes."""
        x = node.input[0]
        if x in consts:
            return consts[x]
        p = producer.get(x)
        if node.op_type == "DequantizeLinear" and p is not None and p.op_type == "QuantizeLinear" and \
                p.input[0] in consts:
            return consts[p.input[0]]
        return None

    def weight_consumer_axis(node: Any, rank: int) -> tuple[Any, int | None]:
        """(consumer, expected axis) for the weight path starting at `node`."""
        outs = [node]
        if node.op_type == "QuantizeLinear":
            outs = [c for c, _ in consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"] or [node]
        for dq in outs:
            for c, idx in consumers.get(dq.output[0], []):
                if c.op_type in WEIGHTED_OPS:
                    return c, _weight_axis(c, idx, rank)
        return None, None

    for n in qdq:
        name = n.name or f"{n.op_type}({n.input[0]})"
        # Scale: constant, float, finite, > 0.
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            out.append(Violation(name, "scale-constant", "scale is not a constant initializer"))
            continue
        if scale.dtype.kind != "f":
            out.append(Violation(name, "scale-float", f"scale has dtype {scale.dtype}, expected float"))
        elif not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            out.append(Violation(name, "scale-positive", f"scale has non-finite or non-positive values "
                                 f"(min {float(np.min(scale)):.3g})"))
        # Zero point: present, int8, all 0.
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if len(n.input) > 2 and n.input[2] and zp is None:
            out.append(Violation(name, "zero-point-constant", "zero point is not a constant initializer"))
        elif zp is None:
            out.append(Violation(name, "zero-point-int8", "zero point missing: it defaults to uint8; TensorRT "
                                 "needs int8 zero points of 0"))
        elif zp.dtype != np.int8:
            what = "uint8 (asymmetric activations)" if zp.dtype == np.uint8 else \
                "int32 (quantized bias)" if zp.dtype == np.int32 else str(zp.dtype)
            out.append(Violation(name, "zero-point-int8", f"zero point is {what}; TensorRT needs int8"))
        elif np.any(zp != 0):
            out.append(Violation(name, "zero-point-zero", f"zero point is not 0 (max |zp| {int(np.abs(zp).max())}); "
                                 "TensorRT quantization is symmetric"))
        if n.op_type == "DequantizeLinear" and n.input[0] in consts and consts[n.input[0]].dtype == np.uint8:
            out.append(Violation(name, "no-uint8", "dequantizes a uint8 tensor; TensorRT needs int8"))
        # Granularity: weights per-channel on the output-channel axis, activations per-tensor.
        w = weight_of(n)
        scale_is_vector = scale.ndim >= 1 and scale.size > 1
        if w is not None:
            consumer, axis = weight_consumer_axis(n, w.ndim)
            if consumer is None or axis is None:
                if scale_is_vector:
                    out.append(Violation(name, "activation-per-tensor",
                                         "constant tensor feeding no weight slot has a per-channel scale"))
                continue
            if n.op_type == "DequantizeLinear" and w.dtype == np.int8 and np.any(w == -128):
                out.append(Violation(name, "weight-range", "int8 weight uses -128; symmetric range is [-127, 127]"))
            if not scale_is_vector:
                if require_per_channel_weights and w.shape[axis] > 1:
                    out.append(Violation(name, "weight-per-channel", f"weight of {consumer.op_type} "
                                         f"'{consumer.name}' is quantized per-tensor; expected per-channel on axis {axis}"))
                continue
            got_axis = int(_attr(n, "axis", 1))
            got_axis = got_axis + w.ndim if got_axis < 0 else got_axis
            if got_axis != axis or scale.size != w.shape[axis]:
                out.append(Violation(name, "weight-axis", f"weight of {consumer.op_type} '{consumer.name}' is "
                                     f"quantized on axis {got_axis} ({scale.size} scales); expected the output-channel "
                                     f"axis {axis} ({w.shape[axis]} channels)"))
        elif scale_is_vector:
            out.append(Violation(name, "activation-per-tensor", f"activation quantized per-channel ({scale.size} "
                                 "scales); TensorRT expects per-tensor activation scales"))
    return out


def format_violations(violations: list[Violation], limit: int = 10) -> str:
    """Human-readable list (first `limit`)."""
    lines = [str(v) for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"... and {len(violations) - limit} more")
    return "\n".join(lines)
