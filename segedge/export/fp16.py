"""FP16 safety for TensorRT: which nodes stay FP32 (from the graph and from measured ranges), the FP16 graphs, a proxy.

TensorRT FP16 engines of SegFormer give wrong masks when LayerNorm runs in FP16 (its variance loses precision and
x² overflows for |x| > 256); TensorRT ≤ 10 takes the FP32 graph with the FP16 builder flag and per-layer FP32
precision for the islands, TensorRT 11 is strongly typed and takes an FP16-typed graph whose islands are FP32 by
type. Without a GPU the numerics are shown on CPU through `fp16_proxy`: the FP32 graph with FP16 storage.

- `tensor_ranges(model, inputs)`: min/max of every float activation of `model` (graph input and node outputs),
  measured with ONNX Runtime on the model itself, so the names are those of `model`. The calibration table is not
  reused: its names refer to the quant_pre_process'ed graph (ORT-optimized, renamed), not to model.onnx, nor to
  the TensorRT 8.5 flavour whose decomposed LayerNorm tensors exist in neither.
- `fp32_islands(model, ranges)`: [{node, op, reason}] for LayerNorm (op or decomposed), Softmax, the head's final
  Resize/ArgMax, nodes whose measured output is too large for FP16, nodes squaring a tensor beyond 256 and nodes
  reading weights beyond FP16.
- `fp16_typed_graph(model, islands)`: FP16 weights and activations, islands FP32 with Casts at their borders,
  float32 graph inputs/outputs (onnxconverter-common's converter plus the fix-ups it needs).
- `fp16_proxy(model, islands)`: FP32 graph with FP16 storage semantics that ONNX Runtime's CPU provider runs.
- `fp16_flavour(model, generation, ranges)`: what the trt-fp16 target ships for one TensorRT generation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ExportError, SegedgeError, first_line

FP16_MAX = 65504.0  # largest finite FP16 value; from 65520 on a cast rounds to inf
FP16_TINY = 2.0 ** -24  # smallest positive FP16 (subnormal)
# An output is pinned to FP32 when its measured |max| exceeds FP16_MAX / RANGE_MARGIN. Ranges come from a few
# dozen calibration frames while the engine meets every frame the camera sees, and a tensor's peak grows on frames
# unlike the calibration set. benchmarks/fp16_proxy.py measures how much: on CamVid val and the dusk drive 0001TP
# no tensor of the demo models (calibration peak ≥ 1) went beyond 1.23x its peak on the 32 calibration frames
# (p99 1.15x); 4x leaves three times that headroom and still sits far above a healthy network's activations
# (≤ 1.1e3 in both demo models), so only tensors that really head for 65504 are pinned.
RANGE_MARGIN = 4.0
SQUARE_LIMIT = 256.0  # 256² = 65536 > FP16_MAX: a squared tensor beyond this overflows in FP16
FLOAT_TYPES = (1, 10, 11, 16)  # onnx TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
TAIL_OPS = ("Resize", "ArgMax")  # decide the labels: kept FP32 when they follow the classifier
LINEAR_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the classifier ends the head's tail (walking back)
SQUARE_OPS = ("ReduceSumSquare", "ReduceL2")
FP32_ONLY_OPS = ("Range",)  # float inputs without a float16 type in the ONNX schema

LAYERNORM_REASON = "LayerNorm: variance in FP16 loses precision"
SOFTMAX_REASON = "Softmax: exp-sum of attention scores loses precision in FP16"
TAIL_REASON = "head: final {op} decides the labels, kept FP32 so near ties are not flipped by FP16 rounding"


def node_id(node: Any) -> str:
    """The name a node is pinned by: its name, or its first output for an unnamed node."""
    return node.name or node.output[0]


# -- measured ranges ------------------------------------------------------------------------------------------------
def float_tensor_types(model: Any) -> dict[str, int]:
    """Float tensors of `model` (graph inputs and node outputs) → onnx elem type, after shape inference."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # noqa: BLE001 - onnx raises InferenceError and friends
        raise ExportError(f"ONNX shape inference fails on this graph ({first_line(e)}); re-export it with "
                          "`segedge export`") from e
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    produced = [o for n in inferred.graph.node for o in n.output if o]
    inits = {t.name for t in inferred.graph.initializer}
    names = [i.name for i in inferred.graph.input if i.name not in inits] + produced
    return {n: types[n] for n in names if types.get(n) in FLOAT_TYPES}


