"""The ONNX graph each TensorRT generation imports: opset, LayerNorm form, and the rules a flavour must pass.

| generation | JetPack | opset | LayerNormalization | precision from |
|---|---|---|---|---|
| 8.5 | 5.1 | 16 | decomposed (its ONNX parser has no LayerNormalization importer) | builder flags + layer precisions |
| 8.6 | – | 17 | native op | builder flags + layer precisions |
| 10 | 6.x | 17 | native op | builder flags + layer precisions (explicit Q/DQ for INT8) |
| 11 | – | 17 | native op | the graph's types only (strongly typed; Q/DQ for INT8) |

The decomposition writes LayerNorm as ReduceMean→Sub→Pow→ReduceMean→Add→Sqrt→Div→Mul→Add, the form
`torch.onnx` emits below opset 17, so `quantize.decomposed_layernorms` finds it again and keeps it float, and the
FP32 islands of an FP16 engine can be pinned node by node.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ExportError
from ..toolkits.tensorrt import GENERATIONS

# Highest ONNX opset each generation's parser imports (TensorRT's support matrix: 8.5/8.6 → 17, 10.x → 20, 11 →
# 20); 8.5 is held to 16 because LayerNormalization (opset 17) has no importer there.
MAX_OPSET = {"8.5": 16, "8.6": 17, "10": 20, "11": 20}
UNSUPPORTED_OPS = {"8.5": ("LayerNormalization",)}


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _rank_of(model: Any, tensor: str) -> int | None:
    vi = {v.name: v for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)}
    v = vi.get(tensor)
    if v is None or not v.type.tensor_type.HasField("shape"):
        return None
    return len(v.type.tensor_type.shape.dim)


def _decompose_one(model: Any, ln: Any, rank: int, opset: int) -> list[Any]:
    """Primitive nodes computing `ln` (axis, epsilon, optional bias), named after it."""
    from onnx import helper, numpy_helper

    if len(ln.output) > 1 and any(ln.output[1:]):
        raise ExportError(f"LayerNormalization {ln.name} uses its Mean/InvStdDev outputs; TensorRT 8.5 bundles "
                          "cannot decompose it: export for --trt-version 8.6 or newer")
    axis = int(_attr(ln, "axis", -1))
    axes = list(range(axis % rank, rank))
    eps = float(_attr(ln, "epsilon", 1e-5))
    n, x = ln.name or ln.output[0], ln.input[0]
    t = {k: f"{n}/{k}" for k in ("mean", "d", "sq", "var", "ve", "sd", "norm", "scaled", "two", "eps", "axes")}
    consts = [numpy_helper.from_array(np.array(2.0, np.float32), t["two"]),
              numpy_helper.from_array(np.array(eps, np.float32), t["eps"])]
    model.graph.initializer.extend(consts)

    def reduce_mean(inp: str, out: str, name: str) -> Any:
        if opset >= 18:  # axes became an input in opset 18
            return helper.make_node("ReduceMean", [inp, t["axes"]], [out], name=name, keepdims=1)
        return helper.make_node("ReduceMean", [inp], [out], name=name, axes=axes, keepdims=1)

    if opset >= 18:
        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), t["axes"]))
    out = ln.output[0]
    has_bias = len(ln.input) > 2 and bool(ln.input[2])
    nodes = [
        reduce_mean(x, t["mean"], f"{n}/ReduceMean"),
        helper.make_node("Sub", [x, t["mean"]], [t["d"]], name=f"{n}/Sub"),
        helper.make_node("Pow", [t["d"], t["two"]], [t["sq"]], name=f"{n}/Pow"),
        reduce_mean(t["sq"], t["var"], f"{n}/ReduceMean_1"),
        helper.make_node("Add", [t["var"], t["eps"]], [t["ve"]], name=f"{n}/Add"),
        helper.make_node("Sqrt", [t["ve"]], [t["sd"]], name=f"{n}/Sqrt"),
        helper.make_node("Div", [t["d"], t["sd"]], [t["norm"]], name=f"{n}/Div"),
        helper.make_node("Mul", [t["norm"], ln.input[1]], [t["scaled"] if has_bias else out], name=f"{n}/Mul"),
    ]
    if has_bias:
        nodes.append(helper.make_node("Add", [t["scaled"], ln.input[2]], [out], name=f"{n}/Add_1"))
    return nodes


def decompose_layernorms(model: Any) -> Any:
    """A copy of `model` with every LayerNormalization written out in primitive ops (same numerics in FP32)."""
    import onnx

    m = onnx.shape_inference.infer_shapes(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 17)
    new_nodes = []
    for node in m.graph.node:
        if node.op_type != "LayerNormalization":
            new_nodes.append(node)
            continue
        rank = _rank_of(m, node.input[0])
        if rank is None:
            raise ExportError(f"cannot decompose LayerNormalization {node.name}: the rank of its input is unknown "
                              "(shape inference failed); export with a static input size")
        new_nodes.extend(_decompose_one(m, node, rank, opset))
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    return m


def set_opset(model: Any, version: int) -> Any:
    """`model` declared at ONNX opset `version` (for graphs whose ops mean the same at both versions)."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    return model


