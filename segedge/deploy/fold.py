"""The graph DeepStream's nvinfer runs: normalisation folded into the first convolution, probabilities out.

nvinfer feeds the network y = s × (x − offsets[c]) with ONE scalar s (`net-scale-factor`), so segedge's
(x − mean_c) / std_c cannot be written in its config when the stds differ. With s = 1 / mean(std) the first Conv's
weights on input channel c are multiplied by 1 / (s × std_c): the Conv then computes on s × (x − mean) exactly what
the original computes on (x − mean) / std, and zero padding stays exact because 0 means "x = mean" in both.
Raw-io exports normalise in the graph (s = 1, offsets 0): they get an adapter instead, the float NCHW planes nvinfer
produces turned into the NHWC frame the graph expects (its uint8 Cast becomes a float no-op), and the in-graph
ArgMax cut off so nvinfer sees per-class scores. Both end in a Softmax over classes, so `segmentation-threshold`
compares probabilities and a threshold of 0 is a plain argmax.

`prove_equivalence` runs the original and the deployed graph with ONNX Runtime on the same frames, each fed as its
runtime feeds it, and reports max |Δlogits| and argmax agreement; a mismatch is an error, never a silent config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..contract import ModelContract
from ..errors import ExportError, SegedgeError

# Ops that read only the shape of the graph input, never its values: the folded input may feed them unchanged.
SHAPE_ONLY_OPS = ("Shape", "Size")
PROBS_NAME = "probabilities"
# Deployed vs original graph: |Δlogits| ≤ atol + rtol·max|logit| (float32 re-association only) and equal argmax.
FOLD_TOLERANCE = {"atol": 1e-3, "rtol": 1e-4, "min_agreement": 0.999}


@dataclass
class DeepStreamGraph:
    """The ONNX nvinfer builds its engine from, and the pre-processing constants that go with it."""

    model: Any  # onnx.ModelProto
    net_scale_factor: float
    offsets: tuple[float, float, float]  # in the graph's channel order
    color_order: str  # RGB | BGR: the channel order nvinfer must feed
    logits_name: str  # the per-class scores before the appended Softmax
    output_name: str  # what nvinfer parses (`output-blob-names`)
    folded: bool  # False for raw io and for equal stds (then nothing needs folding)
    conv_nodes: list[str] = field(default_factory=list)
    channel_factors: list[float] = field(default_factory=list)  # per input channel weight multipliers


def graph_channel_stats(contract: ModelContract) -> tuple[list[float], list[float]]:
    """(mean, std) in the graph's channel order (the contract states them for R, G, B)."""
    inp = contract.input
    mean, std = list(inp.mean), list(inp.std)
    if inp.color_order == "BGR":
        mean, std = mean[::-1], std[::-1]
    return mean, std


def fold_scale(std: Sequence[float]) -> float:
    """The scalar `net-scale-factor`: 1 / mean(std), so folded weights stay near their original magnitude."""
    return 1.0 / float(np.mean(np.asarray(std, np.float64)))


def _consumers(model: Any, name: str) -> list[tuple[Any, int]]:
    return [(n, i) for n in model.graph.node for i, x in enumerate(n.input) if x == name]


def first_convs(model: Any) -> list[Any]:
    """The Conv nodes that read the graph input directly; one line when the input feeds anything else."""
    name = model.graph.input[0].name
    users = [(n, i) for n, i in _consumers(model, name) if n.op_type not in SHAPE_ONLY_OPS]
    others = sorted({n.op_type for n, i in users if n.op_type != "Conv" or i != 0})
    if others or not users:
        found = ", ".join(others) or "no node"
        raise SegedgeError(f"cannot fold the normalisation into this graph: its input '{name}' feeds {found}, not "
                           "only Conv layers (a quantized or cast input cannot take nvinfer's scalar scale); deploy "
                           "an FP32 ONNX target (--target onnx) or a raw-io export")
    return [n for n, _ in users]


def _initializer(model: Any, name: str) -> Any:
    for t in model.graph.initializer:
        if t.name == name:
            return t
    return None