def _ranges_session(model: Any, names: Sequence[str], types: dict[str, int], threads: int | None) -> Any:
    """A CPU session of `model` that also returns every tensor in `names` (graph optimizations off: exact names)."""
    import onnx

    from .verify import ort_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, types[n], None) for n in names if n not in have)
    try:
        return ort_session(m, threads=threads, optimize=False)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise ExportError(f"onnxruntime cannot run this graph to measure its ranges ({first_line(e)}); "
                          "re-export it with `segedge export`") from e


def tensor_ranges(model: Any, inputs: list[np.ndarray], threads: int | None = None) -> dict[str, tuple[float, float]]:
    """Min/max of every float activation of `model` (graph input, node outputs; weights are read by fp32_islands from
    the graph itself) over the model-input batches, with ONNX Runtime CPU, batch by batch."""
    if not inputs:
        raise SegedgeError("no input batches to measure FP16 ranges on; pass at least one pre-processed frame")
    types = float_tensor_types(model)
    names = list(types)
    sess = _ranges_session(model, names, types, threads)
    feeds = sess.get_inputs()
    if len(feeds) != 1:
        raise SegedgeError(f"tensor_ranges takes single-input graphs; this one has {len(feeds)} inputs")
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    for k, x in enumerate(inputs):
        if not isinstance(x, np.ndarray):
            raise SegedgeError(f"input batch {k} is a {type(x).__name__}, not a numpy array; pass pre-processed "
                               "model inputs (Segmenter.prepare)")
        try:
            outs = sess.run(names, {feeds[0].name: x})
        except Exception as e:  # noqa: BLE001 - onnxruntime raises on wrong shapes and dtypes
            raise SegedgeError(f"input batch {k} ({x.dtype} {'x'.join(map(str, x.shape))}) does not fit the graph: "
                               f"{first_line(e)}; pass pre-processed model inputs (Segmenter.prepare)") from e
        for n, a in zip(names, outs):
            if a.size:  # min/max in float64 so a float16 or bfloat16 tensor's extremes are exact
                lo[n] = min(lo[n], float(np.min(a)))
                hi[n] = max(hi[n], float(np.max(a)))
        del outs  # one batch of intermediates at a time
    return {n: (lo[n], hi[n]) for n in names if lo[n] <= hi[n]}


# -- islands --------------------------------------------------------------------------------------------------------
def _island(node: Any, reason: str) -> dict[str, str]:
    return {"node": node_id(node), "op": node.op_type, "reason": reason}


def _abs_max(r: Sequence[float]) -> float:
    return max(abs(float(r[0])), abs(float(r[1])))


def _structural_islands(model: Any) -> dict[str, dict[str, str]]:
    """LayerNorm (op or decomposed), Softmax and the head's final Resize/ArgMax: FP32 whatever the ranges."""
    from .quantize import decomposed_layernorms

    out: dict[str, dict[str, str]] = {}
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            out[node_id(n)] = _island(n, LAYERNORM_REASON)
        elif n.op_type == "Softmax":
            out[node_id(n)] = _island(n, SOFTMAX_REASON)
        elif n.op_type in FP32_ONLY_OPS:
            out[node_id(n)] = _island(n, f"{n.op_type}: ONNX defines no FP16 form of it")
    for cluster in decomposed_layernorms(model):
        for n in cluster:
            out.setdefault(node_id(n), _island(n, f"{LAYERNORM_REASON} (decomposed: {n.op_type})"))
    for n in _head_tail(model):
        out.setdefault(node_id(n), _island(n, TAIL_REASON.format(op=n.op_type)))
    return out


def _head_tail(model: Any) -> list[Any]:
    """Resize/ArgMax nodes between the last linear layer (the classifier) and a graph output."""
    producer = {o: n for n in model.graph.node for o in n.output}
    todo, seen, tail = [o.name for o in model.graph.output], set(), []
    while todo:
        n = producer.get(todo.pop())
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if n.op_type in TAIL_OPS:
            tail.append(n)
        if n.op_type not in LINEAR_OPS:  # the classifier ends the walk: what feeds it is not the tail
            todo.extend(i for i in n.input if i)
    return tail


