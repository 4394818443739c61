"""Check an ONNX Q/DQ graph against TensorRT's explicit-quantization rules; returns the list of violations.

Rules (TensorRT: symmetric signed INT8, scale-only quantization):
- every QuantizeLinear / DequantizeLinear has a constant, finite, strictly positive float scale;
- a zero point is present (absent means uint8), is int8 (no uint8, no int32 bias quantization) and is all 0;
- weights (constant inputs of Conv / ConvTranspose / MatMul / Gemm, as int8 initializer→DQ or float→Q→DQ) are
  quantized per-channel on the output-channel axis: Conv 0, ConvTranspose 1, MatMul last, Gemm 0 if transB else 1;
  int8 weight values stay in [-127, 127];
- activations are quantized per-tensor (scalar scale).
Usage: `validate_qdq(onnx.load("model.qdq.onnx"))` → [] when the graph follows them.

A second rule set, `check_placement(model)`, checks where the Q/DQ pairs sit against TensorRT's layer-placement
recommendations (developer guide, "Explicit quantization" → "Q/DQ layer-placement recommendations"): TensorRT fuses
a DQ into the weighted op that reads it and a Q into the op that writes it, so
- weighted-output: the output of a weighted op (Conv/ConvTranspose/Gemm/MatMul, through its epilogue: bias Add,
  BatchNormalization, reshapes) is quantized only when every reader of the quantized tensor is itself a quantized
  input (a weighted op, or an Add); a float reader (LayerNorm, GELU, Resize, …) gets int8-rounded values for nothing;
- weighted-input: a weighted op with a quantized weight has its activation input(s) quantized too (an activation ×
  activation MatMul has both or neither), otherwise TensorRT runs it in float and folds the weight DQ away;
- residual-add-fusion: a residual Add whose one input is a weighted op's sole output (the "fused" input) fuses into
  that op's epilogue only when no Q/DQ sits on that input; its other (skip) input carries the Q/DQ, which lets the
  fused kernel read it as int8;
- residual-add-mixed: an Add of two activations with no fusible weighted input has both inputs quantized or neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# Data-movement ops TensorRT looks through when it fuses Q/DQ and epilogues (they change no value).
SHAPE_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


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


class _Index:
    """Constants, producers and consumers of a graph, and the weight paths through its Q/DQ nodes."""

    def __init__(self, model: Any) -> None:
        self.consts = _constants(model)
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        self.producer: dict[str, Any] = {}
        for n in model.graph.node:
            for o in n.output:
                self.producer[o] = n
            for i, t in enumerate(n.input):
                self.consumers.setdefault(t, []).append((n, i))

    def weight_of(self, node: Any) -> np.ndarray | None:
        """The constant tensor a Q (float weight) or DQ (int8 weight, or fed by a weight Q) quantizes."""
        x = node.input[0]
        if x in self.consts:
            return self.consts[x]
        p = self.producer.get(x)
        if node.op_type == "DequantizeLinear" and p is not None and p.op_type == "QuantizeLinear" and \
                p.input[0] in self.consts:
            return self.consts[p.input[0]]
        return None

    def weight_consumer_axis(self, node: Any, rank: int) -> tuple[Any, int | None]:
        """(consumer, expected axis) for the weight path starting at `node`."""
        outs = [node]
        if node.op_type == "QuantizeLinear":
            outs = [c for c, _ in self.consumers.get(node.output[0], []) if c.op_type == "DequantizeLinear"] or [node]
        for dq in outs:
            for c, idx in self.consumers.get(dq.output[0], []):
                if c.op_type in WEIGHTED_OPS:
                    return c, _weight_axis(c, idx, rank)
        return None, None


def _scale_rules(n: Any, name: str, consts: dict[str, np.ndarray]) -> list[Violation]:
    """Scale: constant, float, finite, > 0 (the caller has checked it is constant)."""
    scale = consts[n.input[1]]
    if scale.dtype.kind != "f":
        return [Violation(name, "scale-float", f"scale has dtype {scale.dtype}, expected float")]
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        return [Violation(name, "scale-positive", f"scale has non-finite or non-positive values "
                          f"(min {float(np.min(scale)):.3g})")]
    return []


def _zero_point_rules(n: Any, name: str, consts: dict[str, np.ndarray]) -> list[Violation]:
    """Zero point: present, int8, all 0; no uint8 tensor dequantized."""
    out = []
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
    return out


def _granularity_rules(n: Any, name: str, index: _Index, require_per_channel_weights: bool) -> list[Violation]:
    """Weights per-channel on the output-channel axis with int8 values in [-127, 127]; activations per-tensor."""
    scale = index.consts[n.input[1]]
    w = index.weight_of(n)
    scale_is_vector = scale.ndim >= 1 and scale.size > 1
    if w is None:
        return [Violation(name, "activation-per-tensor", f"activation quantized per-channel ({scale.size} scales); "
                          "TensorRT expects per-tensor activation scales")] if scale_is_vector else []
    consumer, axis = index.weight_consumer_axis(n, w.ndim)
    if consumer is None or axis is None:
        return [Violation(name, "activation-per-tensor", "constant tensor feeding no weight slot has a per-channel "
                          "scale")] if scale_is_vector else []
    out = []
    if n.op_type == "DequantizeLinear" and w.dtype == np.int8 and np.any(w == -128):
        out.append(Violation(name, "weight-range", "int8 weight uses -128; symmetric range is [-127, 127]"))
    if not scale_is_vector:
        if require_per_channel_weights and w.shape[axis] > 1:
            out.append(Violation(name, "weight-per-channel", f"weight of {consumer.op_type} '{consumer.name}' is "
                                 f"quantized per-tensor; expected per-channel on axis {axis}"))
        return out
    got_axis = int(_attr(n, "axis", 1))
    got_axis = got_axis + w.ndim if got_axis < 0 else got_axis
    if got_axis != axis or scale.size != w.shape[axis]:
        out.append(Violation(name, "weight-axis", f"weight of {consumer.op_type} '{consumer.name}' is quantized on "
                             f"axis {got_axis} ({scale.size} scales); expected the output-channel axis {axis} "
                             f"({w.shape[axis]} channels)"))
    return out


def validate_qdq(model: Any, require_per_channel_weights: bool = True) -> list[Violation]:
    """Every rule violation in `model` (an onnx.ModelProto or a path); an empty list means TensorRT-compatible."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    qdq = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    if not qdq:
        return [Violation(model.graph.name or "graph", "has-qdq", "no QuantizeLinear/DequantizeLinear nodes: "
                          "this is not a Q/DQ model")]
    index = _Index(model)
    out: list[Violation] = []
    for n in qdq:
        name = n.name or f"{n.op_type}({n.input[0]})"
        if len(n.input) < 2 or n.input[1] not in index.consts:
            out.append(Violation(name, "scale-constant", "scale is not a constant initializer"))
            continue
        out += _scale_rules(n, name, index.consts)
        out += _zero_point_rules(n, name, index.consts)
        out += _granularity_rules(n, name, index, require_per_channel_weights)
    return out


