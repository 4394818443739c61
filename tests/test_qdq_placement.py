"""TensorRT Q/DQ placement: the rules on hand-built graphs, the planner, and the qdq target's enforcement."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from segedge.errors import ExportError
from segedge.export.calibration import CalibrationTable
from segedge.export.qdq_rules import check_placement, residual_adds, validate_qdq
from segedge.export.quantize import (TENSORRT, TENSORRT_ORT_PLACEMENT, KeptFloat, keep_planned_qdq, quantize,
                                     tensorrt_placement, unit_softmax_ranges)
from segedge.export.targets.qdq import check_tensorrt_graph

F = TensorProto.FLOAT
RNG = np.random.default_rng(0)


class _G:
    """A tiny graph builder: constants, symmetric int8 Q/DQ pairs and nodes, made into a ModelProto."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                                              numpy_helper.from_array(np.array(0, np.int8), "zp")]

    def const(self, name: str, shape: tuple[int, ...]) -> str:
        self.inits.append(numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name))
        return name

    def qdq(self, t: str) -> str:
        self.nodes += [helper.make_node("QuantizeLinear", [t, "s", "zp"], [t + "_q"], name=t + "_Q"),
                       helper.make_node("DequantizeLinear", [t + "_q", "s", "zp"], [t + "_dq"], name=t + "_DQ")]
        return t + "_dq"

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        """A per-channel int8 weight behind a DQ (the form validate_qdq accepts)."""
        w = RNG.integers(-100, 100, shape).astype(np.int8)
        self.inits += [numpy_helper.from_array(w, name + "_i8"),
                       numpy_helper.from_array(np.full(shape[0], 0.01, np.float32), name + "_s"),
                       numpy_helper.from_array(np.zeros(shape[0], np.int8), name + "_zp")]
        self.nodes.append(helper.make_node("DequantizeLinear", [name + "_i8", name + "_s", name + "_zp"], [name],
                                           name=name + "_DQ", axis=0))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def model(self, out: str, inputs: tuple[str, ...] = ("x",),
              shape: tuple[int, ...] = (1, 4, 6, 6)) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info(i, F, list(shape)) for i in inputs],
                              [helper.make_tensor_value_info(out, F, None)], self.inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _rules(m: onnx.ModelProto) -> set[str]:
    return {v.rule for v in check_placement(m)}


def _residual_block(quantize_branch: bool, quantize_skip: bool) -> onnx.ModelProto:
    """x → Conv(DQ(x), DQ(w)) → Add(conv, x): the conv output is the fused input, x the skip."""
    g = _G()
    c = g.node("Conv", [g.qdq("x"), g.weight("w", (4, 4, 1, 1))], "conv")
    branch = g.qdq(c) if quantize_branch else c
    skip = g.node("Identity", ["x"], "skip")
    return g.model(g.node("Add", [branch, g.qdq(skip) if quantize_skip else skip], "add"))


def test_residual_add_quantized_on_the_skip_input_only_follows_the_placement() -> None:
    good = _residual_block(quantize_branch=False, quantize_skip=True)
    [ra] = residual_adds(good)
    assert (ra.node, ra.fused, ra.skip, ra.weighted) == ("add", 0, (1,), "conv")
    assert check_placement(good) == [] and validate_qdq(good) == []
    assert check_placement(_residual_block(False, False)) == []  # a float Add is allowed too
    blocked = check_placement(_residual_block(quantize_branch=True, quantize_skip=True))
    assert [v.rule for v in blocked] == ["residual-add-fusion"] and "'conv'" in blocked[0].message


def test_weighted_output_read_by_a_float_op_is_flagged_and_by_a_weighted_op_is_not() -> None:
    g = _G()
    c1 = g.node("Conv", [g.qdq("x"), g.weight("w1", (4, 4, 1, 1))], "c1")
    c2 = g.node("Conv", [g.qdq(c1), g.weight("w2", (4, 4, 1, 1))], "c2")  # int8 out of c1 feeds c2: fine
    assert _rules(g.model(c2)) == set()
    g = _G()
    c1 = g.node("Conv", [g.qdq("x"), g.weight("w1", (4, 4, 1, 1))], "c1")
    b = g.node("Add", [c1, g.const("b1", (1, 4, 1, 1))], "bias")  # the epilogue: still c1's output
    m = g.model(g.node("Relu", [g.qdq(b)], "relu"))
    [v] = check_placement(m)
    assert v.rule == "weighted-output" and "Conv 'c1'" in v.message and "Relu" in v.message


