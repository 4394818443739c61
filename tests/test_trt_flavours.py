"""The ONNX flavour per TensorRT generation: LayerNorm decomposed for 8.5 with the same numerics (ONNX Runtime),
opsets and op rules per generation, and a bundle's generation checks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from segedge.engine.bundle import check_generation, generation_of
from segedge.errors import ExportError, SegedgeError
from segedge.export.quantize import decomposed_layernorms
from segedge.export.trt_flavours import MAX_OPSET, decompose_layernorms, flavour_for, generation_rules, islands_in


def _ln_model(opset: int = 17, bias: bool = True, axis: int = -1) -> onnx.ModelProto:
    """x (1×6×8) → MatMul → LayerNormalization → Softmax: a transformer block's shape in miniature."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w")
    scale = numpy_helper.from_array(rng.normal(1, 0.2, size=(8,)).astype(np.float32), "scale")
    inits = [w, scale]
    ln_inputs = ["h", "scale"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.2, size=(8,)).astype(np.float32), "bias"))
        ln_inputs.append("bias")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("LayerNormalization", ln_inputs, ["n"], name="ln", axis=axis, epsilon=1e-6),
             helper.make_node("Softmax", ["n"], ["y"], name="sm", axis=-1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_decomposition_matches_the_op_and_is_found_as_layernorm(bias: bool) -> None:
    m = _ln_model(bias=bias)
    d = decompose_layernorms(m)
    assert not any(n.op_type == "LayerNormalization" for n in d.graph.node)
    x = np.random.default_rng(1).normal(0, 3, size=(1, 6, 8)).astype(np.float32)
    assert np.abs(_run(d, x) - _run(m, x)).max() < 1e-5
    clusters = decomposed_layernorms(d)  # the quantizer's and the FP16 islands' detector sees it as LayerNorm
    assert len(clusters) == 1 and len(clusters[0]) == (9 if bias else 8)
    assert len(m.graph.node) == 3  # the input model is untouched


def test_layernorm_over_two_axes_decomposes_with_both_axes() -> None:
    m = _ln_model(axis=1)  # normalise over (6, 8): scale must then be 6×8 — use an 8-wide scale broadcast instead
    m.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.ones((6, 8), np.float32), "scale"))
    m.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.zeros((6, 8), np.float32), "bias"))
    x = np.random.default_rng(2).normal(0, 2, size=(1, 6, 8)).astype(np.float32)
    d = decompose_layernorms(m)
    assert np.abs(_run(d, x) - _run(m, x)).max() < 1e-5
    rm = next(n for n in d.graph.node if n.op_type == "ReduceMean")
    assert list(helper.get_attribute_value(rm.attribute[0])) == [1, 2]


def test_flavour_8_5_is_opset_16_without_layernorm_and_others_keep_it() -> None:
    m = _ln_model()
    f85 = flavour_for(m, "8.5")
    assert f85.opset_import[0].version == 16 and generation_rules(f85, "8.5") == []
    assert not any(n.op_type == "LayerNormalization" for n in f85.graph.node)
    for gen in ("8.6", "10", "11"):
        f = flavour_for(m, gen)
        assert any(n.op_type == "LayerNormalization" for n in f.graph.node)
        assert f.opset_import[0].version == 17
    x = np.random.default_rng(3).normal(size=(1, 6, 8)).astype(np.float32)
    assert np.abs(_run(f85, x) - _run(m, x)).max() < 1e-5


def test_generation_rules_name_what_breaks() -> None:
    m = _ln_model()
    problems = generation_rules(m, "8.5")
    assert any("opset 17 is above 16" in p for p in problems)
    assert any("cannot import LayerNormalization" in p for p in problems)
    assert generation_rules(m, "10") == []
    assert MAX_OPSET["8.6"] == 17


def test_a_graph_too_new_for_8_5_is_refused_with_the_fix() -> None:
    m = _ln_model(opset=18)
    with pytest.raises(ExportError, match="re-export with --opset 17"):
        flavour_for(m, "8.5")
    with pytest.raises(ExportError, match="unknown TensorRT generation"):
        flavour_for(m, "9.9")


def test_layernorm_with_used_statistics_outputs_is_refused() -> None:
    m = _ln_model()
    ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    ln.output.append("mean_out")
    m.graph.output.append(helper.make_tensor_value_info("mean_out", TensorProto.FLOAT, None))
    with pytest.raises(ExportError, match="Mean/InvStdDev"):
        decompose_layernorms(m)


def test_tensorrt_versions_map_to_generations() -> None:
    assert [generation_of(v) for v in ("8.5.2.2", "8.5.3", "8.6.1.6", "10.0.1", "10.3.0.30", "11.0.0")] == \
        ["8.5", "8.5", "8.6", "10", "10", "11"]
    assert check_generation("10.3") == "10" and check_generation("TRT8.5") == "8.5" and check_generation("11") == "11"
    with pytest.raises(SegedgeError, match="too old"):
        generation_of("8.4.1")
    with pytest.raises(SegedgeError, match="choose one of 8.5, 8.6, 10, 11"):
        check_generation("seven")


def test_islands_follow_a_decomposed_layernorm_to_its_primitive_nodes() -> None:
    m = _ln_model()
    islands = [{"node": "ln", "op": "LayerNormalization", "reason": "LayerNorm"},
               {"node": "sm", "op": "Softmax", "reason": "Softmax"}, {"node": "gone", "op": "Conv", "reason": "x"}]
    assert [i["node"] for i in islands_in(flavour_for(m, "10"), islands)] == ["ln", "sm"]
    f85 = islands_in(flavour_for(m, "8.5"), islands)
    assert [i["op"] for i in f85] == ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add",
                                      "Softmax"]
    assert f85[0] == {"node": "ln/ReduceMean", "op": "ReduceMean", "reason": "LayerNorm (decomposed)"}