def _squared_input(node: Any, consts: dict[str, np.ndarray]) -> str | None:
    """The tensor `node` squares (Pow by 2, Mul x·x, ReduceSumSquare, ReduceL2), or None."""
    if node.op_type in SQUARE_OPS or (node.op_type == "Mul" and len(node.input) == 2
                                      and node.input[0] == node.input[1]):
        return node.input[0]
    if node.op_type == "Pow" and node.input[1] in consts and np.all(consts[node.input[1]] == 2):
        return node.input[0]
    return None


def _range_reason(node: Any, ranges: dict[str, Sequence[float]], consts: dict[str, np.ndarray]) -> str | None:
    """Why the measured ranges keep `node` in FP32, or None."""
    limit = FP16_MAX / RANGE_MARGIN
    reasons = []
    outs = [_abs_max(ranges[o]) for o in node.output if o in ranges]
    if outs and max(outs) > limit:
        m = max(outs)
        what = "overflows FP16" if m > FP16_MAX else f"is within {RANGE_MARGIN:g}x of the FP16 limit {FP16_MAX:g}"
        reasons.append(f"output max {m:.3g} {what}")
    ins = [(_abs_max(ranges[i]), i) for i in node.input if i and i in ranges and i not in consts]
    if ins and max(ins)[0] > limit:  # the border Cast to FP16 would overflow it on the way in
        reasons.append(f"input {max(ins)[1]} max {max(ins)[0]:.3g} would overflow FP16 on its way in")
    sq = _squared_input(node, consts)
    if sq is not None and sq in ranges and _abs_max(ranges[sq]) > SQUARE_LIMIT:
        reasons.append(f"squares a tensor of max {_abs_max(ranges[sq]):.3g} > {SQUARE_LIMIT:g}: x² overflows FP16")
    if node.op_type == "LayerNormalization" and node.input[0] in ranges \
            and _abs_max(ranges[node.input[0]]) > SQUARE_LIMIT:
        reasons.append(f"LayerNorm input max {_abs_max(ranges[node.input[0]]):.3g} > {SQUARE_LIMIT:g}: its variance "
                       "overflows FP16")
    for i in node.input:
        if i in consts and consts[i].dtype.kind == "f" and consts[i].size and np.abs(consts[i]).max() > FP16_MAX:
            reasons.append(f"weight {i} max {float(np.abs(consts[i]).max()):.3g} overflows FP16")
    return "; ".join(reasons) or None


def _check_ranges_cover(model: Any, ranges: dict[str, Sequence[float]]) -> None:
    """One line when `ranges` name no tensor of `model` (e.g. a calibration table of another graph)."""
    known = {o for n in model.graph.node for o in n.output if o} | {i.name for i in model.graph.input} | \
        {t.name for t in model.graph.initializer}
    if ranges and not known & set(ranges):
        raise SegedgeError(f"the {len(ranges)} ranges given name no tensor of this graph (they were measured on "
                           "another graph, e.g. the quant_pre_process'ed one the calibration table refers to); "
                           "measure them on this graph with segedge.export.fp16.tensor_ranges(model, inputs)")


def fp32_islands(model: Any, ranges: dict[str, Sequence[float]] | None = None) -> list[dict[str, str]]:
    """Nodes that must stay FP32 in an FP16 engine, each {"node", "op", "reason"}, in graph order."""
    from onnx import numpy_helper

    ranges = dict(ranges or {})
    _check_ranges_cover(model, ranges)
    found = _structural_islands(model)
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        why = _range_reason(n, ranges, consts)
        if why is None:
            continue
        key = node_id(n)
        found[key] = _island(n, f"{found[key]['reason']}; {why}" if key in found else why)
    order = {node_id(n): i for i, n in enumerate(model.graph.node)}
    return sorted(found.values(), key=lambda d: order[d["node"]])