def flavour_for(model: Any, generation: str) -> Any:
    """The graph for one TensorRT generation (a copy; `model` is left as it was), checked by `generation_rules`."""
    import onnx

    if generation not in GENERATIONS:
        raise ExportError(f"unknown TensorRT generation {generation!r}; choose one of {', '.join(GENERATIONS)}")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if generation == "8.5":
        m = decompose_layernorms(m)
        if opset > MAX_OPSET["8.5"]:
            if opset > 17:
                raise ExportError(f"the FP32 ONNX is at opset {opset}; TensorRT 8.5 bundles start from opset 17 or "
                                  "lower: re-export with --opset 17")
            m = set_opset(m, MAX_OPSET["8.5"])  # 17 → 16: LayerNormalization was the only opset-17 op in use
    problems = generation_rules(m, generation)
    if problems:
        raise ExportError(f"the TensorRT {generation} flavour breaks {len(problems)} rule(s), first: {problems[0]}")
    return m


def islands_in(graph: Any, islands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`islands` ({node, op, reason}) named as in `graph`: a LayerNorm decomposed by `flavour_for` becomes its
    primitive nodes (named '<LayerNorm>/<op>'), so the device pins each of them to FP32; unknown names are dropped."""
    names = {n.name: n for n in graph.graph.node}
    out: list[dict[str, Any]] = []
    for isl in islands:
        if isl["node"] in names:
            out.append(dict(isl))
            continue
        prefix = f"{isl['node']}/"
        out.extend({"node": n.name, "op": n.op_type, "reason": f"{isl['reason']} (decomposed)"}
                   for n in graph.graph.node if n.name.startswith(prefix))
    return out


def generation_rules(model: Any, generation: str) -> list[str]:
    """What keeps TensorRT `generation` from importing `model` (opset too new, ops it lacks, invalid graph); [] if none."""
    import onnx

    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > MAX_OPSET[generation]:
        problems.append(f"opset {opset} is above {MAX_OPSET[generation]}, the highest TensorRT {generation} imports")
    for node in model.graph.node:
        if node.op_type in UNSUPPORTED_OPS.get(generation, ()):
            problems.append(f"{node.name or node.op_type}: TensorRT {generation} cannot import {node.op_type}")
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or node.op_type}: custom-domain op {node.domain}.{node.op_type}")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError: both are rule breaks here
        problems.append(f"onnx checker: {str(e).splitlines()[0]}")
    return problems


__all__ = ["MAX_OPSET", "UNSUPPORTED_OPS", "decompose_layernorms", "flavour_for", "generation_rules", "islands_in",
           "set_opset"]
