"""`segedge export --target trt-int8` on a host without TensorRT: the device bundle (flavour ONNX per generation,
reference.npz, pending manifest entry with the build command), and the runtime's refusal to run a pending engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import slow_except

from segedge.contract import Manifest
from segedge.engine.bundle import REFERENCE_NAME, Reference
from segedge.errors import SegedgeError
from segedge.export.qdq_rules import check_placement, validate_qdq
from segedge.export.trt_flavours import generation_rules
from segedge.io import sha256_file
from segedge.runtime import Segmenter

pytestmark = pytest.mark.skipif(
    __import__("segedge.toolkits.tensorrt", fromlist=["TOOLKIT"]).TOOLKIT.unavailable() is None,
    reason="TensorRT and a GPU are here: export builds the engine at once (covered by the gpu tests)")


def _export(out: Path, targets: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segedge.cli", "export", "--model", "topformer-t", "--input-size",
                           "128x128", "--target", targets, "--calib-count", "4", "--out",
                           str(out), *extra], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trt") / "tt"
    r = _export(out, "trt-int8", "--trt-version", "8.5")
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_int8_bundle_holds_the_flavour_the_reference_and_a_pending_entry(bundle: Path) -> None:
    man = Manifest.read(bundle)
    e = man.targets["trt-int8"]
    assert e.file == "model.trt-int8.onnx" and e.precision == "int8" and e.get("runtime") == "tensorrt"
    block = e.get("engine")
    assert block["status"] == "pending" and block["generation"] == "8.5"
    assert block["file"] == "model.trt-int8.engine" and not (bundle / block["file"]).exists()
    assert block["build_command"].startswith("segedge engine build ") and block["build_command"].endswith(
        "--target trt-int8")
    assert block["builder"] == {"int8": True, "fp16": True, "precision_constraints": "obey", "strongly_typed": False}
    reasons = {i["reason"] for i in block["fp32_islands"]}  # TopFormer has no LayerNorm
    assert reasons == {"Softmax", "final classifier conv",
                       "family default float group tpm.s1 (chosen by --max-miou-drop 0.3)"}
    assert all(i["node"].startswith("/backbone/tpm/") for i in block["fp32_islands"] if "tpm.s1" in i["reason"])
    # the graph: TensorRT 8.5 flavour (opset 16, no LayerNormalization op), Q/DQ rules pass
    g = onnx.load(str(bundle / e.file))
    assert generation_rules(g, "8.5") == [] and validate_qdq(g) == [] and check_placement(g) == []
    assert g.opset_import[0].version <= 16
    assert {i["node"] for i in block["fp32_islands"]} <= {n.name for n in g.graph.node}
    # every file the entry lists is there with its recorded hash
    assert e.sha256 == sha256_file(bundle / e.file)
    assert e.companion_files[REFERENCE_NAME]["sha256"] == sha256_file(bundle / REFERENCE_NAME)


def test_reference_is_the_fp32_onnx_on_real_inputs(bundle: Path) -> None:
    import onnxruntime as ort

    ref = Reference.load(bundle / REFERENCE_NAME)
    assert ref.inputs.shape[1:] == (3, 128, 128) and ref.inputs.dtype == np.float32
    assert len(ref.names) == len(ref.inputs) >= 1 and all("/" not in n for n in ref.names)
    sess = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = np.concatenate([sess.run(None, {name: ref.inputs[i:i + 1]})[0] for i in range(len(ref.inputs))])
    assert np.abs(got - ref.logits).max() < 1e-4


def test_runtime_refuses_a_pending_engine_with_the_build_command(bundle: Path) -> None:
    with pytest.raises(SegedgeError, match=r"engine is not built yet.*segedge engine build .* --target trt-int8"):
        Segmenter.load(bundle, target="trt-int8")
    with pytest.raises(SegedgeError, match="engine is not built yet"):
        Segmenter.load(bundle / "model.trt-int8.onnx")
    with Segmenter.load(bundle, target="onnx") as seg:  # the folder's other targets still load
        assert seg.predict(np.zeros((64, 80, 3), np.uint8)).shape == (64, 80)


def test_cli_prints_the_device_command_and_refuses_an_unknown_generation(tmp_path: Path, bundle: Path) -> None:
    r = _export(tmp_path / "bad", "trt-int8", "--trt-version", "7.1")
    assert r.returncode != 0 and "unknown TensorRT version '7.1'" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad").exists()
    r = _export(tmp_path / "x", "onnx", "--trt-version", "10")
    assert r.returncode != 0 and "--trt-version applies to --target" in r.stderr
    man = json.loads((bundle / "manifest.json").read_text())
    assert man["targets"]["trt-int8"]["verification"]["argmax_agreement"] > 0.5


@pytest.mark.parametrize("generation", slow_except(["10", "11"], keep={"11"}))
def test_fp16_bundle_pins_islands_and_types_the_graph_for_11(tmp_path: Path, generation: str) -> None:
    from segedge.export.fp16 import typed_graph_problems

    out = tmp_path / "tt"
    r = _export(out, "trt-fp16", "--trt-version", generation)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "engine pending" in r.stdout and f"segedge engine build {out.as_posix()} --target trt-fp16" in r.stdout
    e = Manifest.read(out).targets["trt-fp16"]
    block = e.get("engine")
    islands = block["fp32_islands"]
    assert {i["op"] for i in islands} >= {"Softmax"}  # TopFormer-T's attention softmaxes stay FP32
    g = onnx.load(str(out / e.file))
    assert {i["node"] for i in islands} <= {n.name for n in g.graph.node}
    assert e.verification["argmax_agreement"] > 0.99  # the FP16 storage proxy against PyTorch
    fp16_inits = sum(t.data_type == onnx.TensorProto.FLOAT16 for t in g.graph.initializer)
    if generation == "11":
        assert block["builder"] == {"strongly_typed": True} and fp16_inits > 0
        assert typed_graph_problems(g, islands) == []
    else:
        assert block["builder"]["fp16"] is True and fp16_inits == 0  # FP32 graph: FP16 comes from the builder flag
    assert g.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in, as the contract says