# -- the FP16-typed graph (TensorRT 11) -----------------------------------------------------------------------------
def _copy(model: Any) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _island_names(model: Any, islands: Iterable[Any] | None) -> set[str]:
    """Island node ids from [{node, …}] or plain names; one line for a name that is not a node of `model`."""
    names = {i["node"] if isinstance(i, dict) else str(i) for i in (islands or [])}
    unknown = names - {node_id(n) for n in model.graph.node}
    if unknown:
        raise SegedgeError(f"{len(unknown)} FP32 island(s) name no node of this graph (first: "
                           f"{sorted(unknown)[0]!r}); compute the islands on this graph with fp32_islands(model, …)")
    return names


def _refuse_fp16(model: Any) -> None:
    """One line when `model` already holds FP16 tensors: the FP16 graphs are made from the FP32 one."""
    fp16 = [t.name for t in model.graph.initializer if t.data_type == 10] + \
        [n.name for n in model.graph.node if n.op_type == "Cast" and _cast_to(n) == 10]
    if fp16:
        raise SegedgeError(f"this graph already holds FP16 tensors ({fp16[0]!r}, …); make the FP16 graphs from the "
                           "FP32 model.onnx")


def _cast_to(node: Any) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _prepare_for_converter(model: Any, islands: set[str]) -> Any:
    """A copy the converter handles: every node named, initializers shared by an island and another node split,
    non-island Casts to FLOAT retargeted to FLOAT16 (the converter leaves them FP32)."""
    import onnx

    m = _copy(model)
    for n in m.graph.node:
        if not n.name:
            n.name = node_id(n)
    inits = {t.name: t for t in m.graph.initializer}
    users: dict[str, list[Any]] = {}
    for n in m.graph.node:
        for i in n.input:
            if i in inits:
                users.setdefault(i, []).append(n)
    for name, nodes in users.items():
        if len({n.name in islands for n in nodes}) == 2:  # the converter would leave it FP32 for both sides
            copy = m.graph.initializer.add()
            copy.CopyFrom(inits[name])
            copy.name = _fresh_name(m, f"{name}/fp32")
            for n in nodes:
                if n.name in islands:
                    n.input[:] = [copy.name if i == name else i for i in n.input]
    for n in m.graph.node:
        if n.op_type == "Cast" and n.name not in islands and _cast_to(n) == onnx.TensorProto.FLOAT:
            for a in n.attribute:
                if a.name == "to":
                    a.i = onnx.TensorProto.FLOAT16
    return m


