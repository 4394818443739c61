"""FP16 safety for TensorRT (segedge.export.fp16): islands from real measured ranges, the FP16-typed graph, the proxy.

The small graphs are built with onnx.helper so each rule has a node that triggers it: a LayerNormalization, a
Softmax, a Mul whose output overflows FP16 on every input (Softmax max ≥ 1/8, times 1e6 in two steps of 1e3, since
a weight beyond FP16 would be clamped, not overflow), an initializer shared by
an island and an FP16 node, and a head ending in Conv → Resize → ArgMax.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segedge.errors import SegedgeError
from segedge.export.fp16 import (FP16_MAX, RANGE_MARGIN, float_tensor_types, fp16_flavour, fp16_proxy,
                                 fp16_typed_graph, fp16_weights, fp32_islands, tensor_ranges, typed_graph_problems)
from segedge.export.trt_flavours import decompose_layernorms
from segedge.export.verify import ort_session

RNG = np.random.default_rng(0)
W1 = (RNG.standard_normal((8, 8)) * 0.5).astype(np.float32)
W2 = RNG.standard_normal((8, 3)).astype(np.float32)
GAMMA = (1 + 0.1 * RNG.standard_normal(8)).astype(np.float32)
BETA = (0.1 * RNG.standard_normal(8)).astype(np.float32)


def attention_model() -> onnx.ModelProto:
    """x → proj (MatMul) → ln → attn (Softmax) → amplify (×1e3) → boost (×1e3: overflows FP16) → shrink (×1e-4) →
    gate (× gamma, shared with ln) → cls (MatMul) → logits."""
    init = [numpy_helper.from_array(a, n) for a, n in (
        (W1, "w1"), (W2, "w2"), (GAMMA, "gamma"), (BETA, "beta"), (np.array(1e3, np.float32), "big"),
        (np.array(1e-4, np.float32), "small"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["n"], name="ln", axis=-1, epsilon=1e-5),
        helper.make_node("Softmax", ["n"], ["p"], name="attn", axis=-1),
        helper.make_node("Mul", ["p", "big"], ["a1"], name="amplify"),
        helper.make_node("Mul", ["a1", "big"], ["a"], name="boost"),
        helper.make_node("Mul", ["a", "small"], ["s"], name="shrink"),
        helper.make_node("Mul", ["s", "gamma"], ["g"], name="gate"),
        helper.make_node("MatMul", ["g", "w2"], ["logits"], name="cls"),
    ]
    graph = helper.make_graph(nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 3])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def head_model() -> onnx.ModelProto:
    """x → up (Resize ×2, early) → stem (Conv) → Relu → cls (Conv) → final (Resize ×2) → labels (ArgMax) + logits."""
    init = [numpy_helper.from_array(a, n) for a, n in (
        (np.array([1, 1, 2, 2], np.float32), "scales"), (RNG.standard_normal((6, 3, 1, 1)).astype(np.float32), "w0"),
        (RNG.standard_normal((4, 6, 1, 1)).astype(np.float32), "w1"))]
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["u"], name="up", mode="linear"),
        helper.make_node("Conv", ["u", "w0"], ["c0"], name="stem"),
        helper.make_node("Relu", ["c0"], ["r0"], name="act"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="cls"),
        helper.make_node("Resize", ["c1", "", "scales"], ["logits"], name="final", mode="linear"),
        helper.make_node("ArgMax", ["logits"], ["labels"], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 16, 16]),
                               helper.make_tensor_value_info("labels", TensorProto.INT64, [1, 16, 16])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def batches(n: int = 3, shape: tuple[int, ...] = (1, 4, 8)) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def run(model: onnx.ModelProto, x: np.ndarray, outputs: tuple[str, ...] = (),
        optimize: bool = True) -> list[np.ndarray]:
    """Outputs of `model` (plus the named intermediates) on ONNX Runtime CPU, graph optimizations on by default."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs)
    return ort_session(m, optimize=optimize).run(None, {"x": x})


def by_node(islands: list[dict]) -> dict[str, str]:
    return {i["node"]: i["reason"] for i in islands}


# -- ranges and islands ---------------------------------------------------------------------------------------------
def test_tensor_ranges_are_the_min_max_of_the_real_tensors() -> None:
    xs = batches()
    r = tensor_ranges(attention_model(), xs)
    h = np.stack([x @ W1 for x in xs])
    assert r["h"] == pytest.approx((float(h.min()), float(h.max())), rel=1e-5)
    assert r["x"] == pytest.approx((min(x.min() for x in xs), max(x.max() for x in xs)))
    assert "w1" not in r  # activations only: weights are checked from the graph itself
    assert r["a"][1] > FP16_MAX  # softmax max ≥ 1/8, times 1e6
    assert set(r) == set(float_tensor_types(attention_model())) == {"x", "h", "n", "p", "a1", "a", "s", "g", "logits"}


