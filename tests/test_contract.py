"""The model contract: typed round trips, manifests written by segedge 0.2, one-line errors, the metadata codec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from segedge.contract import (MANIFEST_NAME, DynamicAxes, InputContract, Manifest, ModelContract, OutputContract,
                              TargetEntry, decode_metadata, describes_model, encode_metadata, read_manifest)
from segedge.errors import SegedgeError

DATA = Path(__file__).parent / "data"
V02 = DATA / "manifest-0.2.0.json"  # written by `segedge export` 0.2.0 (topformer-t 128x128, onnx + ort-int8 + qdq)


def _v02() -> dict:
    return json.loads(V02.read_text())


def test_manifest_from_segedge_0_2_round_trips_unchanged() -> None:
    raw = _v02()
    man = Manifest.from_dict(raw)
    assert man.to_dict() == raw  # nothing lost, nothing added
    c = man.contract
    assert (c.model, c.family, c.num_classes, c.input.size, c.input.io) == ("topformer-t", "topformer", 11,
                                                                             (128, 128), "float")
    assert c.output.kind == "logits" and c.output.stride == 8 and c.input.dynamic == DynamicAxes()
    assert c.class_names[0] == "Sky" and c.input.mean == pytest.approx((123.675, 116.28, 103.53))
    e = man.targets["ort-int8"]
    assert e.file == "model.int8.onnx" and e.precision == "int8" and e.quantization["scope"] == "all"
    assert e.get("calibration")["method"] == "minmax" and e.get("no such key", 7) == 7


def test_segedge_0_2_folder_loads_and_predicts(tmp_path: Path) -> None:
    """A 0.2 manifest next to a model file: Segmenter takes the contract from it (the file is today's export, not
    the one the 0.2 manifest hashed, so the file check is off; test_export_transaction covers that check)."""
    from segedge.export import ExportOptions, export_model
    from segedge.runtime import Segmenter

    res = export_model(ExportOptions("topformer-t", targets="onnx", input_size=(128, 128), verify_frames=1,
                                     out=tmp_path / "new"))
    folder = tmp_path / "old"
    folder.mkdir()
    shutil.copy(res.out_dir / "model.onnx", folder / "model.onnx")
    shutil.copy(V02, folder / MANIFEST_NAME)
    with Segmenter.load(folder, target="onnx", verify="off") as seg:
        assert seg.info.source == "manifest" and seg.info.target == "onnx" and seg.class_names[0] == "Sky"
        labels = seg.predict(np.full((90, 120, 3), 128, np.uint8))
    assert labels.shape == (90, 120) and labels.dtype == np.uint8 and labels.max() < 11


def test_typed_contract_round_trip_through_json() -> None:
    c = ModelContract(
        num_classes=3, class_names=["a", "b", "c"],
        input=InputContract(256, 320, name="frames", layout="NHWC", color_order="BGR", dtype="uint8",
                            mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), io="raw", size_multiple=32,
                            dynamic=DynamicAxes(batch=True)),
        output=OutputContract(kind="labels", stride=1, dtype="uint8", name="labels", size=(256, 320)),
        model="b0", family="segformer", opset=17, extra={"future_key": {"x": 1}})
    back = ModelContract.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c
    m = Manifest(c, {"onnx": TargetEntry("model.onnx", precision="fp32", extra={"inference_precision_hint": "f32"})})
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m and again.targets["onnx"].get("inference_precision_hint") == "f32"


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("input"), "key 'input' is missing"),
    (lambda d: d["input"].update(mean=[1.0, 2.0]), "mean must be three finite numbers"),
    (lambda d: d["input"].update(std=[1.0, 0.0, 1.0]), "std must be positive"),
    (lambda d: d["input"].update(io="yuv"), "io 'yuv'"),
    (lambda d: d["input"].update(height=0), "not positive"),
    (lambda d: d.update(num_classes=4), "11 class names for 4 classes"),
    (lambda d: d["output"].update(kind="boxes"), "output kind 'boxes'"),
    (lambda d: d["input"].update(height="tall"), "ValueError"),
    (lambda d: d.update(targets=[]), "no 'targets' map"),
    (lambda d: d["targets"]["onnx"].pop("file"), "has no 'file'"),
])
def test_invalid_contracts_are_one_line(edit, match: str) -> None:
    d = _v02()
    edit(d)
    with pytest.raises(SegedgeError, match=match) as e:
        Manifest.from_dict(d)
    assert "\n" not in str(e.value)


def test_manifest_read_errors_and_choose(tmp_path: Path) -> None:
    with pytest.raises(SegedgeError, match="has no manifest.json"):
        Manifest.read(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(SegedgeError, match="not valid JSON"):
        Manifest.read(tmp_path)
    d = _v02()
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    man = Manifest.read(tmp_path)
    assert read_manifest(tmp_path) == d
    with pytest.raises(SegedgeError, match="several targets"):
        man.choose(None)
    with pytest.raises(SegedgeError, match="target 'trt-int8' is not in"):
        man.choose("trt-int8")
    assert man.choose("qdq")[1].file == "model.qdq.onnx"
    assert man.entry_for_file("model.int8.onnx")[0] == "ort-int8"
    with pytest.raises(SegedgeError, match="lists no targets"):
        Manifest(man.contract).choose(None)


def test_metadata_codec_round_trip_and_target_metadata() -> None:
    man = Manifest.from_dict(_v02())
    meta = man.target_metadata("ort-int8", man.targets["ort-int8"])
    encoded = encode_metadata(meta)
    assert all(isinstance(v, str) for v in encoded.values())
    assert encoded["model"] == "topformer-t" and json.loads(encoded["num_classes"]) == 11
    decoded = decode_metadata(encoded)
    assert decoded == json.loads(json.dumps(meta)) and describes_model(decoded)
    assert decoded["target"] == "ort-int8" and "sha256" not in decoded  # a file never carries its own hash
    assert ModelContract.from_dict(decoded) == man.contract
    assert not describes_model(decode_metadata({"producer": "someone"}))


def test_onnx_metadata_props_and_openvino_rt_info_carry_the_contract(tmp_path: Path) -> None:
    import onnx

    from segedge.contract import embed_onnx_metadata, read_onnx_metadata, read_rt_info, write_rt_info

    man = Manifest.from_dict(_v02())
    meta = man.target_metadata("onnx", man.targets["onnx"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = embed_onnx_metadata(onnx.helper.make_model(graph), meta)
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert ModelContract.from_dict(read_onnx_metadata(tmp_path / "m.onnx")) == man.contract
    ov = pytest.importorskip("openvino")
    ov_model = ov.convert_model(str(tmp_path / "m.onnx"))
    write_rt_info(ov_model, meta)
    ov.save_model(ov_model, str(tmp_path / "m.xml"))
    assert ModelContract.from_dict(read_rt_info(ov.Core().read_model(str(tmp_path / "m.xml")))) == man.contract