def _channel_factors(weight_shape: Sequence[int], group: int, factors: np.ndarray, conv: str) -> np.ndarray:
    """Per-weight multipliers M×(C/g): weight [m, j] reads input channel (m // (M/g)) × (C/g) + j."""
    m_out, c_per_group = int(weight_shape[0]), int(weight_shape[1])
    if c_per_group * group != len(factors):
        raise SegedgeError(f"cannot fold the normalisation: Conv {conv} reads {c_per_group * group} input channels, "
                           f"the contract has {len(factors)}; re-export the model")
    out_per_group = m_out // group
    idx = (np.arange(m_out)[:, None] // out_per_group) * c_per_group + np.arange(c_per_group)[None, :]
    return factors[idx]


def fold_normalisation(model: Any, std: Sequence[float], scale: float) -> tuple[Any, list[str], list[float]]:
    """A copy of `model` whose first Convs expect s × (x − mean) instead of (x − mean) / std."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    factors = 1.0 / (scale * np.asarray(std, np.float64))
    convs = first_convs(out)
    for conv in convs:
        w_name = conv.input[1]
        init = _initializer(out, w_name)
        if init is None:
            raise SegedgeError(f"cannot fold the normalisation: Conv {conv.name}'s weights '{w_name}' are not a "
                               "constant initializer (quantized or computed weights); deploy --target onnx")
        w = numpy_helper.to_array(init)
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        scaled = (w.astype(np.float64) * _channel_factors(w.shape, group, factors, conv.name)[:, :, None, None])
        new = numpy_helper.from_array(scaled.astype(w.dtype), f"{w_name}__segedge_folded")
        out.graph.initializer.append(new)
        conv.input[1] = new.name
        if not _consumers(out, w_name):  # the original weights are not shared: drop them
            out.graph.initializer.remove(init)
    return out, [c.name for c in convs], [float(f) for f in factors]


def _prune(model: Any) -> None:
    """Remove nodes (and initializers) that no graph output depends on, in place."""
    import onnx

    needed = {o.name for o in model.graph.output}
    nodes = list(model.graph.node)
    kept = [False] * len(nodes)
    for k in range(len(nodes) - 1, -1, -1):
        if any(o in needed for o in nodes[k].output):
            kept[k] = True
            needed.update(nodes[k].input)
    survivors = []
    for node, keep in zip(nodes, kept):
        if keep:
            survivors.append(onnx.NodeProto())
            survivors[-1].CopyFrom(node)
    del model.graph.node[:]
    model.graph.node.extend(survivors)
    for t in [t for t in model.graph.initializer if t.name not in needed]:
        model.graph.initializer.remove(t)


def raw_adapter(model: Any) -> tuple[Any, str]:
    """A copy of a raw-io graph that takes float N×3×H×W planes and returns its logits (ArgMax cut off)."""
    import onnx
    from onnx import TensorProto, helper

    from ..export.verify import logits_tensor

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inp = out.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in inp.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[3] != 3:
        raise SegedgeError(f"raw-io graph input '{inp.name}' is not N×H×W×3 (got {dims}); re-export with --io raw")
    nhwc = f"{inp.name}__segedge_nhwc"
    for node, i in _consumers(out, inp.name):
        node.input[i] = nhwc
    out.graph.node.insert(0, helper.make_node("Transpose", [inp.name], [nhwc], name="segedge_planes_to_nhwc",
                                              perm=[0, 2, 3, 1]))
    new_in = helper.make_tensor_value_info(inp.name, TensorProto.FLOAT, [dims[0], 3, dims[1], dims[2]])
    out.graph.input.remove(inp)
    out.graph.input.insert(0, new_in)
    logits = logits_tensor(model)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(logits, TensorProto.FLOAT, None))
    _prune(out)
    return out, logits


def append_softmax(model: Any, logits: str) -> str:
    """Make Softmax over classes (axis 1) of `logits` the graph's only output, in place; its name."""
    from onnx import TensorProto, helper

    name = PROBS_NAME
    existing = {x for n in model.graph.node for x in n.output} | {i.name for i in model.graph.input}
    while name in existing:
        name += "_"
    model.graph.node.append(helper.make_node("Softmax", [logits], [name], name="segedge_class_softmax", axis=1))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return name


def build_deepstream_graph(model: Any, contract: ModelContract) -> DeepStreamGraph:
    """The nvinfer graph for `model` (the target's ONNX) under `contract`, and its pre-processing constants."""
    import onnx

    from ..export.verify import logits_tensor

    inp = contract.input
    if inp.io == "raw":
        adapted, logits = raw_adapter(model)
        out_name = append_softmax(adapted, logits)
        return DeepStreamGraph(adapted, 1.0, (0.0, 0.0, 0.0), inp.color_order, logits, out_name, folded=False)
    mean, std = graph_channel_stats(contract)
    scale = fold_scale(std)
    if all(1.0 / (scale * s) == 1.0 for s in std):  # equal stds: the scalar scale is exact, nothing to fold
        folded, convs, factors = onnx.ModelProto(), [], [1.0, 1.0, 1.0]
        folded.CopyFrom(model)
    else:
        folded, convs, factors = fold_normalisation(model, std, scale)
    logits = logits_tensor(folded)
    out_name = append_softmax(folded, logits)
    return DeepStreamGraph(folded, scale, (mean[0], mean[1], mean[2]), inp.color_order, logits, out_name,
                           folded=bool(convs), conv_nodes=convs, channel_factors=factors)


# -- the proof ------------------------------------------------------------------------------------------------------
def _graph_order_image(frame: np.ndarray, contract: ModelContract) -> np.ndarray:
    """A BGR frame resized to the model size (cv2.INTER_LINEAR) in the graph's channel order, H×W×3 uint8."""
    from ..runtime.preprocess import check_frame, resize_frame

    img = resize_frame(check_frame(frame), contract.input.size)
    return np.ascontiguousarray(img[:, :, ::-1] if contract.input.color_order == "RGB" else img)


def original_input(img: np.ndarray, contract: ModelContract) -> np.ndarray:
    """What the export's own runtime feeds: (x − mean) / std as 1×3×H×W, or the uint8 1×H×W×3 frame (raw io)."""
    if contract.input.io == "raw":
        return img[None]
    mean, std = graph_channel_stats(contract)
    x = (img.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def nvinfer_input(img: np.ndarray, graph: DeepStreamGraph) -> np.ndarray:
    """What nvinfer feeds: net-scale-factor × (x − offsets[c]) as float32 1×3×H×W planes."""
    x = np.float32(graph.net_scale_factor) * (img.astype(np.float32) - np.asarray(graph.offsets, np.float32))
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def _with_output(model: Any, name: str) -> Any:
    import onnx

    if any(o.name == name for o in model.graph.output):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m


def prove_equivalence(original: Any, graph: DeepStreamGraph, contract: ModelContract,
                      frames: Sequence[np.ndarray], names: Sequence[str] = ()) -> dict[str, Any]:
    """Run both graphs with ONNX Runtime on `frames`; max |Δlogits|, argmax agreement; ExportError on a mismatch."""
    from ..export.verify import compare_run_to_torch, expose_logits, ort_session

    if not len(frames):
        raise SegedgeError("no frames to check the DeepStream graph on: pass --frames FOLDER|VIDEO")
    ref_model, ref_logits = expose_logits(original)
    ref_sess = ort_session(ref_model)
    ref_outs = [o.name for o in ref_sess.get_outputs()]
    dep_sess = ort_session(_with_output(graph.model, graph.logits_name))
    dep_outs = [o.name for o in dep_sess.get_outputs()]
    imgs = [_graph_order_image(f, contract) for f in frames]
    refs = [ref_sess.run(None, {ref_sess.get_inputs()[0].name: original_input(i, contract)})[ref_outs.index(ref_logits)]
            for i in imgs]
    probs_agree = total = 0

    def run(x: np.ndarray) -> np.ndarray:
        nonlocal probs_agree, total
        outs = dep_sess.run(None, {dep_sess.get_inputs()[0].name: x})
        logits, probs = outs[dep_outs.index(graph.logits_name)], outs[dep_outs.index(graph.output_name)]
        probs_agree += int((probs.argmax(1) == logits.argmax(1)).sum())
        total += probs.shape[0] * probs.shape[2] * probs.shape[3]
        return logits

    res = compare_run_to_torch(run, [nvinfer_input(i, graph) for i in imgs], refs)
    res["reference"] = "the target's own ONNX (onnxruntime CPU), fed as segedge's runtime feeds it"
    res["output_argmax_agreement"] = probs_agree / max(total, 1)
    res["frames"] = list(names) or [f"frame {k}" for k in range(len(frames))]
    _check(res)
    return res


def _check(res: dict[str, Any]) -> None:
    tol = FOLD_TOLERANCE["atol"] + FOLD_TOLERANCE["rtol"] * res["max_abs_logit"]
    res["tolerance"] = tol
    worst = min(res["argmax_agreement"], res["output_argmax_agreement"])
    if res["max_abs_diff"] > tol or worst < FOLD_TOLERANCE["min_agreement"]:
        raise ExportError(f"the DeepStream graph does not match the original: max |Δlogits| {res['max_abs_diff']:.3g} "
                          f"(allowed {tol:.3g}), argmax agreement {worst:.4%}; nothing was written: report the model "
                          "and export options")


__all__ = ["DeepStreamGraph", "FOLD_TOLERANCE", "append_softmax", "build_deepstream_graph", "first_convs",
           "fold_normalisation", "fold_scale", "graph_channel_stats", "nvinfer_input", "original_input",
           "prove_equivalence", "raw_adapter"]