def test_islands_from_measured_ranges() -> None:
    model = attention_model()
    without = by_node(fp32_islands(model))
    assert set(without) == {"ln", "attn"}
    assert without["ln"] == "LayerNorm: variance in FP16 loses precision"
    islands = fp32_islands(model, tensor_ranges(model, batches()))
    got = by_node(islands)
    assert set(got) == {"ln", "attn", "boost", "shrink"}
    assert got["boost"].startswith("output max ") and "overflows FP16" in got["boost"]
    assert "input a max" in got["shrink"]  # its input would overflow at the island border
    assert [i["node"] for i in islands] == ["ln", "attn", "boost", "shrink"]  # graph order
    assert {i["op"] for i in islands} == {"LayerNormalization", "Softmax", "Mul"}


def test_margin_square_and_layernorm_input_rules() -> None:
    model = attention_model()
    limit = FP16_MAX / RANGE_MARGIN
    ranges = {"h": (-300.0, 10.0), "s": (0.0, limit * 1.01), "g": (0.0, limit * 0.9)}
    got = by_node(fp32_islands(model, ranges))
    assert "LayerNorm input max 300 > 256" in got["ln"]
    assert "within 4x of the FP16 limit" in got["shrink"]
    assert "gate" in got and "input s max" in got["gate"]  # reads a tensor beyond the limit
    assert "cls" not in got and "proj" not in got  # proj's output h is 300: fine for FP16 itself


def test_weight_beyond_fp16_makes_an_island() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Mul", ["x", "huge"], ["y"], name="scale")], "w", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(1e6, np.float32), "huge")]), opset_imports=[helper.make_opsetid("", 17)])
    assert fp32_islands(model) == [{"node": "scale", "op": "Mul", "reason": "weight huge max 1e+06 overflows FP16"}]


def test_squaring_node_is_an_island() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
             helper.make_node("Pow", ["x", "two"], ["p2"], name="pow2"),
             helper.make_node("Add", ["sq", "p2"], ["y"], name="sum")]
    model = helper.make_model(helper.make_graph(
        nodes, "sq", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")]), opset_imports=[helper.make_opsetid("", 17)])
    got = by_node(fp32_islands(model, {"x": (-300.0, 1.0), "sq": (0.0, 100.0), "p2": (0.0, 100.0),
                                       "y": (0.0, 200.0)}))
    assert set(got) == {"square", "pow2"}
    assert all("x² overflows FP16" in r for r in got.values())
    assert fp32_islands(model, {"x": (-200.0, 1.0)}) == []


def test_decomposed_layernorm_is_kept_whole() -> None:
    dec = decompose_layernorms(attention_model())
    islands = fp32_islands(dec)
    ln = [i for i in islands if "decomposed" in i["reason"]]
    assert sorted(i["op"] for i in ln) == sorted(["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div",
                                                 "Mul", "Add"])
    assert all(i["reason"].startswith("LayerNorm: variance in FP16 loses precision") for i in ln)


def test_head_tail_resize_and_argmax_but_not_the_early_resize() -> None:
    got = by_node(fp32_islands(head_model()))
    assert set(got) == {"final", "argmax"}
    assert "decides the labels" in got["final"]


def test_ranges_of_another_graph_are_refused() -> None:
    with pytest.raises(SegedgeError, match="tensor_ranges"):
        fp32_islands(attention_model(), {"/pre_quant/tensor": (0.0, 1.0)})


def test_bad_inputs_give_one_line_errors() -> None:
    model = attention_model()
    with pytest.raises(SegedgeError, match="no input batches"):
        tensor_ranges(model, [])
    with pytest.raises(SegedgeError, match="does not fit the graph") as e:
        tensor_ranges(model, [np.zeros((1, 3, 8), np.float32)])
    assert "\n" not in str(e.value)
    with pytest.raises(SegedgeError, match="name no node"):
        fp16_proxy(model, [{"node": "nope", "op": "Mul", "reason": "x"}])
    with pytest.raises(SegedgeError, match="unknown TensorRT generation"):
        fp16_flavour(model, "9", None)


# -- the FP16-typed graph -------------------------------------------------------------------------------------------
def test_typed_graph_types_per_tensor_and_runs() -> None:
    model = attention_model()
    xs = batches()
    islands = fp32_islands(model, tensor_ranges(model, xs))
    typed = fp16_typed_graph(model, islands)
    onnx.checker.check_model(typed, full_check=True)
    assert typed_graph_problems(typed, islands) == []
    inferred = onnx.shape_inference.infer_shapes(typed, strict_mode=True)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output,
                                                             *inferred.graph.input)}
    producer = {n.name: n for n in typed.graph.node}
    for name in ("proj", "amplify", "gate", "cls"):
        out = producer[name].output[0]
        assert types[out] == TensorProto.FLOAT16, name
    for name in ("ln", "attn", "boost", "shrink"):
        assert types[producer[name].output[0]] == TensorProto.FLOAT, name
    assert types["x"] == types["logits"] == TensorProto.FLOAT
    inits = {t.name: t.data_type for t in typed.graph.initializer}
    assert inits["w1"] == inits["w2"] == TensorProto.FLOAT16
    assert TensorProto.FLOAT in {inits[i] for i in producer["ln"].input if i in inits}  # gamma for the island
    assert {inits[i] for i in producer["gate"].input if i in inits} == {TensorProto.FLOAT16}  # its FP16 copy
    for x in xs:  # boost's 1e5 stays FP32 until shrink brings it back: finite and close to FP32
        ref, got = run(model, x)[0], run(typed, x)[0]
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, ref, atol=2e-2 * np.abs(ref).max())


