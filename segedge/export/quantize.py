"""ONNX Runtime static quantization (QDQ) from a cached calibration table, shared by every INT8 ONNX target.

Flavours:
- `ORT_CPU` (target ort-int8): uint8 asymmetric activations (set explicitly: ORT 1.31 defaults to int8), int8
  weights, per-tensor, in one of two scopes chosen per model family (`ort_cpu_flavour`):
  * `all`: every op onnxruntime can quantize (TopFormer: a CNN whose chains stay int8 end to end);
  * `conv`: dense (group 1) convolutions and the Resize/Concat feeding them; Linear/MatMul, GELU, LayerNorm and
    depthwise convs stay float (SegFormer). Measured on an Intel Xeon with AVX-512 VNNI/AMX, 2 threads, B0
    384×512, back to back (benchmarks/int8_flavours.py): scope `all` 0.77× FP32 latency, `conv` 0.66×, both
    within 0.1 pt mIoU. In a
    transformer block every int8 GEMM sits between float LayerNorm/Softmax/GELU, so each one costs a
    QuantizeLinear + DequantizeLinear pass over its activations (single-threaded in ORT) and MLAS's u8s8 kernels
    are no faster than its FP32 ones at K ≤ 64; the decode head's 1×1 fuse conv (K = 1024) is where int8 pays.
  Concat inputs share one range (`share_concat_ranges`) so QLinearConcat is a copy, not a requantization.
- `TENSORRT` (target qdq, consumed by trt-int8): int8 symmetric activations and weights, zero points 0, per-channel
  weights on the output-channel axis, float weights behind Q→DQ pairs (the QAT-export form every TensorRT since 8.x
  parses), biases left float. Slow in ORT (most pairs do not fuse), so it is the TensorRT artifact, not the CPU one.
  Placement "tensorrt" follows NVIDIA's Q/DQ placement recommendations (`qdq_rules.check_placement`): Q/DQ on the
  inputs of Conv/ConvTranspose/Gemm/MatMul (activation × activation MatMuls too), never on their outputs, and on the
  skip input of each residual Add whose other input is a quantized weighted op's sole output, so TensorRT fuses the
  Add into that op's epilogue; a float op never reads a dequantized tensor. onnxruntime's quantizer computes the
  scales (`OpTypesToExcludeOutputQuantization` keeps outputs float); `keep_planned_qdq` then points every reader
  outside the plan (LayerNorm, GELU, the fused input of a residual Add, …) back at the float tensor.
  Softmax outputs read by a quantized op keep their definitional range [0, 1] (`unit_softmax_ranges`), not the
  calibrated one, as onnxruntime does for a Softmax it quantizes and ModelOpt does.
  `TENSORRT_ORT_PLACEMENT` is the placement segedge shipped before (onnxruntime's default: inputs *and* outputs of
  every quantized op, shared by float readers), kept for benchmarks/qdq_placement.py.

Precision-sensitive nodes stay float by default: LayerNorm (the op, or its decomposed ReduceMean/Sub/Pow/Sqrt/Div
pattern at opset 16), Softmax, the final classifier conv and any Resize after it (logit upsampling).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import SegedgeError
from .calibration import CalibrationTable


@dataclass(frozen=True)
class QuantFlavour:
    """How an INT8 target quantizes: types, symmetry, granularity, which ops."""

    name: str
    activation_type: str  # "uint8" | "int8"
    weight_type: str = "int8"
    per_channel: bool = False
    activation_symmetric: bool = False
    quantize_bias: bool = True
    weights_as_qdq_pair: bool = False
    op_types: tuple[str, ...] | None = None  # None: every op type onnxruntime can quantize
    scope: str = "all"  # "all" | "conv" (see module docstring)
    share_concat_ranges: bool = False
    placement: str = "onnxruntime"  # "onnxruntime": quantize_static's own | "tensorrt": NVIDIA's (module docstring)
    softmax_unit_range: bool = False  # Softmax outputs quantized on [0, 1] whatever the calibration saw

    def describe(self) -> dict[str, Any]:
        """The manifest's flavour fields."""
        d = asdict(self)
        d["format"] = "QDQ"
        d["activations"] = "per-tensor " + ("symmetric" if self.activation_symmetric else "asymmetric")
        d["weights"] = ("per-channel" if self.per_channel else "per-tensor") + " symmetric"
        d["op_types"] = list(self.op_types) if self.op_types else "all onnxruntime-quantizable"
        if self.scope == "conv":
            d["op_types"] = ["Conv (group 1)", "Resize/Concat feeding a quantized Conv"]
        if self.placement == "tensorrt":
            d["op_types"] = ["inputs of " + "/".join(o for o in self.op_types or () if o != "Add"),
                             "skip input of residual Adds fused into a weighted op"]
        return d