def _fresh_name(m: Any, base: str) -> str:
    """`base`, or `base_2`, `base_3`, … : a name no tensor or node of `m` has yet."""
    taken = {t.name for t in m.graph.initializer} | {i.name for i in m.graph.input} | \
        {o for n in m.graph.node for o in n.output} | {n.name for n in m.graph.node}
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _consumers(graph: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _fix_resize_scales(m: Any, original: Any, types: dict[str, int]) -> None:
    """Resize's `scales` must be float32 (ONNX spec); the converter makes it FP16 when the Resize runs in FP16."""
    from onnx import TensorProto, helper

    inits = {t.name: t for t in original.graph.initializer}
    made: dict[str, str] = {}  # FP16 scales → its FP32 twin, one per source however many Resizes read it
    for n in list(m.graph.node):
        if n.op_type != "Resize" or len(n.input) < 3 or not n.input[2] or types.get(n.input[2]) != 10:
            continue
        src = n.input[2]
        if src not in made:
            made[src] = _fresh_name(m, f"{src}/fp32")
            if src in inits:  # the FP32 original, under its own name so no other consumer changes
                t = m.graph.initializer.add()
                t.CopyFrom(inits[src])
                t.name = made[src]
            else:
                m.graph.node.append(helper.make_node("Cast", [src], [made[src]], name=made[src], to=TensorProto.FLOAT))
        n.input[2] = made[src]


def _fix_outputs(m: Any, original: Any) -> None:
    """Graph outputs that were float32 stay float32 (the converter types an island's graph output FP16)."""
    from onnx import TensorProto, helper

    was = {o.name: o.type.tensor_type.elem_type for o in original.graph.output}
    producer = {o: n for n in m.graph.node for o in n.output}
    for out in m.graph.output:
        if was.get(out.name) != TensorProto.FLOAT or out.type.tensor_type.elem_type == TensorProto.FLOAT:
            continue
        n = producer.get(out.name)
        if n is None:  # a graph input or initializer passed straight through: nothing computes it
            continue
        if n.op_type == "Cast" and _cast_to(n) == TensorProto.FLOAT16:
            n.op_type = "Identity"  # the island's FP32 value itself
            del n.attribute[:]
        else:
            n.output[:] = [f"{o}/fp16" if o == out.name else o for o in n.output]
            m.graph.node.append(helper.make_node("Cast", [f"{out.name}/fp16"], [out.name],
                                                 name=f"{out.name}/to_fp32", to=TensorProto.FLOAT))
        out.type.tensor_type.elem_type = TensorProto.FLOAT


def _drop_round_trips(m: Any, types: dict[str, int]) -> None:
    """Cast(FP16)→Cast(FP32) of an FP32 tensor between two FP32 parts: the FP32 value is passed on instead."""
    from onnx import TensorProto

    producer = {o: n for n in m.graph.node for o in n.output}
    outputs = {o.name for o in m.graph.output}
    cons = _consumers(m.graph)
    for n in list(m.graph.node):
        first = producer.get(n.input[0]) if n.op_type == "Cast" else None
        if first is None or _cast_to(n) != TensorProto.FLOAT or first.op_type != "Cast" \
                or _cast_to(first) != TensorProto.FLOAT16 or types.get(first.input[0]) != TensorProto.FLOAT \
                or n.output[0] in outputs:
            continue
        for c in cons.get(n.output[0], []):
            c.input[:] = [first.input[0] if i == n.output[0] else i for i in c.input]
        m.graph.node.remove(n)
    _drop_dead_casts(m)


def _merge_twin_casts(m: Any) -> None:
    """One Cast per (tensor, type): the converter casts a tensor once per island consumer (a LayerNorm's input
    feeds both ReduceMean and Sub when decomposed)."""
    outputs = {o.name for o in m.graph.output}
    first: dict[tuple[str, int | None], str] = {}
    renamed: dict[str, str] = {}
    for n in m.graph.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
        if n.op_type != "Cast" or n.output[0] in outputs:
            continue
        key = (n.input[0], _cast_to(n))
        if key in first:
            renamed[n.output[0]] = first[key]
        else:
            first[key] = n.output[0]
    for n in m.graph.node:  # consumers listed before a twin (the converter appends its casts at the end)
        n.input[:] = [renamed.get(i, i) for i in n.input]
    _drop_dead_casts(m)


def _drop_dead_casts(m: Any) -> None:
    outputs = {o.name for o in m.graph.output}
    while True:
        used = {i for n in m.graph.node for i in n.input} | outputs
        dead = [n for n in m.graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            return
        for n in dead:
            m.graph.node.remove(n)


def _tensor_types(m: Any) -> dict[str, int]:
    """Elem type of every tensor (inputs, initializers, node outputs) after fresh shape inference."""
    import onnx

    del m.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    types.update({t.name: t.data_type for t in m.graph.initializer})
    return types


def typed_graph_problems(model: Any, islands: Iterable[Any]) -> list[str]:
    """Where an FP16-typed graph breaks its contract: non-island float tensors not FP16, island outputs not FP32,
    float graph inputs/outputs not float32; [] when it holds."""
    names = {i["node"] if isinstance(i, dict) else str(i) for i in islands}
    types = _tensor_types(_copy(model))
    outputs = {o.name for o in model.graph.output}
    problems = [f"graph {kind} {v.name} is {v.type.tensor_type.elem_type}, not float32"
                for kind, vs in (("input", model.graph.input), ("output", model.graph.output)) for v in vs
                if v.type.tensor_type.elem_type in FLOAT_TYPES and v.type.tensor_type.elem_type != 1]
    for n in model.graph.node:
        if n.op_type in ("Cast", "Identity") and n.name not in names:
            continue  # the borders: their types are the point
        want = 1 if n.name in names else 10
        for o in n.output:
            if o and types.get(o) in FLOAT_TYPES and types[o] != want and o not in outputs:
                problems.append(f"{n.op_type} {n.name}: output {o} is {'FP32' if types[o] == 1 else types[o]}, "
                                f"expected {'FP32' if want == 1 else 'FP16'}")
    return problems


def fp16_typed_graph(model: Any, islands: Iterable[Any]) -> Any:
    """The FP16-typed ONNX (TensorRT 11, strongly typed): FP16 weights and activations, islands FP32 with Casts at
    their borders, float32 graph inputs/outputs; checked with onnx.checker, shape inference and per-tensor types."""
    import warnings

    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError:
        raise SegedgeError("the FP16-typed graph (TensorRT 11) needs onnxconverter-common: pip install "
                           "'segedge[export]', or export for --trt-version 10") from None
    names = _island_names(model, islands)
    _refuse_fp16(model)
    prepared = _prepare_for_converter(model, names)
    with warnings.catch_warnings():  # it warns per weight clamped to the FP16 range: TensorRT clamps the same way
        warnings.simplefilter("ignore")
        m = float16.convert_float_to_float16(
            prepared, min_positive_val=FP16_TINY, max_finite_val=FP16_MAX, keep_io_types=True, op_block_list=[],
            node_block_list=sorted(names), check_fp16_ready=False)
    _fix_outputs(m, model)
    types = _types_loose(m)
    _fix_resize_scales(m, prepared, types)
    _drop_round_trips(m, types)
    _merge_twin_casts(m)
    float16.sort_topology(m.graph)
    del m.graph.value_info[:]
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError / InferenceError: a converter bug segedge missed
        raise ExportError(f"the FP16-typed graph fails the ONNX checker ({first_line(e)}); export for "
                          "--trt-version 10 (FP32 graph + FP16 flag) and report the model") from e
    problems = typed_graph_problems(m, names)
    if problems:
        raise ExportError(f"the FP16-typed graph breaks {len(problems)} typing rule(s), first: {problems[0]}")
    return onnx.shape_inference.infer_shapes(m)


def _types_loose(m: Any) -> dict[str, int]:
    """Elem types as the converter left them (its value_info, inputs, outputs, initializers)."""
    types = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.input, *m.graph.value_info, *m.graph.output)}
    types.update({t.name: t.data_type for t in m.graph.initializer})
    return types