def test_typed_graph_keeps_float32_io_when_an_island_ends_the_graph() -> None:
    model = head_model()
    typed = fp16_typed_graph(model, fp32_islands(model))
    out_types = {o.name: o.type.tensor_type.elem_type for o in typed.graph.output}
    assert out_types == {"logits": TensorProto.FLOAT, "labels": TensorProto.INT64}
    resize_scales = {n.name: n.input[2] for n in typed.graph.node if n.op_type == "Resize"}
    inits = {t.name: t.data_type for t in typed.graph.initializer}
    assert {inits[s] for s in resize_scales.values()} == {TensorProto.FLOAT}  # the spec wants float scales
    assert inits["w0"] == TensorProto.FLOAT16
    x = batches(1, (1, 3, 4, 4))[0]
    ref, got = run(model, x), run(typed, x)
    np.testing.assert_allclose(got[0], ref[0], atol=2e-2 * np.abs(ref[0]).max())
    assert (got[1] == ref[1]).mean() > 0.95


def test_typed_graph_of_the_decomposed_flavour() -> None:
    dec = decompose_layernorms(attention_model())
    islands = fp32_islands(dec, tensor_ranges(dec, batches()))
    typed = fp16_typed_graph(dec, islands)
    assert typed_graph_problems(typed, islands) == []
    casts = [n for n in typed.graph.node if n.op_type == "Cast"]
    assert len({(n.input[0], n.attribute[0].i) for n in casts}) == len(casts)  # no twin casts
    x = batches(1)[0]
    # optimizations off: ONNX Runtime 1.32's LayerNormFusion absorbs the island's input Cast and then rejects its
    # own fused node (FP16 input, FP32 scale); TensorRT, not ONNX Runtime, consumes this graph
    ref = run(dec, x)[0]
    np.testing.assert_allclose(run(typed, x, optimize=False)[0], ref, atol=2e-2 * np.abs(ref).max())


