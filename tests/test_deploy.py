"""`segedge deploy`: the DeepStream nvinfer config (normalisation folded into the first conv, proved with ONNX Runtime)
and Triton model-repository entries (parsed with Triton's own protobuf), on real tiny exports."""

from __future__ import annotations

import configparser
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from video_util import REPO, run_cli

from segedge.contract import Manifest
from segedge.deploy.deepstream import CONFIG_NAME, write_deepstream
from segedge.deploy.fold import (build_deepstream_graph, first_convs, fold_normalisation, fold_scale,
                                 graph_channel_stats, prove_equivalence)
from segedge.deploy.triton import write_triton
from segedge.errors import ExportError, SegedgeError
from segedge.export.calibration import load_calibration_frames

text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _export(tmp_path_factory: pytest.TempPathFactory, name: str, **kw) -> Path:
    from segedge.export import ExportOptions, export_model

    out = tmp_path_factory.getbasetemp() / f"deploy-{name}"
    if not (out / "manifest.json").is_file():
        export_model(ExportOptions(input_size=(128, 128), verify_frames=1, out=out, **kw))
    return out


@pytest.fixture(scope="module")
def float_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TopFormer-T, float io, ONNX + OpenVINO IR."""
    return _export(tmp_path_factory, "float", model="topformer-t", targets="onnx,openvino")


@pytest.fixture(scope="module")
def raw_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TopFormer-T, raw io (uint8 BGR NHWC in, uint8 labels out)."""
    return _export(tmp_path_factory, "raw", model="topformer-t", targets="onnx", io="raw")