def format_violations(violations: list[Violation], limit: int = 10) -> str:
    """Human-readable list (first `limit`)."""
    lines = [str(v) for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"... and {len(violations) - limit} more")
    return "\n".join(lines)


# -- placement (TensorRT's Q/DQ layer-placement recommendations) ----------------------------------------------------

@dataclass(frozen=True)
class ResidualAdd:
    """An Add of two activations and how TensorRT can run it: fused into the epilogue of the weighted op that
    solely feeds input `fused` (None: no such input), reading its `skip` input(s) as int8 when they are quantized."""

    node: str
    fused: int | None
    skip: tuple[int, ...]
    weighted: str | None  # the weighted op the Add fuses into


class _Graph:
    """Producer / consumer / constant lookups over one ModelProto, shared by the placement helpers."""

    def __init__(self, model: Any) -> None:
        self.nodes = list(model.graph.node)
        self.order = {n.name: i for i, n in enumerate(self.nodes)}
        self.consts = set(_constants(model))
        self.outputs = {o.name for o in model.graph.output}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for n in self.nodes:
            for o in n.output:
                self.producer[o] = n
            for i, t in enumerate(n.input):
                self.consumers.setdefault(t, []).append((n, i))

    def is_const(self, t: str) -> bool:
        """A constant, or a constant behind Q/DQ (a weight pair)."""
        p = self.producer.get(t)
        while t not in self.consts and p is not None and p.op_type in QDQ_OPS:
            t = p.input[0]
            p = self.producer.get(t)
        return t in self.consts

    def sole_reader(self, t: str) -> bool:
        return len(self.consumers.get(t, [])) == 1 and t not in self.outputs

    def dequantized(self, t: str) -> bool:
        """`t` is an activation read through a DequantizeLinear (directly or through shape-only ops)."""
        p = self.producer.get(t)
        while p is not None and p.op_type in SHAPE_OPS:
            p = self.producer.get(p.input[0])
        return p is not None and p.op_type == "DequantizeLinear" and not self.is_const(p.output[0])

    def weighted_source(self, t: str, through_qdq: bool = True) -> Any | None:
        """The weighted op whose output reaches `t` through its epilogue (bias Add, BatchNormalization, shape-only
        ops; Q/DQ pairs too when `through_qdq`), each step read by nothing else so TensorRT can fuse; else None."""
        while True:
            p = self.producer.get(t)
            if p is None:
                return None
            if p.op_type in QDQ_OPS:
                if not through_qdq:
                    return None
            elif not self.sole_reader(t):
                return None
            if p.op_type in WEIGHTED_OPS:
                return p
            if p.op_type in SHAPE_OPS or p.op_type in QDQ_OPS or p.op_type == "BatchNormalization":
                t = p.input[0]
            elif p.op_type == "Add" and len(p.input) == 2 and sum(self.is_const(i) for i in p.input) == 1:
                t = next(i for i in p.input if not self.is_const(i))  # a bias Add
            else:
                return None