# -- the proxy ------------------------------------------------------------------------------------------------------
def test_proxy_overflows_to_inf_without_islands_and_matches_fp32_with_them() -> None:
    model = attention_model()
    islands = fp32_islands(model, tensor_ranges(model, batches()))
    x = batches(1)[0]
    ref = run(model, x, ("a", "h"))
    naive = run(fp16_proxy(model, None), x, ("a", "h"))
    safe = run(fp16_proxy(model, islands), x, ("a", "h"))
    assert np.isposinf(naive[1]).any() and not np.isfinite(naive[0]).all()  # 1e6 × p → inf, as on the GPU
    assert np.isfinite(safe[1]).all() and np.isfinite(safe[0]).all()
    np.testing.assert_allclose(safe[1], ref[1], rtol=2e-3)  # boost is an island: FP32 (from amplify's FP16 output)
    np.testing.assert_allclose(safe[0], ref[0], atol=1e-2 * np.abs(ref[0]).max())
    for h in (naive[2], safe[2]):  # proj is FP16 in both: its output is exactly representable in FP16
        assert np.array_equal(h, h.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(safe[2], ref[2], rtol=1e-3, atol=1e-3)


def test_proxy_islands_stay_fp32_inside() -> None:
    dec = decompose_layernorms(attention_model())
    islands = fp32_islands(dec)
    var = next(n.output[0] for n in dec.graph.node if n.op_type == "Pow")  # x - mean, squared: inside the island
    x = batches(1)[0]
    with_islands = run(fp16_proxy(dec, islands), x, (var,))[1]
    all_fp16 = run(fp16_proxy(dec, None), x, (var,))[1]
    assert np.array_equal(all_fp16, all_fp16.astype(np.float16).astype(np.float32))
    assert not np.array_equal(with_islands, with_islands.astype(np.float16).astype(np.float32))
    assert not np.array_equal(with_islands, all_fp16)


def test_proxy_weights_follow_tensorrt_conversion() -> None:
    w = np.array([0.0, 1e-9, -1e-9, 1e5, -1e5, 0.1, 2.0 ** -25 * 3], np.float32)
    got = fp16_weights(w)
    assert got[0] == 0 and got[1] == 2.0 ** -24 and got[2] == -(2.0 ** -24)
    assert got[3] == FP16_MAX and got[4] == -FP16_MAX  # clamped, not inf
    assert got[5] == np.float32(np.float16(0.1))
    proxy = fp16_proxy(attention_model(), fp32_islands(attention_model()))
    inits = {t.name: numpy_helper.to_array(t) for t in proxy.graph.initializer}
    ln = next(n for n in proxy.graph.node if n.name == "ln")
    gate = next(n for n in proxy.graph.node if n.name == "gate")
    assert np.array_equal(inits[ln.input[1]], GAMMA)  # the island reads the FP32 weights
    assert np.array_equal(inits[gate.input[1]], GAMMA.astype(np.float16).astype(np.float32))


# -- the flavour the trt-fp16 target ships --------------------------------------------------------------------------
def test_fp16_flavour_per_generation() -> None:
    model = attention_model()
    ranges = tensor_ranges(model, batches())
    for gen in ("8.6", "10"):
        graph, islands, builder = fp16_flavour(model, gen, ranges)
        assert graph is model
        assert builder == {"fp16": True, "int8": False, "strongly_typed": False, "precision_constraints": "obey"}
        assert {i["node"] for i in islands} == {"ln", "attn", "boost", "shrink"}
    graph, islands, builder = fp16_flavour(model, "11", ranges)
    assert builder == {"strongly_typed": True}
    assert typed_graph_problems(graph, islands) == []
    assert any(t.data_type == TensorProto.FLOAT16 for t in graph.graph.initializer)
    dec = decompose_layernorms(model)
    graph, islands, _ = fp16_flavour(dec, "8.5", tensor_ranges(dec, batches()))
    assert graph is dec and sum("decomposed" in i["reason"] for i in islands) == 9


def test_fp16_graph_is_refused_as_input() -> None:
    typed = fp16_typed_graph(attention_model(), fp32_islands(attention_model()))
    with pytest.raises(SegedgeError, match="already holds FP16"):
        fp16_proxy(typed)


# -- a real network -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_topformer_export(tmp_path_factory: pytest.TempPathFactory) -> None:
    """TopFormer-T exported at 128×128: Softmax islands only, the typed graph and the proxy keep its masks."""
    from video_util import scene, tiny_export

    from segedge.runtime import Segmenter

    folder = tiny_export(tmp_path_factory)
    model = onnx.load(str(folder / "model.onnx"))
    with Segmenter.load(folder, target="onnx", threads=1) as seg:
        inputs = [seg.prepare(scene(i)) for i in range(4)]
    ranges = tensor_ranges(model, inputs[:2])
    islands = fp32_islands(model, ranges)
    assert {i["op"] for i in islands} == {"Softmax"} and len(islands) == 4
    typed = fp16_typed_graph(model, islands)
    assert typed_graph_problems(typed, islands) == []
    name = model.graph.input[0].name
    fp32, typed_s, proxy_s = (ort_session(m) for m in (model, typed, fp16_proxy(model, islands)))
    for x in inputs[2:]:  # frames the ranges were not measured on
        ref = fp32.run(None, {name: x})[0]
        for s in (typed_s, proxy_s):
            got = s.run(None, {name: x})[0]
            assert np.isfinite(got).all()
            assert (got.argmax(1) == ref.argmax(1)).mean() > 0.99
            assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