@pytest.fixture(scope="module")
def b0_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SegFormer-B0 with a dynamic batch (its first conv: 7×7, stride 4, padding 3)."""
    return _export(tmp_path_factory, "b0", model="b0", targets="onnx", dynamic_batch=True)


def _ini(path: Path) -> configparser.SectionProxy:
    cp = configparser.ConfigParser()
    assert cp.read(path, encoding="utf-8") == [str(path)]
    return cp["property"]


def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(".*")]


# -- the folding, on real exports ------------------------------------------------------------------------------------
def test_deepstream_b0_folds_first_conv_and_matches_original(b0_export: Path, tmp_path: Path) -> None:
    res = write_deepstream(b0_export, tmp_path / "ds", frame_count=4, batch_size=2)
    man = Manifest.read(b0_export)
    c = man.contract
    chk = res.check
    assert chk["max_abs_diff"] <= 1e-3 + 1e-4 * chk["max_abs_logit"]
    assert chk["max_abs_diff"] > 0  # the weights really changed: float32 re-association leaves a trace
    assert chk["argmax_agreement"] == 1.0 and chk["output_argmax_agreement"] == 1.0
    assert chk["pixels"] == 4 * 32 * 32

    p = _ini(res.config)
    mean, std = graph_channel_stats(c)
    assert p["network-type"] == "2" and p["network-mode"] == "0" and p["process-mode"] == "1"
    assert p["model-color-format"] == "0"  # the contract's RGB
    assert p["infer-dims"] == f"3;{c.input.height};{c.input.width}"
    assert float(p["net-scale-factor"]) == pytest.approx(1.0 / np.mean(std), rel=1e-12)
    assert [float(v) for v in p["offsets"].split(";")] == pytest.approx(mean)
    assert int(p["num-detected-classes"]) == c.num_classes
    assert p["batch-size"] == "2" and p["gie-unique-id"] == "1"
    assert float(p["segmentation-threshold"]) == 0.0
    deployed = onnx.load(str(res.config.parent / p["onnx-file"]))
    assert [o.name for o in deployed.graph.output] == [p["output-blob-names"]]
    labels = (res.config.parent / p["labelfile-path"]).read_text(encoding="utf-8").splitlines()
    assert labels == c.class_names
    text = res.config.read_text(encoding="utf-8")
    assert f"{chk['max_abs_diff']:.3g}" in text and "DS_plugin_gst-nvinfer" in text
    record = json.loads((res.config.parent / "deepstream_check.json").read_text(encoding="utf-8"))
    first = first_convs(onnx.load(str(b0_export / "model.onnx")))[0].name
    assert record["folded"] is True and record["conv_nodes"] == [first]
    assert _no_temp_files(res.config.parent) == []


def test_folded_weights_are_the_original_times_channel_factors(float_export: Path) -> None:
    original = onnx.load(str(float_export / "model.onnx"))
    c = Manifest.read(float_export).contract
    _, std = graph_channel_stats(c)
    folded, convs, factors = fold_normalisation(original, std, fold_scale(std))
    conv = next(n for n in original.graph.node if n.name == convs[0])
    w0 = numpy_helper.to_array(next(t for t in original.graph.initializer if t.name == conv.input[1]))
    new_conv = next(n for n in folded.graph.node if n.name == convs[0])
    w1 = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == new_conv.input[1]))
    expected = w0 * (np.mean(std) / np.asarray(std))[None, :, None, None]
    np.testing.assert_allclose(w1, expected, rtol=1e-6)
    assert factors == pytest.approx(list(np.mean(std) / np.asarray(std)))


def test_unfolded_graph_fed_like_nvinfer_fails_the_proof(float_export: Path) -> None:
    """Negative control: without the fold, the scalar scale gives different logits and the check refuses."""
    original = onnx.load(str(float_export / "model.onnx"))
    c = Manifest.read(float_export).contract
    graph = build_deepstream_graph(original, c)
    unfolded = onnx.ModelProto()
    unfolded.CopyFrom(original)
    logits = graph.logits_name
    unfolded.graph.node.append(helper.make_node("Softmax", [logits], [graph.output_name], axis=1))
    del unfolded.graph.output[:]
    unfolded.graph.output.append(helper.make_tensor_value_info(graph.output_name, TensorProto.FLOAT, None))
    graph.model = unfolded
    frames = load_calibration_frames(None, 2).frames
    with pytest.raises(ExportError, match="does not match the original"):
        prove_equivalence(original, graph, c, frames)


def _conv_model(group: int, feeds_add: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    out_ch = 6
    w = rng.normal(size=(out_ch, 3 // group, 3, 3)).astype(np.float32)
    b = rng.normal(size=(out_ch,)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="stem", pads=[1, 1, 1, 1], group=group)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if feeds_add:
        nodes.append(helper.make_node("Add", ["x", "x"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 11])],
                          outputs, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("group", [1, 3])
def test_fold_is_exact_at_padded_borders(group: int) -> None:
    """Dense and depthwise first convs: every output pixel, the zero-padded border included, matches."""
    from segedge.export.verify import ort_session

    model = _conv_model(group)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    s = fold_scale(std)
    folded, _, _ = fold_normalisation(model, std, s)
    x = np.random.default_rng(1).integers(0, 256, size=(1, 3, 9, 11)).astype(np.float64)
    ref = ort_session(model).run(None, {"x": ((x - mean[:, None, None]) / std[:, None, None]).astype(np.float32)})[0]
    got = ort_session(folded).run(None, {"x": (s * (x - mean[:, None, None])).astype(np.float32)})[0]
    np.testing.assert_allclose(got, ref, atol=2e-5)
    assert np.abs(got[..., 0, :] - ref[..., 0, :]).max() < 2e-5  # a padded row


def test_first_conv_refusals_are_one_line() -> None:
    with pytest.raises(SegedgeError, match="feeds Add") as e:
        first_convs(_conv_model(1, feeds_add=True))
    assert "\n" not in str(e.value)
    q = _conv_model(1)
    q.graph.node[0].input[0] = "xd"
    q.graph.initializer.extend([numpy_helper.from_array(np.float32(0.05), "sc"),
                                numpy_helper.from_array(np.int8(0), "zp")])
    q.graph.node.insert(0, helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["xq"]))
    q.graph.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "sc", "zp"], ["xd"]))
    with pytest.raises(SegedgeError, match="feeds QuantizeLinear.*--target onnx"):
        first_convs(q)


def test_deepstream_raw_export_needs_no_fold(raw_export: Path, tmp_path: Path) -> None:
    res = write_deepstream(raw_export, tmp_path / "ds", frame_count=3)
    p = _ini(res.config)
    c = Manifest.read(raw_export).contract
    assert float(p["net-scale-factor"]) == 1.0 and [float(v) for v in p["offsets"].split(";")] == [0.0, 0.0, 0.0]
    assert p["model-color-format"] == "1"  # the raw export's BGR frames
    assert res.check["max_abs_diff"] <= 1e-5 and res.check["argmax_agreement"] == 1.0
    deployed = onnx.load(str(res.onnx))
    dims = [d.dim_value for d in deployed.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, c.input.height, c.input.width]
    assert deployed.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert "ArgMax" not in {n.op_type for n in deployed.graph.node}


# -- Triton ---------------------------------------------------------------------------------------------------------
def _parse(config: Path):
    return text_format.Parse(config.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def _onnx_dims(path: Path) -> tuple[list, list]:
    m = onnx.load(str(path), load_external_data=False)

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    return dims(m.graph.input[0]), dims(m.graph.output[0])


def test_triton_onnx_float_fixed_batch(float_export: Path, tmp_path: Path) -> None:
    res = write_triton(float_export, tmp_path / "repo", target="onnx", instances=3)
    cfg = _parse(res.config)
    assert cfg.name == "topformer-t-onnx" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 0
    in_dims, out_dims = _onnx_dims(float_export / "model.onnx")
    assert list(cfg.input[0].dims) == in_dims and list(cfg.output[0].dims) == out_dims
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32 and cfg.input[0].name == "input"
    assert cfg.output[0].name == "logits"
    kinds = model_config_pb2.ModelInstanceGroup
    assert cfg.instance_group[0].count == 3 and cfg.instance_group[0].kind == kinds.KIND_AUTO
    placed = res.model_dir / "1" / "model.onnx"
    assert placed.read_bytes() == (float_export / "model.onnx").read_bytes()
    assert (res.model_dir / "labels.txt").read_text(encoding="utf-8").splitlines() == \
        Manifest.read(float_export).contract.class_names
    assert _no_temp_files(tmp_path / "repo") == []


def test_triton_openvino_ir(float_export: Path, tmp_path: Path) -> None:
    import openvino as ov

    res = write_triton(float_export, tmp_path / "repo", target="openvino")
    cfg = _parse(res.config)
    assert cfg.backend == "openvino" and not cfg.platform
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    model = ov.Core().read_model(str(res.model_dir / "1" / "model.xml"))  # finds model.bin beside it
    assert list(cfg.input[0].dims) == list(model.inputs[0].get_shape())
    assert list(cfg.output[0].dims) == list(model.outputs[0].get_shape())
    assert cfg.input[0].name in model.inputs[0].get_names() and cfg.output[0].name in model.outputs[0].get_names()


def test_triton_raw_uint8_io(raw_export: Path, tmp_path: Path) -> None:
    res = write_triton(raw_export, tmp_path / "repo", name="cam_seg")
    cfg = _parse(res.config)
    assert cfg.input[0].data_type == model_config_pb2.TYPE_UINT8
    assert cfg.output[0].data_type == model_config_pb2.TYPE_UINT8
    in_dims, out_dims = _onnx_dims(raw_export / "model.onnx")
    assert list(cfg.input[0].dims) == in_dims and list(cfg.output[0].dims) == out_dims


def test_triton_dynamic_batch_uses_max_batch_size(b0_export: Path, tmp_path: Path) -> None:
    res = write_triton(b0_export, tmp_path / "repo", max_batch_size=4, kind="gpu")
    cfg = _parse(res.config)
    assert cfg.max_batch_size == 4
    from segedge.export.verify import ort_session

    in_dims, _ = _onnx_dims(b0_export / "model.onnx")
    assert in_dims[0] == -1 and list(cfg.input[0].dims) == in_dims[1:]
    sess = ort_session(str(b0_export / "model.onnx"))
    y = sess.run(None, {"input": np.zeros((2, *cfg.input[0].dims), np.float32)})[0]
    assert list(y.shape) == [2, *cfg.output[0].dims]  # the graph leaves h, w symbolic: run it
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def _with_trt_target(src: Path, dst: Path, status: str) -> Path:
    """A copy of an export folder plus a trt-fp16 entry in the state the device bundle records (`engine` block)."""
    shutil.copytree(src, dst)
    shutil.copyfile(dst / "model.onnx", dst / "model.trt-fp16.onnx")
    man = Manifest.read(dst)
    block = {"status": status, "onnx": "model.trt-fp16.onnx", "generation": "10",
             "build_command": f"segedge engine build {dst} --target trt-fp16",
             "fp32_islands": [{"node": "/decode_head/conv_seg/Conv", "op": "Conv", "reason": "classifier"}]}
    entry = {"file": "model.trt-fp16.onnx", "precision": "fp16", "engine": block}
    if status == "built":
        # Dispatch only: a TensorRT engine cannot be built without a GPU; the config never reads its bytes.
        (dst / "model.trt-fp16.engine").write_bytes(b"engine built on the device")
        block["built_on"] = {"gpu": "Orin", "tensorrt": "10.3.0"}
        entry["file"] = "model.trt-fp16.engine"
    man.add_target("trt-fp16", entry)
    man.write(dst)
    return dst


def test_triton_tensorrt_plan_and_pending_engine(float_export: Path, tmp_path: Path) -> None:
    pending = _with_trt_target(float_export, tmp_path / "pending", "pending")
    with pytest.raises(SegedgeError, match="not built yet.*segedge engine build.*--target onnx") as e:
        write_triton(pending, tmp_path / "repo", target="trt-fp16")
    assert "\n" not in str(e.value)
    built = _with_trt_target(float_export, tmp_path / "built", "built")
    res = write_triton(built, tmp_path / "repo", target="trt-fp16")
    cfg = _parse(res.config)
    assert cfg.platform == "tensorrt_plan"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (res.model_dir / "1" / "model.plan").read_bytes() == (built / "model.trt-fp16.engine").read_bytes()
    assert "must be built on the serving GPU" in res.text and "Orin" in res.text
    with pytest.raises(SegedgeError, match="GPU only"):
        write_triton(built, tmp_path / "repo2", target="trt-fp16", kind="cpu")


def test_deepstream_pending_trt_fp16_builds_from_its_onnx(float_export: Path, tmp_path: Path) -> None:
    pending = _with_trt_target(float_export, tmp_path / "pending", "pending")
    res = write_deepstream(pending, tmp_path / "ds", target="trt-fp16", frame_count=2)
    p = _ini(res.config)
    assert p["network-mode"] == "2" and p["onnx-file"] == "model.trt-fp16.deepstream.onnx"
    assert "# FP32 nodes: /decode_head/conv_seg/Conv" in res.config.read_text(encoding="utf-8")
    assert res.check["argmax_agreement"] == 1.0


# -- the command line -----------------------------------------------------------------------------------------------
def test_cli_deepstream_and_triton_succeed(float_export: Path, tmp_path: Path) -> None:
    r = run_cli(["deploy", "deepstream", str(float_export), "--target", "onnx", "--out", str(tmp_path / "ds"),
                 "--frame-count", "2", "--threshold", "0.3"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "argmax agreement 100.00%" in r.stdout
    assert float(_ini(tmp_path / "ds" / CONFIG_NAME)["segmentation-threshold"]) == 0.3
    r = run_cli(["deploy", "triton", str(float_export), "--target", "openvino", "--out", str(tmp_path / "repo"),
                 "--name", "seg", "--instances", "2"], cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert _parse(tmp_path / "repo" / "seg" / "config.pbtxt").instance_group[0].count == 2


@pytest.mark.parametrize("args, needle", [
    (["triton", "{export}", "--target", "coreml", "--out", "{tmp}/repo"], "target 'coreml' is not in"),
    (["deepstream", "{export}", "--target", "openvino", "--out", "{tmp}/ds"], "OpenVINO IR"),
    (["deepstream", "{export}", "--target", "onnx", "--out", "{tmp}/file/ds"], "cannot write the DeepStream config"),
    (["triton", "{export}", "--target", "onnx", "--out", "{tmp}/file/repo"], "cannot write the Triton model"),
    (["triton", "{export}", "--target", "onnx", "--out", "{tmp}/repo", "--max-batch-size", "4"], "dynamic-batch"),
    (["triton", "{tmp}/nowhere", "--out", "{tmp}/repo"], "does not exist"),
    (["deepstream", "{export}", "--target", "onnx", "--out", "{tmp}/ds", "--batch-size", "2"], "fixed batch of 1"),
    (["triton", "{export}", "--target", "onnx", "--out", "{tmp}/repo", "--name", "../up"], "model name '../up'"),
])
def test_cli_failures_are_one_line(float_export: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    argv = ["deploy", *(a.format(export=float_export, tmp=tmp_path) for a in args)]
    r = run_cli(argv, cwd=REPO)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_pending_engine_is_one_line(float_export: Path, tmp_path: Path) -> None:
    pending = _with_trt_target(float_export, tmp_path / "pending", "pending")
    r = run_cli(["deploy", "triton", str(pending), "--target", "trt-fp16", "--out", str(tmp_path / "repo")], cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "build it on the serving GPU first" in r.stderr
    assert not (tmp_path / "repo").exists()