def test_partly_quantized_weighted_ops_are_flagged() -> None:
    g = _G()  # conv with an int8 weight but a float activation
    m = g.model(g.node("Conv", ["x", g.weight("w", (4, 4, 1, 1))], "conv"))
    assert _rules(m) == {"weighted-input"}
    g = _G()  # activation × activation MatMul with one side quantized
    m = g.model(g.node("MatMul", [g.qdq("a"), "b"], "qk"), inputs=("a", "b"), shape=(1, 2, 4, 4))
    assert _rules(m) == {"weighted-input"}
    g = _G()
    m = g.model(g.node("MatMul", [g.qdq("a"), g.qdq("b")], "qk"), inputs=("a", "b"), shape=(1, 2, 4, 4))
    assert _rules(m) == set()


def test_an_add_without_a_fusible_input_is_quantized_on_both_inputs_or_neither() -> None:
    def add(qa: bool, qb: bool) -> onnx.ModelProto:
        g = _G()
        a, b = g.node("Relu", ["x"], "a"), g.node("Sigmoid", ["x"], "b")
        return g.model(g.node("Add", [g.qdq(a) if qa else a, g.qdq(b) if qb else b], "add"))

    assert residual_adds(add(False, False))[0].fused is None
    assert _rules(add(True, False)) == {"residual-add-mixed"}
    assert _rules(add(True, True)) == set() and _rules(add(False, False)) == set()


def test_a_conv_output_read_twice_is_not_a_fusible_input() -> None:
    g = _G()
    c = g.node("Conv", [g.qdq("x"), g.weight("w", (4, 4, 1, 1))], "conv")
    g.node("Relu", [c], "other_reader")
    add = g.node("Add", [c, "other_reader"], "add")
    assert residual_adds(g.model(add))[0].fused is None  # the conv must also write c: no epilogue fusion


# -- the planner and quantize() on a float graph -------------------------------------------------------------------

def _float_block() -> onnx.ModelProto:
    """conv1 → LayerNorm-like float Relu reader + conv2 → Add(conv2 + bias, conv1): a residual block whose skip
    tensor also feeds a float op, and a classifier conv left float."""
    g = _G()
    c1 = g.node("Conv", ["x", g.const("w1", (4, 4, 3, 3))], "conv1", pads=[1, 1, 1, 1])
    r = g.node("Relu", [c1], "relu")
    c2 = g.node("Conv", [r, g.const("w2", (4, 4, 1, 1))], "conv2")
    b2 = g.node("Add", [c2, g.const("b2", (1, 4, 1, 1))], "bias2")
    add = g.node("Add", [b2, c1], "residual")
    sig = g.node("Sigmoid", [c1], "float_reader")
    mix = g.node("Mul", [add, sig], "mix")
    return g.model(g.node("Conv", [mix, g.const("wc", (3, 4, 1, 1))], "classifier"))