# -- the FP16 storage proxy (ONNX Runtime CPU) ----------------------------------------------------------------------
def fp16_weights(a: np.ndarray) -> np.ndarray:
    """FP32 weights as TensorRT stores them in FP16, back in FP32: clamped to ±65504, nonzero values below the
    smallest subnormal raised to it (TensorRT's documented weight conversion), the rest rounded to nearest."""
    a = np.asarray(a, np.float32)
    tiny = (a != 0) & (np.abs(a) < FP16_TINY)
    a = np.where(tiny, np.copysign(np.float32(FP16_TINY), a), np.clip(a, -FP16_MAX, FP16_MAX))
    return a.astype(np.float16).astype(np.float32)


def _round_weights(m: Any, islands: set[str]) -> None:
    """Initializers read by non-island nodes → FP16 values (a copy keeps island readers at FP32); Resize's scales
    and roi are shape parameters, not weights, and stay as they are."""
    from onnx import numpy_helper

    inits = {t.name: t for t in m.graph.initializer if t.data_type == 1}
    readers: dict[str, list[tuple[Any, int]]] = {}
    for n in m.graph.node:
        for k, i in enumerate(n.input):
            if i in inits and not (n.op_type == "Resize" and k in (1, 2)):
                readers.setdefault(i, []).append((n, k))
    for name, uses in readers.items():
        storage = [(n, k) for n, k in uses if node_id(n) not in islands]
        if not storage:
            continue
        t = m.graph.initializer.add()
        t.CopyFrom(numpy_helper.from_array(fp16_weights(numpy_helper.to_array(inits[name])), f"{name}/fp16"))
        for n, k in storage:
            n.input[k] = t.name


def _storage_casts(src: str, dst: str, name: str) -> list[Any]:
    """Cast(FP16)→Cast(FP32): `dst` holds `src` as FP16 storage holds it (beyond ±65504: inf)."""
    from onnx import TensorProto, helper

    return [helper.make_node("Cast", [src], [f"{dst}/as_fp16"], name=f"{name}/to_fp16", to=TensorProto.FLOAT16),
            helper.make_node("Cast", [f"{dst}/as_fp16"], [dst], name=f"{name}/to_fp32", to=TensorProto.FLOAT)]


