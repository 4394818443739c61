"""ort-int8 and the TensorRT-style Q/DQ artifact: rule validator (good and broken graphs), numerics, kept-float nodes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from segedge.errors import SegedgeError
from segedge.export import ExportOptions, export_model
from segedge.export.calibration import DEFAULT_CALIB_DIR, CalibrationTable
from segedge.export.qdq_rules import check_placement, residual_adds, validate_qdq
from segedge.export.quantize import ORT_CPU, ort_cpu_flavour, out_of_scope, quantize, select_kept_float, summarize
from segedge.models import create_model, save_checkpoint
from segedge.runtime.preprocess import preprocess

SIZE = (128, 128)


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("q")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("b0", num_classes=11), tmp / "b0.safetensors",
                           {"model": "b0", "num_classes": 11, "input_size": list(SIZE)})
    # traced as trained: its decoder Concat exercises the shared-range rules (the folded form: tests/test_fold.py)
    res = export_model(ExportOptions("b0", weights=ckpt, targets="ort-int8", input_size=SIZE, calib_count=4,
                                     fold=False, out=tmp / "exp"))
    return res.out_dir, res.manifest


# -- the validator on hand-built graphs ---------------------------------------------------------------------------

def _conv_model(weight_scale: np.ndarray, weight_zp: np.ndarray, act_scale: np.ndarray, act_zp: np.ndarray,
                axis: int = 0, weight_dtype: type = np.int8, bias_dq: bool = False) -> onnx.ModelProto:
    """x → Q → DQ → Conv(DQ(W)) with the given quantization parameters."""
    w = np.random.default_rng(0).integers(-100, 100, (4, 3, 3, 3)).astype(weight_dtype)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(weight_scale.astype(np.float32), "w_s"),
             numpy_helper.from_array(weight_zp, "w_zp"), numpy_helper.from_array(act_scale.astype(np.float32), "a_s"),
             numpy_helper.from_array(act_zp, "a_zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "a_s", "a_zp"], ["x_q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["x_q", "a_s", "a_zp"], ["x_dq"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], name="dq_w", axis=axis)]
    conv_in = ["x_dq", "w"]
    if bias_dq:
        inits += [numpy_helper.from_array(np.zeros(4, np.int32), "b_q"),
                  numpy_helper.from_array(np.full(4, 0.01, np.float32), "b_s"),
                  numpy_helper.from_array(np.zeros(4, np.int32), "b_zp")]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b"], name="dq_b", axis=0))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


GOOD = dict(weight_scale=np.full(4, 0.01), weight_zp=np.zeros(4, np.int8), act_scale=np.array(0.02),
            act_zp=np.array(0, np.int8))


def test_validator_accepts_a_tensorrt_style_graph() -> None:
    m = _conv_model(**GOOD)
    onnx.checker.check_model(m)
    assert validate_qdq(m) == []


@pytest.mark.parametrize("change, rule", [
    (dict(act_zp=np.array(128, np.uint8)), "zero-point-int8"),
    (dict(act_zp=np.array(3, np.int8)), "zero-point-zero"),
    (dict(act_scale=np.array(-0.02)), "scale-positive"),
    (dict(act_scale=np.array(np.inf)), "scale-positive"),
    (dict(act_scale=np.full(3, 0.02), act_zp=np.zeros(3, np.int8)), "activation-per-tensor"),
    (dict(weight_scale=np.array(0.01), weight_zp=np.array(0, np.int8)), "weight-per-channel"),
    (dict(weight_scale=np.full(3, 0.01), weight_zp=np.zeros(3, np.int8), axis=1), "weight-axis"),
    (dict(bias_dq=True), "zero-point-int8"),
])
def test_validator_flags_each_broken_rule(change: dict, rule: str) -> None:
    violations = validate_qdq(_conv_model(**{**GOOD, **change}))
    assert rule in {v.rule for v in violations}, violations


def test_validator_on_a_float_model_and_on_missing_zero_point() -> None:
    m = _conv_model(**GOOD)
    float_model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    assert [v.rule for v in validate_qdq(float_model)] == ["has-qdq"]
    for n in m.graph.node:
        if n.name == "q_x":
            del n.input[2]
    assert "zero-point-int8" in {v.rule for v in validate_qdq(m)}


# -- the exported artifacts -----------------------------------------------------------------------------------------

def test_exported_qdq_follows_the_rules_and_int8_does_not(int8_export: tuple[Path, dict]) -> None:
    out, man = int8_export
    assert validate_qdq(out / "model.qdq.onnx") == []
    qm = onnx.load(str(out / "model.qdq.onnx"))
    dq_axes = {n.input[0]: n for n in qm.graph.node if n.op_type == "DequantizeLinear"}
    assert any(len(n.attribute) for n in dq_axes.values())  # per-channel weights present
    rules = {v.rule for v in validate_qdq(out / "model.int8.onnx")}
    assert "zero-point-int8" in rules  # the CPU flavour uses uint8 activations on purpose
    q = man["targets"]["qdq"]["quantization"]
    assert q["activation_type"] == "int8" and q["per_channel"] and q["qdq_rules"] == "passed"
    # TensorRT's placement: inputs of weighted ops and the skip input of every residual Add that fuses into a weighted
    # op (2 per transformer block, 16, plus the decode head's), no weighted-op output read by a float op; the old
    # placement (ORT's own) breaks it.
    assert check_placement(qm) == [] and q["qdq_placement"] == "passed" and q["placement"] == "tensorrt"
    fusible = [a.node for a in residual_adds(qm) if a.weighted is not None]
    assert sum(n.startswith("/backbone/") for n in fusible) == 16
    assert q["quantized_by_op"]["Add"] == len(fusible)
    # The 8 attention maps (Softmax → MatMul) are quantized on [0, 1], not on their calibrated range.
    softmax = {n.output[0] for n in qm.graph.node if n.op_type == "Softmax"}
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    scales = [float(inits[n.input[1]]) for n in qm.graph.node
              if n.op_type == "QuantizeLinear" and n.input[0] in softmax]
    assert len(scales) == 8 and np.allclose(scales, 1 / 127) and q["softmax_unit_range"]
    assert {v.rule for v in check_placement(out / "model.int8.onnx")} >= {"weighted-output"}
    i8 = man["targets"]["ort-int8"]["quantization"]
    assert i8["activation_type"] == "uint8" and not i8["per_channel"]
    assert man["targets"]["ort-int8"]["calibration"]["table"] == man["targets"]["qdq"]["calibration"]["table"]


def test_int8_numerics_stay_close_to_fp32(int8_export: tuple[Path, dict]) -> None:
    out, man = int8_export
    mean, std = man["input"]["mean"], man["input"]["std"]
    fp32 = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(out / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    agree, spread = [], []
    for p in sorted(DEFAULT_CALIB_DIR.glob("*.jpg"))[:4]:
        x = preprocess(cv2.imread(str(p)), SIZE, mean, std)
        a, b = fp32.run(None, {"input": x})[0], int8.run(None, {"input": x})[0]
        agree.append((a.argmax(1) == b.argmax(1)).mean())
        spread.append(np.abs(a - b).mean() / np.abs(a).mean())
    assert np.mean(agree) >= 0.85, agree  # random-init weights: near-ties; trained models agree far more
    assert np.mean(spread) < 0.2, spread
    v = man["targets"]["ort-int8"]["verification"]
    assert v["argmax_agreement"] >= 0.85 and v["reference"] == "pytorch"


def test_default_kept_float_nodes_are_listed(int8_export: tuple[Path, dict]) -> None:
    q = int8_export[1]["targets"]["ort-int8"]["quantization"]
    reasons = q["kept_float_by_reason"]
    assert reasons["LayerNorm"] == 30 and reasons["Softmax"] == 8 and reasons["final classifier conv"] == 1
    kept = {k["node"] for k in q["kept_float"]}
    assert not kept & set(q["quantized"])
    # SegFormer's ort-int8 scope: dense convs (4 patch embeds, 6 spatial reductions, the head's fuse conv) and the
    # head's Concat; the 8 MixFFN depthwise convs and every Linear/MatMul stay float.
    assert q["scope"] == "conv" and q["scope_requested"] == "auto"
    assert q["quantized_by_op"] == {"Conv": 11, "Concat": 1}
    assert reasons["scope conv: depthwise conv"] == 8
    qm = onnx.load(str(int8_export[0] / "model.int8.onnx"))
    by_name = {n.name: n for n in qm.graph.node}
    inits = {t.name: t for t in qm.graph.initializer}
    q_in = {i for n in qm.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    cls = by_name[next(k["node"] for k in q["kept_float"] if k["reason"] == "final classifier conv")]
    # Kept float: the classifier runs with its float weight and its logits are never quantized.
    assert inits[cls.input[1]].data_type == TensorProto.FLOAT and cls.output[0] not in q_in


def test_scope_all_quantizes_the_transformer_blocks_and_concat_inputs_share_a_range(
        int8_export: tuple[Path, dict], tmp_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = int8_export[0]
    quant_pre_process(str(out / "model.onnx"), str(tmp_path / "pre.onnx"))
    pre = onnx.load(str(tmp_path / "pre.onnx"))
    table = CalibrationTable.load(out / "calibration.minmax.json")
    flavour = ort_cpu_flavour("segformer", "all")
    assert flavour.scope == "all" and ort_cpu_flavour("topformer", "auto").scope == "all"
    assert ort_cpu_flavour("segformer", "auto").scope == "conv"
    with pytest.raises(SegedgeError, match="--ort-scope must be one of auto, all, conv"):
        ort_cpu_flavour("segformer", "everything")
    kept = select_kept_float(pre, flavour=flavour)
    qm = quantize(tmp_path / "pre.onnx", table, flavour, kept)
    by_op = summarize(qm, kept, flavour)["quantized_by_op"]
    assert by_op["MatMul"] + by_op.get("Gemm", 0) >= 30 and by_op["Conv"] == 19
    for model in (qm, onnx.load(str(out / "model.int8.onnx"))):
        producer = {o: n for n in model.graph.node for o in n.output}
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        concat = next(n for n in model.graph.node if n.op_type == "Concat")
        scales = {float(inits[producer[i].input[1]]) for i in concat.input}
        out_q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == concat.output[0])
        assert len(scales) == 1 and scales == {float(inits[out_q.input[1]])}  # QLinearConcat becomes a copy
    # The table itself is untouched: other targets read the measured ranges.
    assert len({tuple(table.ranges[i]) for i in next(n for n in pre.graph.node if n.op_type == "Concat").input}) > 1


def test_conv_scope_on_a_hand_built_graph() -> None:
    """Resize→Concat feeding a dense conv are in scope; a depthwise conv and a Resize feeding nothing are not."""
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((4, 8, 1, 1), np.float32), "w")
    wd = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "wd")
    sc = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
    nodes = [helper.make_node("Resize", ["a", "", "sc"], ["a_up"], name="up", mode="linear"),
             helper.make_node("Concat", ["a_up", "b"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "w"], ["y"], name="fuse"),
             helper.make_node("Conv", ["y", "wd"], ["z"], name="dw", group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["z", "", "sc"], ["out"], name="last", mode="linear")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", f, [1, 4, 4, 4]),
                                       helper.make_tensor_value_info("b", f, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("out", f, [1, 4, 16, 16])], [w, wd, sc])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    flavour = ort_cpu_flavour("segformer")
    left = {k.node: k.reason for k in out_of_scope(m, flavour, [])}
    assert left == {"dw": "scope conv: depthwise conv", "last": "scope conv: does not feed a quantized conv"}
    assert out_of_scope(m, ort_cpu_flavour("segformer", "all"), []) == []


def test_keep_float_and_quantize_all_change_the_selection(int8_export: tuple[Path, dict], tmp_path: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = int8_export[0]
    quant_pre_process(str(out / "model.onnx"), str(tmp_path / "pre.onnx"))
    pre = onnx.load(str(tmp_path / "pre.onnx"))
    every = select_kept_float(pre, quantize_all=True)
    assert every == []
    convs = select_kept_float(pre, keep_float=["Conv"], quantize_all=True)
    assert {k.op for k in convs} == {"Conv"} and len(convs) == sum(n.op_type == "Conv" for n in pre.graph.node)
    default = select_kept_float(pre)
    assert {k.reason for k in default} >= {"LayerNorm", "Softmax", "final classifier conv"}
    with pytest.raises(SegedgeError, match="matches no op type or node"):
        select_kept_float(pre, keep_float=["NoSuchOp"])
    table = CalibrationTable.load(out / "calibration.minmax.json")
    qm = quantize(tmp_path / "pre.onnx", table, ORT_CPU, convs)
    dq_out = {o for n in qm.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert not any(n.input[1] in dq_out for n in qm.graph.node if n.op_type == "Conv")  # float conv weights
    by_op = summarize(qm, convs, ORT_CPU)["quantized_by_op"]
    assert "Conv" not in by_op  # --keep-float Conv
    assert by_op["Softmax"] == 8 and by_op["LayerNormalization"] == 30  # --quantize-all reaches the defaults


def test_val_reports_miou_per_target(camvid_like: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    ckpt = save_checkpoint(create_model("topformer-t", num_classes=11), tmp_path / "tf.safetensors",
                           {"model": "topformer-t", "num_classes": 11, "input_size": list(SIZE)})
    res = export_model(ExportOptions("topformer-t", weights=ckpt, targets="ort-int8", input_size=SIZE,
                                     calib_count=2, verify_frames=1, val=camvid_like, val_count=2,
                                     out=tmp_path / "exp"))
    vals = {t: e["verification"]["val"] for t, e in res.manifest["targets"].items()}
    assert set(vals) == {"onnx", "ort-int8", "qdq"}
    for v in vals.values():
        assert v["frames"] == 2 and 0.0 <= v["miou"] <= 1.0 and v["pytorch_miou"] == vals["onnx"]["pytorch_miou"]
    assert abs(vals["onnx"]["miou"] - vals["onnx"]["pytorch_miou"]) < 0.02  # FP32 ONNX ≈ PyTorch