def _table_for(model: onnx.ModelProto, path: Path) -> CalibrationTable:
    """Ranges of every float tensor measured by running the graph on random inputs (a real min/max calibration)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [n.output[0] for n in m.graph.node]
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, F, None) for n in names)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}) for _ in range(4)]
    ranges = {"x": [-4.0, 4.0]}
    for i, n in enumerate(names):
        vals = np.stack([o[i] for o in outs])
        ranges[n] = [float(vals.min()), float(vals.max())]
    onnx.save(model, str(path))
    return CalibrationTable("minmax", ranges, 4, 0, "random", "iterable", "0" * 64, "0" * 64, [], "", {})


def test_tensorrt_quantize_places_qdq_on_inputs_and_skip_only(tmp_path: Path) -> None:
    model = _float_block()
    kept = [KeptFloat("classifier", "Conv", "final classifier conv")]
    plan = tensorrt_placement(model, kept)
    assert plan.slots == {("conv1", 0), ("conv2", 0), ("residual", 1)}
    assert set(plan.float_adds) == {"bias2"}
    table = _table_for(model, tmp_path / "f.onnx")
    new = quantize(tmp_path / "f.onnx", table, TENSORRT, kept)
    assert validate_qdq(new) == [] and check_placement(new) == []
    check_tensorrt_graph(new)
    dq_out = {n.output[0] for n in new.graph.node if n.op_type == "DequantizeLinear"}
    reads = {(n.name, i) for n in new.graph.node for i, t in enumerate(n.input) if t in dq_out}
    weights = {(n, 1) for n in ("conv1", "conv2")}
    assert reads == set(plan.slots) | weights  # the float Sigmoid reads conv1's output unquantized
    old = quantize(tmp_path / "f.onnx", table, TENSORRT_ORT_PLACEMENT, kept)
    assert validate_qdq(old) == [] and "weighted-output" in _rules(old)
    with pytest.raises(ExportError, match="placement rule"):
        check_tensorrt_graph(old)
    # Same numerics where the plan and the old graph agree: FP32 vs both stays close on this well-scaled block.
    x = {"x": RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)}
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    got = ort.InferenceSession(new.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_keep_planned_qdq_moves_float_readers_back_and_drops_unread_pairs() -> None:
    g = _G()
    dq = g.qdq("x")
    g.node("Conv", [dq, g.weight("w", (4, 4, 1, 1))], "conv")
    g.node("Relu", [dq], "relu")
    m = g.model(g.node("Add", ["conv", "relu"], "out"))
    assert keep_planned_qdq(m, frozenset({("conv", 0)})) == 1
    relu = next(n for n in m.graph.node if n.name == "relu")
    assert list(relu.input) == ["x"]
    assert keep_planned_qdq(m, frozenset()) == 1  # nothing planned: the activation pair goes, the weight DQ stays
    assert [n.name for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")] == ["w_DQ"]


def _attention_like() -> onnx.ModelProto:
    """x/4 → Softmax → Transpose → MatMul(·, w): an attention map read by a weighted op through a shape-only op,
    and a second Softmax read twice (a float Relu too), whose Transpose keeps its calibrated range."""
    g = _G()
    g.inits.append(numpy_helper.from_array(np.array(0.25, np.float32), "temperature"))  # flat maps: peaks ≪ 1
    logits = g.node("Mul", ["x", "temperature"], "logits")
    p = g.node("Transpose", [g.node("Softmax", [logits], "softmax", axis=-1)], "pt", perm=[0, 1, 3, 2])
    a = g.node("MatMul", [p, g.const("w", (6, 6))], "attn_v")
    s2 = g.node("Softmax", [a], "softmax2", axis=-1)
    t2 = g.node("Transpose", [s2], "t2", perm=[0, 1, 3, 2])
    both = g.node("Add", [t2, g.node("Relu", [s2], "relu2")], "both")
    return g.model(g.node("MatMul", [both, g.const("w2", (6, 6))], "out"))


def test_softmax_outputs_are_quantized_on_zero_to_one_not_on_their_calibrated_range(tmp_path: Path) -> None:
    model = _attention_like()
    table = _table_for(model, tmp_path / "a.onnx")
    assert table.ranges["pt"][1] < 0.9  # calibrated attention peaks are well below 1
    unit = unit_softmax_ranges(model, table)
    assert unit.ranges["softmax"] == unit.ranges["pt"] == [0.0, 1.0] == unit.ranges["softmax2"]
    assert unit.ranges["t2"] == table.ranges["t2"]  # softmax2 has two readers: its Transpose is not followed
    assert table.ranges["pt"] != [0.0, 1.0]  # the input table is left as it was
    kept = [KeptFloat("softmax", "Softmax", "Softmax"), KeptFloat("softmax2", "Softmax", "Softmax")]

    def input_scale(m: onnx.ModelProto) -> float:
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return next(float(inits[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"
                    and n.input[0] == "pt")

    new = quantize(tmp_path / "a.onnx", table, TENSORRT, kept)
    assert validate_qdq(new) == [] and check_placement(new) == []
    assert input_scale(new) == pytest.approx(1 / 127)
    calibrated = quantize(tmp_path / "a.onnx", table, dataclasses.replace(TENSORRT, softmax_unit_range=False), kept)
    assert input_scale(calibrated) == pytest.approx(table.ranges["pt"][1] / 127, rel=1e-5)