ORT_SCOPES = ("auto", "all", "conv")
ORT_CPU = QuantFlavour("ort-u8s8", activation_type="uint8", share_concat_ranges=True)
ORT_CPU_CONV = QuantFlavour("ort-u8s8-conv", activation_type="uint8", op_types=("Conv", "Resize", "Concat"),
                            scope="conv", share_concat_ranges=True)
# Family → scope measured fastest at equal accuracy (module docstring); families not listed use "all".
ORT_SCOPE_BY_FAMILY = {"segformer": "conv"}
TENSORRT_ORT_PLACEMENT = QuantFlavour("tensorrt-s8s8-ort-placement", activation_type="int8", per_channel=True,
                                      activation_symmetric=True, quantize_bias=False, weights_as_qdq_pair=True,
                                      op_types=("Conv", "ConvTranspose", "MatMul", "Gemm"))
TENSORRT = dataclasses.replace(TENSORRT_ORT_PLACEMENT, name="tensorrt-s8s8",
                               op_types=("Conv", "ConvTranspose", "MatMul", "Gemm", "Add"), placement="tensorrt",
                               softmax_unit_range=True)


@dataclass(frozen=True)
class KeptFloat:
    """A node deliberately left in float, and why."""

    node: str
    op: str
    reason: str


def _index(model: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    producer, consumers = {}, {}
    for n in model.graph.node:
        for o in n.output:
            producer[o] = n
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _follow(tensor: str, op: str, consumers: dict[str, list[Any]], path: list[Any]) -> Any | None:
    """The consumer of `tensor` of type `op`, looking through Transposes (ORT's transpose optimizer inserts them)."""
    for n in consumers.get(tensor, []):
        if n.op_type == op:
            return n
        if n.op_type == "Transpose":
            found = _follow(n.output[0], op, consumers, path)
            if found is not None:
                path.append(n)
                return found
    return None


def decomposed_layernorms(model: Any) -> list[list[Any]]:
    """Node clusters of LayerNorm written out as ReduceMean→Sub→Pow→ReduceMean→Add→Sqrt→Div(→Mul→Add)."""
    inits = {t.name for t in model.graph.initializer}
    _, consumers = _index(model)
    clusters = []
    for a in model.graph.node:
        if a.op_type != "ReduceMean":
            continue
        sub = next((n for n in consumers.get(a.output[0], []) if n.op_type == "Sub" and n.input[1] == a.output[0]),
                   None)
        if sub is None:
            continue
        path: list[Any] = []
        chain = [a, sub]
        cur = sub.output[0]
        ok = True
        for op in ("Pow", "ReduceMean", "Add", "Sqrt", "Div"):
            nxt = _follow(cur, op, consumers, path)
            if nxt is None:
                ok = False
                break
            chain.append(nxt)
            cur = nxt.output[0]
        if not ok:
            continue
        for op in ("Mul", "Add"):  # the affine part, when it survived constant folding
            nxt = next((n for n in consumers.get(cur, []) if n.op_type == op and any(i in inits for i in n.input)),
                       None)
            if nxt is None:
                break
            chain.append(nxt)
            cur = nxt.output[0]
        clusters.append(chain + path)
    return clusters


def default_keep_float(model: Any) -> list[KeptFloat]:
    """The precision-sensitive nodes kept float unless --quantize-all."""
    kept: dict[str, KeptFloat] = {}
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            kept[n.name] = KeptFloat(n.name, n.op_type, "LayerNorm")
        elif n.op_type == "Softmax":
            kept[n.name] = KeptFloat(n.name, n.op_type, "Softmax")
    for cluster in decomposed_layernorms(model):
        for n in cluster:
            kept.setdefault(n.name, KeptFloat(n.name, n.op_type, "LayerNorm (decomposed)"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if convs:
        cls = convs[-1]
        kept[cls.name] = KeptFloat(cls.name, cls.op_type, "final classifier conv")
        _, consumers = _index(model)
        todo, seen = [cls.output[0]], set()
        while todo:  # any Resize downstream of the classifier is the logit upsampling
            t = todo.pop()
            for n in consumers.get(t, []):
                if n.name in seen:
                    continue
                seen.add(n.name)
                if n.op_type == "Resize":
                    kept[n.name] = KeptFloat(n.name, n.op_type, "last Resize (logit upsampling)")
                todo.extend(n.output)
    return list(kept.values())


def resolve_keep_float(model: Any, items: Iterable[str]) -> list[KeptFloat]:
    """`--keep-float` items (op types, node names or glob patterns of node names) → nodes; unknown items error."""
    nodes = list(model.graph.node)
    ops = {n.op_type for n in nodes}
    out: dict[str, KeptFloat] = {}
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        hits = [n for n in nodes if n.op_type == item or n.op_type.lower() == item.lower()] if \
            item in ops or item.lower() in {o.lower() for o in ops} else \
            [n for n in nodes if n.name == item or fnmatch.fnmatchcase(n.name, item)]
        if not hits:
            raise SegedgeError(f"--keep-float '{item}' matches no op type or node in this graph; op types here: "
                               f"{', '.join(sorted(ops))}")
        for n in hits:
            out.setdefault(n.name, KeptFloat(n.name, n.op_type, f"--keep-float {item}"))
    return list(out.values())


def select_kept_float(model: Any, keep_float: Sequence[str] = (), quantize_all: bool = False,
                      flavour: QuantFlavour | None = None, extra: Sequence[KeptFloat] = ()) -> list[KeptFloat]:
    """Defaults (unless quantize_all) plus the user's --keep-float items plus `extra` (float islands chosen by the
    sensitivity search), plus what the flavour's scope leaves float."""
    kept = {} if quantize_all else {k.node: k for k in default_keep_float(model)}
    for k in [*resolve_keep_float(model, keep_float), *extra]:
        kept.setdefault(k.node, k)
    if flavour is not None:
        for k in out_of_scope(model, flavour, list(kept.values())):
            kept.setdefault(k.node, k)
    return list(kept.values())


def check_ort_scope(scope: str) -> str:
    """`scope` when it is one of ORT_SCOPES, else a one-line SegedgeError."""
    if scope not in ORT_SCOPES:
        raise SegedgeError(f"--ort-scope must be one of {', '.join(ORT_SCOPES)}, got '{scope}'")
    return scope


def ort_cpu_flavour(family: str, scope: str = "auto") -> QuantFlavour:
    """The ort-int8 flavour for a model family; `scope` ("auto" | "all" | "conv") overrides the family default."""
    if check_ort_scope(scope) == "auto":
        scope = ORT_SCOPE_BY_FAMILY.get(family, "all")
    return ORT_CPU_CONV if scope == "conv" else ORT_CPU


def _is_depthwise(node: Any) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def out_of_scope(model: Any, flavour: QuantFlavour, kept_float: Sequence[KeptFloat]) -> list[KeptFloat]:
    """Nodes of the flavour's op types that its scope leaves float (scope "conv": depthwise convs, and Resize/Concat
    that do not feed a quantized Conv directly or through other Resize/Concat)."""
    if flavour.scope != "conv":
        return []
    kept = {k.node for k in kept_float}
    _, consumers = _index(model)
    out: list[KeptFloat] = []
    dense = {n.name for n in model.graph.node if n.op_type == "Conv" and not _is_depthwise(n) and n.name not in kept}
    feeds: dict[str, bool] = {}

    def feeds_conv(n: Any) -> bool:  # memoised walk down through Resize/Concat only
        if n.name not in feeds:
            feeds[n.name] = False
            feeds[n.name] = any(c.name in dense or (c.op_type in ("Resize", "Concat") and c.name not in kept
                                                    and feeds_conv(c))
                                for o in n.output for c in consumers.get(o, []))
        return feeds[n.name]

    for n in model.graph.node:
        if n.name in kept:
            continue
        if _is_depthwise(n):
            out.append(KeptFloat(n.name, n.op_type, "scope conv: depthwise conv"))
        elif n.op_type in ("Resize", "Concat") and not feeds_conv(n):
            out.append(KeptFloat(n.name, n.op_type, "scope conv: does not feed a quantized conv"))
    return out


# Ops whose quantized output reuses their input's scale/zero point in onnxruntime's QDQ quantizer.
PASS_THROUGH = ("Resize", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "MaxPool")


def share_concat_ranges(model: Any, table: CalibrationTable, excluded: Iterable[str] = ()) -> CalibrationTable:
    """A copy of `table` where every quantized Concat's inputs and output share one range (their union), also
    upstream through pass-through ops (Resize, Transpose, Reshape, …) as long as a tensor feeds only that path: ORT
    then runs QLinearConcat as a plain copy instead of a per-input requantization (TensorRT elides such concats)."""
    import copy

    skip = set(excluded)
    producer, consumers = _index(model)
    out = copy.copy(table)
    ranges = dict(table.ranges)
    for n in model.graph.node:
        if n.op_type != "Concat" or n.name in skip:
            continue
        names = list(n.output)
        for t in n.input:
            names.append(t)
            p = producer.get(t)
            # a tensor shared with another path keeps its measured range, so the walk stops before it
            while (p is not None and p.op_type in PASS_THROUGH and p.name not in skip
                   and len(consumers.get(t, [])) == 1 and len(consumers.get(p.input[0], [])) == 1):
                t = p.input[0]
                names.append(t)
                p = producer.get(t)
        names = [x for x in names if x in ranges]
        if len(names) < 2:
            continue
        lo, hi = min(ranges[x][0] for x in names), max(ranges[x][1] for x in names)
        for x in names:
            ranges[x] = [lo, hi]
    out.ranges = ranges
    return out


def unit_softmax_ranges(model: Any, table: CalibrationTable) -> CalibrationTable:
    """A copy of `table` where each Softmax output, and each tensor reached from it through shape-only ops
    (Reshape, Transpose, …) read by nothing else, has the range [0, 1].

    Why: a calibrated attention range is far below 1 (B0's first-stage maps peak at 0.07-0.08 on its 32 calibration
    frames) and clips the sharper maps of other frames; entropy calibration clips it further. Measured through the
    ONNX Runtime proxy (benchmarks/qdq_placement.py, results/qdq-placement/): B0 with minmax loses 0.12 pt mIoU on
    CamVid val and 0.22 on the dusk drive with calibrated ranges, 0.01 and 0.01 with [0, 1]; ModelOpt's graph (which
    uses [0, 1]) drops from 0.06 / 0.18 to 0.21 / 0.43 when given the calibrated ranges; TopFormer-T with entropy
    loses 4.1 pt with calibrated ranges, 0.8 with [0, 1] (with minmax its ranges already reach 1)."""
    import copy

    from .qdq_rules import SHAPE_OPS

    _, consumers = _index(model)
    ranges = dict(table.ranges)
    for n in model.graph.node:
        if n.op_type != "Softmax":
            continue
        todo = [n.output[0]]
        while todo:
            t = todo.pop()
            ranges[t] = [0.0, 1.0]
            readers = consumers.get(t, [])
            todo += [r.output[0] for r in readers if r.op_type in SHAPE_OPS and len(readers) == 1]
    out = copy.copy(table)
    out.ranges = ranges
    return out


@dataclass(frozen=True)
class Placement:
    """Where TensorRT's placement puts Q/DQ in one graph: the (node, input index) slots that read a dequantized
    activation, and the Adds onnxruntime must leave alone (every Add that is not a fusible residual Add)."""

    slots: frozenset[tuple[str, int]]
    float_adds: tuple[str, ...]


def tensorrt_placement(model: Any, kept_float: Sequence[KeptFloat]) -> Placement:
    """The Q/DQ plan of placement "tensorrt" for a quant_pre_process'ed graph (module docstring)."""
    from .qdq_rules import WEIGHTED_OPS, quantized_input_slots, residual_adds

    kept = {k.node for k in kept_float}
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS and n.name not in kept]
    # Only an Add that fuses into a weighted op we quantize gains from an int8 skip input; the rest stay float.
    adds = [a for a in residual_adds(model) if a.weighted in weighted and a.node not in kept]
    chosen = {a.node for a in adds}
    float_adds = tuple(n.name for n in model.graph.node if n.op_type == "Add" and n.name not in chosen)
    return Placement(frozenset(quantized_input_slots(model, weighted, adds)), float_adds)


def keep_planned_qdq(qmodel: Any, slots: frozenset[tuple[str, int]]) -> int:
    """Point every reader of an activation DequantizeLinear that is not a planned slot back at the float tensor,
    then drop the Q/DQ nodes nobody reads; returns how many readers were moved."""
    graph = qmodel.graph
    consts = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output}
    float_of = {}  # DQ output → the float tensor its Q quantizes
    for dq in graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts \
                and dq.output[0] not in outputs:  # a quantized graph output keeps its pair
            float_of[dq.output[0]] = q.input[0]
    moved = 0
    for n in graph.node:
        for i, t in enumerate(n.input):
            if t in float_of and (n.name, i) not in slots:
                n.input[i] = float_of[t]
                moved += 1
    while True:  # a DQ left unread frees its Q
        read = {t for n in graph.node for t in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            return moved
        for n in dead:
            graph.node.remove(n)


def _ort_extra_options(flavour: QuantFlavour) -> dict[str, Any]:
    """quantize_static's extra_options for a flavour (ort-int8's are unchanged since segedge 0.2)."""
    extra = {
        "ActivationSymmetric": flavour.activation_symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": flavour.quantize_bias,
        "AddQDQPairToWeight": flavour.weights_as_qdq_pair,
        # nn.Linear exports as MatMul with a [in, out] weight: its output channels are axis 1.
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
    }
    if flavour.placement == "tensorrt":
        # No Q/DQ on any output: a weighted op's output feeds its epilogue (bias, residual Add) at full precision.
        # Shared pairs (one Q/DQ per tensor) are what ModelOpt writes too; TensorRT duplicates DQs as it fuses.
        extra.update(OpTypesToExcludeOutputQuantization=list(flavour.op_types or ()), DedicatedQDQPair=False)
    return extra


def quantize(pre_model_path: str | Path, table: CalibrationTable, flavour: QuantFlavour,
             kept_float: Sequence[KeptFloat], work_dir: str | Path | None = None) -> Any:
    """quantize_static (QDQ) of a quant_pre_process'ed model with the table's ranges; returns the ModelProto."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    excluded = [k.node for k in kept_float]
    if flavour.share_concat_ranges:
        table = share_concat_ranges(onnx.load(str(pre_model_path)), table, excluded)
    if flavour.softmax_unit_range:
        table = unit_softmax_ranges(onnx.load(str(pre_model_path)), table)
    extra = _ort_extra_options(flavour)
    plan = tensorrt_placement(onnx.load(str(pre_model_path)), kept_float) if flavour.placement == "tensorrt" else None
    # work_dir: the export's staging area, so a killed export leaves no temp folder behind elsewhere.
    with tempfile.TemporaryDirectory(prefix="segedge-quant-", dir=work_dir) as td:
        cache = table.write_ort_cache(Path(td) / "ranges.json")
        out = Path(td) / "quantized.onnx"
        quant_logger = logging.getLogger()
        level = quant_logger.level
        quant_logger.setLevel(logging.ERROR)  # quantize_static logs advice at WARNING for every call
        try:
            quantize_static(
                str(pre_model_path), str(out), None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(flavour.op_types) if flavour.op_types else None,
                per_channel=flavour.per_channel, reduce_range=False,
                activation_type=qtype[flavour.activation_type], weight_type=qtype[flavour.weight_type],
                nodes_to_exclude=excluded + list(plan.float_adds if plan else ()),
                calibrate_method=table.to_tensors_data().calibration_method,
                calibration_cache_path=str(cache), extra_options=extra)
        finally:
            quant_logger.setLevel(level)
        qmodel = onnx.load(str(out))
    if plan is not None:
        keep_planned_qdq(qmodel, plan.slots)
    return qmodel


def quantizable_op_types() -> list[str]:
    """Op types onnxruntime's quantize_static handles by default (its QLinear and QDQ registries)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


def summarize(qmodel: Any, kept_float: Sequence[KeptFloat], flavour: QuantFlavour) -> dict[str, Any]:
    """The manifest's `quantization` entry: flavour, quantized nodes (by op) and nodes kept float (with reasons)."""
    # A node counts as quantized when it is of a type the flavour quantizes, was not kept float, and now reads
    # at least one dequantized input (a float op fed by a shared DQ, e.g. Softmax after a quantized MatMul, is not).
    ops = set(flavour.op_types or quantizable_op_types())
    kept = {k.node for k in kept_float}
    dq_out = {o for n in qmodel.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized = [n for n in qmodel.graph.node if n.op_type in ops and n.name not in kept
                 and any(i in dq_out for i in n.input)]
    return {
        **flavour.describe(),
        "quantized_nodes": len(quantized),
        "quantized_by_op": dict(Counter(n.op_type for n in quantized).most_common()),
        "quantized": [n.name for n in quantized],
        "kept_float": [asdict(k) for k in kept_float],
        "kept_float_by_reason": dict(Counter(k.reason for k in kept_float)),
        "qdq_nodes": sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in qmodel.graph.node),
    }