def _round_activations(m: Any, islands: set[str], types: dict[str, int]) -> None:
    """Every float32 output of a non-island node rounded through FP16 where it is made; FP32 values (graph inputs,
    island outputs) rounded on their way into non-island nodes, as the typed graph's border Casts do."""
    nodes = list(m.graph.node)
    inputs = [i.name for i in m.graph.input if types.get(i.name) == 1]
    out: list[Any] = []

    def round_for_readers(t: str, after: list[Any]) -> None:
        readers = [n for n in nodes if node_id(n) not in islands and t in n.input]
        if readers:
            after.extend(_storage_casts(t, f"{t}/fp16_in", f"{t}/storage"))
            for n in readers:
                n.input[:] = [f"{t}/fp16_in" if i == t else i for i in n.input]

    for t in inputs:
        round_for_readers(t, out)
    for n in nodes:
        out.append(n)
        made = [o for o in n.output if o and types.get(o) == 1]
        if node_id(n) in islands:
            for o in made:
                round_for_readers(o, out)
            continue
        for o in made:
            n.output[:] = [f"{o}/fp32" if x == o else x for x in n.output]
            out.extend(_storage_casts(f"{o}/fp32", o, f"{o}/storage"))
    del m.graph.node[:]
    m.graph.node.extend(out)


def fp16_proxy(model: Any, islands: Iterable[Any] | None = None) -> Any:
    """An FP32 graph ONNX Runtime's CPU provider runs with FP16 *storage*: the FP16 engine's numbers, roughly.

    Weights read by non-island nodes are rounded as TensorRT stores them (`fp16_weights`); every float tensor made
    by a non-island node passes through Cast(FP16)→Cast(FP32), so values beyond ±65504 become inf exactly as in an
    FP16 engine, and FP32 values entering non-island nodes (graph input, island outputs) are rounded likewise;
    islands run untouched in FP32. `islands=None` rounds everything: the graph a naive FP16 engine runs.

    Not modelled: arithmetic inside a kernel (ONNX Runtime computes each op in FP32 from FP16-rounded inputs, so
    FP16 accumulation in convolutions, matmuls and reductions, and the overflow of a fused kernel's intermediate
    that never becomes a tensor, e.g. x² inside a native LayerNormalization, are not seen), TensorRT's layer
    fusions and tactic choices (a fused Conv+Add rounds once, not twice), and TensorRT's freedom under the FP16
    flag (≤ 10) to run a layer in FP32 when that is faster. The proxy is the storage error, a lower bound.
    """
    names = _island_names(model, islands)
    _refuse_fp16(model)
    m = _copy(model)
    types = float_tensor_types(m)
    _round_weights(m, names)
    _round_activations(m, names, types)
    return m


# -- what the trt-fp16 target ships ---------------------------------------------------------------------------------
STRONGLY_TYPED = ("11",)  # generations whose precisions come from the graph's types only


def fp16_flavour(model: Any, generation: str, ranges: dict[str, Sequence[float]] | None) -> tuple[Any, list[dict],
                                                                                                   dict[str, Any]]:
    """(graph, islands, builder) for TensorRT `generation`: the FP32 graph + FP16 flag + FP32 layer precisions for
    the islands (8.5, 8.6, 10), or the FP16-typed graph, strongly typed (11)."""
    from ..toolkits.tensorrt import GENERATIONS

    if generation not in GENERATIONS:
        raise SegedgeError(f"unknown TensorRT generation {generation!r}; choose one of {', '.join(GENERATIONS)}")
    islands = fp32_islands(model, ranges)
    if generation in STRONGLY_TYPED:
        return fp16_typed_graph(model, islands), islands, {"strongly_typed": True}
    return model, islands, {"fp16": True, "int8": False, "strongly_typed": False, "precision_constraints": "obey"}


def island_summary(islands: Sequence[dict[str, Any]]) -> dict[str, int]:
    """op type → number of islands (for reports)."""
    return dict(Counter(i["op"] for i in islands).most_common())


__all__ = ["FP16_MAX", "RANGE_MARGIN", "SQUARE_LIMIT", "float_tensor_types", "fp16_flavour", "fp16_proxy",
           "fp16_typed_graph", "fp16_weights", "fp32_islands", "island_summary", "node_id", "tensor_ranges",
           "typed_graph_problems"]