def _as_graph(model: Any) -> _Graph:
    import onnx

    if isinstance(model, _Graph):
        return model
    return _Graph(onnx.load(str(model)) if isinstance(model, (str, Path)) else model)


def residual_adds(model: Any) -> list[ResidualAdd]:
    """Every Add of two activations with its fusible (weighted) input and its skip input(s), in graph order (`model`:
    a ModelProto or a path)."""
    g = _as_graph(model)
    out = []
    for n in g.nodes:
        if n.op_type != "Add" or len(n.input) != 2 or any(g.is_const(i) for i in n.input):
            continue
        src = [g.weighted_source(i) for i in n.input]
        cands = [i for i in (0, 1) if src[i] is not None and src[i] is not src[1 - i]]
        if not cands:
            out.append(ResidualAdd(n.name, None, (0, 1), None))
            continue
        # Two weighted inputs: the Add fuses into the op computed last (the other input is ready by then).
        fused = max(cands, key=lambda i: g.order[src[i].name])
        out.append(ResidualAdd(n.name, fused, (1 - fused,), src[fused].name))
    return out


def _weighted_activation_slots(g: _Graph, node: Any) -> list[int]:
    """Input indices of a weighted op that carry activations (not weights, not biases)."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return [0]
    return [i for i in (0, 1) if i < len(node.input) and not g.is_const(node.input[i])]


def quantized_input_slots(model: Any, weighted: Any, adds: list[ResidualAdd]) -> set[tuple[str, int]]:
    """(node, input index) pairs that TensorRT's placement quantizes: the activation inputs of the given weighted
    ops and the skip inputs of the given residual Adds."""
    g = _as_graph(model)
    names = set(weighted)
    slots = {(n.name, i) for n in g.nodes if n.name in names for i in _weighted_activation_slots(g, n)}
    return slots | {(a.node, i) for a in adds for i in a.skip}


def _check_weighted_outputs(g: _Graph) -> list[Violation]:
    out = []
    for q in g.nodes:
        if q.op_type != "QuantizeLinear" or g.is_const(q.input[0]):
            continue
        src = g.weighted_source(q.input[0], through_qdq=False)
        if src is None:
            continue
        readers = [c for dq, _ in g.consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                   for c, _ in g.consumers.get(dq.output[0], [])]
        floats = sorted({c.op_type for c in readers if c.op_type not in WEIGHTED_OPS and c.op_type != "Add"})
        if floats:
            out.append(Violation(q.name or q.input[0], "weighted-output",
                                 f"output of {src.op_type} '{src.name}' is quantized but read by float "
                                 f"{', '.join(floats)}; quantize the inputs of weighted ops, not their outputs"))
    return out


def _check_weighted_inputs(g: _Graph) -> list[Violation]:
    out = []
    for n in g.nodes:
        if n.op_type not in WEIGHTED_OPS:
            continue
        acts = _weighted_activation_slots(g, n)
        quantized = [i for i in acts if g.dequantized(n.input[i])]
        weight_q = any(i < len(n.input) and g.is_const(n.input[i]) and n.input[i] not in g.consts
                       for i in (0, 1))  # a constant behind Q/DQ
        if (weight_q or quantized) and len(quantized) != len(acts):
            missing = [n.input[i] for i in acts if i not in quantized]
            out.append(Violation(n.name, "weighted-input", f"{n.op_type} is partly quantized: activation input(s) "
                                 f"{', '.join(missing)} are float; quantize every input of a weighted op or none"))
    return out


def _check_residual_adds(g: _Graph, adds: list[ResidualAdd]) -> list[Violation]:
    out = []
    by_name = {n.name: n for n in g.nodes}
    for a in adds:
        node = by_name[a.node]
        q = {i for i in (0, 1) if g.dequantized(node.input[i])}
        if a.fused is not None and a.fused in q:
            out.append(Violation(a.node, "residual-add-fusion", f"Q/DQ between '{a.weighted}' and this residual "
                                 "Add blocks its epilogue fusion; quantize the skip input only"))
        elif a.fused is None and len(q) == 1:
            out.append(Violation(a.node, "residual-add-mixed", f"only input {node.input[q.pop()]} of this Add is "
                                 "quantized; quantize both inputs or neither"))
    return out


def check_placement(model: Any) -> list[Violation]:
    """Every departure from TensorRT's Q/DQ placement recommendations (module docstring); [] when none."""
    g = _as_graph(model)
    return [*_check_weighted_outputs(g), *_check_weighted_inputs(g), *_check_residual_adds(g, residual_adds(g))]
