"""Segmenter: every input kind, frame checks, fast vs exact post-processing, overlays, batches, backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from segedge.errors import SegedgeError
from segedge.export import ExportOptions, export_model
from segedge.export.calibration import DEFAULT_CALIB_DIR
from segedge.models import create_model, save_checkpoint
from segedge.runtime import Segmenter
from segedge.runtime.palette import CAMVID_RGB, deterministic_palette, palette_for
from segedge.runtime.postprocess import labels_exact, labels_fast

CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]
SIZE = (128, 128)
MODEL, STRIDE = "topformer-t", 8  # the cheapest model: these tests are about the runtime, not the family


def _frame(i: int = 0) -> np.ndarray:
    return cv2.imread(str(sorted(DEFAULT_CALIB_DIR.glob("*.jpg"))[i]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rt")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model(MODEL, num_classes=11), tmp / "model.safetensors",
                           {"model": MODEL, "num_classes": 11, "class_names": CAMVID, "input_size": list(SIZE)})
    multi = export_model(ExportOptions(MODEL, weights=ckpt, targets="ort-int8", input_size=SIZE, calib_count=2,
                                       dynamic_batch=True, verify_frames=2, out=tmp / "multi")).out_dir
    raw = export_model(ExportOptions(MODEL, weights=ckpt, targets="onnx", input_size=SIZE, io="raw",
                                     verify_frames=2, out=tmp / "raw")).out_dir
    return {"ckpt": ckpt, "multi": multi, "raw": raw, "tmp": tmp}


def test_folder_with_several_targets_must_choose(exported: dict[str, Path]) -> None:
    with pytest.raises(SegedgeError, match="several targets.*onnx.*ort-int8.*qdq"):
        Segmenter.load(exported["multi"])
    with pytest.raises(SegedgeError, match="not in"):
        Segmenter.load(exported["multi"], target="trt-int8")
    seg = Segmenter.load(exported["multi"], target="ort-int8")
    assert seg.info.target == "ort-int8" and seg.info.precision == "int8" and seg.backend.name == "onnxruntime"
    labels = seg.predict(_frame())
    assert labels.shape == _frame().shape[:2] and labels.dtype == np.uint8 and labels.max() < 11


def test_onnx_file_folder_and_checkpoint_agree(exported: dict[str, Path]) -> None:
    f = _frame(1)
    from_folder = Segmenter.load(exported["multi"], target="onnx", postprocess="exact")
    lone = exported["tmp"] / "lone.onnx"
    shutil.copy(exported["multi"] / "model.onnx", lone)  # no manifest next to it: metadata_props only
    from_file = Segmenter.load(lone, postprocess="exact")
    from_ckpt = Segmenter.load(exported["ckpt"], postprocess="exact")
    assert from_file.info.source == "metadata" and from_file.class_names == CAMVID
    assert from_ckpt.backend.name == "torch" and from_ckpt.input_size == SIZE
    a, b, c = from_folder.predict(f), from_file.predict(f), from_ckpt.predict(f)
    assert np.array_equal(a, b)
    assert (a == c).mean() > 0.999
    la, lc = from_folder.logits(f), from_ckpt.logits(f)
    assert la.shape == (11, SIZE[0] // STRIDE, SIZE[1] // STRIDE)
    assert np.abs(la - lc).max() <= 1e-3 + 1e-5 * np.abs(lc).max()


def test_fast_and_exact_postprocess_agree_on_most_pixels(exported: dict[str, Path]) -> None:
    seg = Segmenter.load(exported["multi"], target="onnx")
    logits = seg.logits(_frame(2))
    assert logits.shape == (11, SIZE[0] // STRIDE, SIZE[1] // STRIDE)
    fast, exact = labels_fast(logits, (360, 480)), labels_exact(logits, (360, 480))
    assert fast.shape == exact.shape == (360, 480)
    assert (fast == exact).mean() > 0.8  # they differ only along class boundaries
    ref = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=(360, 480), mode="bilinear",
                                          align_corners=False).argmax(1)[0].numpy()
    assert (exact == ref).mean() > 0.999  # exact = torch's bilinear upsample then argmax


def test_predict_batch_equals_predict(exported: dict[str, Path]) -> None:
    frames = [_frame(0), _frame(3)[:300, :400], cv2.cvtColor(_frame(4), cv2.COLOR_BGR2GRAY)]
    for seg in (Segmenter.load(exported["multi"], target="onnx"), Segmenter.load(exported["raw"])):
        batch = seg.predict_batch(frames)
        assert len(batch) == 3
        for f, lab in zip(frames, batch):
            assert np.array_equal(lab, seg.predict(f))
    assert Segmenter.load(exported["multi"], target="onnx").backend.supports_batch
    assert not Segmenter.load(exported["raw"]).backend.supports_batch  # static batch 1: run frame by frame


def test_raw_model_matches_float_model(exported: dict[str, Path]) -> None:
    raw = Segmenter.load(exported["raw"])
    flt = Segmenter.load(exported["multi"], target="onnx", postprocess="fast")
    assert raw.info.io == "raw" and raw.info.output_kind == "labels"
    f = _frame(5)
    assert (raw.predict(f) == flt.predict(f)).mean() > 0.999
    with pytest.raises(SegedgeError, match="outputs labels"):
        raw.logits(f)


@pytest.mark.parametrize("frame, match", [
    (np.zeros((64, 64, 3), np.uint16), "16-bit"),
    (np.zeros((64, 64, 3), np.float64), "uint8"),
    (np.zeros((64, 64, 5), np.uint8), "shape"),
])
def test_bad_frames(exported: dict[str, Path], frame: np.ndarray, match: str) -> None:
    seg = Segmenter.load(exported["multi"], target="onnx")
    with pytest.raises(SegedgeError, match=match):
        seg.predict(frame)


def test_grayscale_and_bgra_frames_are_converted(exported: dict[str, Path]) -> None:
    seg = Segmenter.load(exported["multi"], target="onnx")
    f = _frame(6)
    gray = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(seg.predict(gray), seg.predict(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))
    assert np.array_equal(seg.predict(cv2.cvtColor(f, cv2.COLOR_BGR2BGRA)), seg.predict(f))


def test_overlay_shape_dtype_and_palette(exported: dict[str, Path]) -> None:
    seg = Segmenter.load(exported["multi"], target="onnx")
    f = _frame(7)
    ov = seg.overlay(f, alpha=0.4)
    assert ov.shape == f.shape and ov.dtype == np.uint8 and not np.array_equal(ov, f)
    labels = seg.predict(f)
    sky = np.zeros_like(labels)
    full = seg.overlay(f, sky, alpha=1.0)
    assert tuple(full[0, 0]) == CAMVID_RGB["sky"][::-1]  # BGR of the CamVid sky colour
    assert np.array_equal(seg.overlay(f, labels, alpha=0.0), f)
    assert np.array_equal(palette_for(["a", "b", "c"]), deterministic_palette(3))
    assert len({tuple(c) for c in deterministic_palette(20)}) == 20


def test_bad_paths_and_backends(exported: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SegedgeError, match="not found"):
        Segmenter.load(tmp_path / "nope.onnx")
    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(SegedgeError, match=r"\.xml"):
        Segmenter.load(tmp_path / "model.xml")
    with pytest.raises(SegedgeError, match="manifest.json"):
        Segmenter.load(tmp_path)
    with pytest.raises(SegedgeError, match="unknown backend"):
        Segmenter.load(exported["multi"], target="onnx", backend="magic")
    with pytest.raises(SegedgeError, match="postprocess"):
        Segmenter.load(exported["multi"], target="onnx", postprocess="smooth")
    broken = tmp_path / "broken"
    shutil.copytree(exported["raw"], broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(SegedgeError, match="missing"):
        Segmenter.load(broken)


def test_foreign_onnx_without_metadata_falls_back_to_the_graph(exported: dict[str, Path], tmp_path: Path) -> None:
    m = onnx.load(str(exported["multi"] / "model.onnx"))
    del m.metadata_props[:]
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(m, str(tmp_path / "foreign.onnx"))
    with pytest.warns(UserWarning, match="without segedge metadata"):
        seg = Segmenter.load(tmp_path / "foreign.onnx")
    assert seg.input_size == SIZE and seg.info.output_stride == STRIDE and seg.num_classes == 11
    ref = Segmenter.load(exported["multi"], target="onnx")
    assert np.array_equal(seg.predict(_frame(8)), ref.predict(_frame(8)))
    assert json.loads((exported["multi"] / "manifest.json").read_text())["targets"]["onnx"]["file"] == "model.onnx"
