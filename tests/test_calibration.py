"""INT8 calibration: frame sources, the ORT data-reader protocol, and the cached calibration table."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segedge.errors import DataError, SegedgeError
from segedge.export import ExportOptions, export_model
from segedge.export.calibration import (DEFAULT_CALIB_DIR, CalibrationTable, FrameDataReader, frames_sha256,
                                        load_calibration_frames, table_path)
from segedge.models import create_model, save_checkpoint


def _frame(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_default_source_is_the_shipped_synthetic_frames() -> None:
    shipped = sorted(DEFAULT_CALIB_DIR.glob("*.jpg"))
    assert 8 <= len(shipped) <= 12
    fr = load_calibration_frames(None, count=100)
    assert len(fr) == len(shipped) and fr.kind == "folder"
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3 for f in fr.frames)
    assert fr.sha256 == frames_sha256(fr.frames)


def test_folder_is_recursive_skips_non_images_and_selects_with_seed(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(tmp_path / ("a/b" if i % 2 else "a") / f"f{i}.png"), _frame(i))
    cv2.imwrite(str(tmp_path / "g.bmp"), _frame(9)[:, :, 0])  # grayscale → replicated
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    all_frames = load_calibration_frames(tmp_path, count=50)
    assert all_frames.skipped == 1  # broken.jpg, reported as a note by the export
    assert len(all_frames) == 7 and all(f.shape == (48, 64, 3) for f in all_frames.frames)
    a = load_calibration_frames(tmp_path, count=3, seed=1)
    b = load_calibration_frames(tmp_path, count=3, seed=1)
    c = load_calibration_frames(tmp_path, count=3, seed=2)
    assert len(a) == 3 and a.names == b.names and a.sha256 == b.sha256
    assert a.names != c.names and a.sha256 != c.sha256


def test_video_every_kth_frame(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    assert vw.isOpened()
    for i in range(20):
        f = np.full((48, 64, 3), i * 12, np.uint8)
        vw.write(f)
    vw.release()
    fr = load_calibration_frames(path, count=4, video_step=5)
    assert fr.kind == "video" and fr.names == ["frame 0", "frame 5", "frame 10", "frame 15"]
    means = [float(f.mean()) for f in fr.frames]
    assert means == sorted(means) and abs(means[1] - 60) < 8  # frame 5 was drawn at grey level 60
    auto = load_calibration_frames(path, count=2)  # step spread over the clip's 20 frames
    assert auto.names == ["frame 0", "frame 10"]


def test_iterables_callables_and_dataset_objects(tmp_path: Path) -> None:
    frames = [_frame(i) for i in range(5)]
    it = load_calibration_frames(iter(frames), count=3)
    assert len(it) == 3 and it.kind == "iterable" and it.sha256 == frames_sha256(frames[:3])
    pairs = load_calibration_frames(lambda: ((f, None) for f in frames), count=10)
    assert len(pairs) == 5

    class Item:
        def __init__(self, p: Path) -> None:
            self.image_path = p

    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i}.png"), f)

    class Dataset:  # the shape of segedge.data.datasets.SegDataset
        samples = [Item(tmp_path / f"{i}.png") for i in range(5)]

    ds = load_calibration_frames(Dataset(), count=2, seed=0)
    assert ds.kind == "dataset" and len(ds) == 2
    assert all(any(np.array_equal(f, g) for g in frames) for f in ds.frames)


def test_dataset_spec_string(camvid_like: Path) -> None:
    fr = load_calibration_frames(f"camvid:{camvid_like}:train", count=4)
    assert fr.kind == "dataset" and len(fr) == 4


@pytest.mark.parametrize("setup, match", [
    ("empty", "is empty"),
    ("texts", "no images"),
    ("corrupt_images", "could be read"),
    ("bad_video", "cannot open video|no frame could be decoded"),
    ("missing", "does not exist"),
])
def test_bad_sources_are_clear_errors(tmp_path: Path, setup: str, match: str) -> None:
    src = tmp_path / "src"
    if setup == "bad_video":
        src = tmp_path / "clip.mp4"
        src.write_bytes(b"\x00" * 1000)
    elif setup != "missing":
        src.mkdir()
        for i in range(3):
            if setup == "texts":
                (src / f"{i}.txt").write_text("hello")
            elif setup == "corrupt_images":
                (src / f"{i}.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(DataError, match=match) as e:
        load_calibration_frames(src, count=4)
    assert "\n" not in str(e.value)
    with pytest.raises(SegedgeError, match="positive"):
        load_calibration_frames(None, count=0)


def test_reader_follows_ort_protocol_with_strides() -> None:
    from onnxruntime.quantization import CalibrationDataReader

    xs = [np.full((1, 3, 2, 2), i, np.float32) for i in range(5)]
    r = FrameDataReader(xs, "input")
    assert isinstance(r, CalibrationDataReader) and len(r) == 5
    r.set_range(2, 4)
    got = [d["input"][0, 0, 0, 0] for d in iter(r.get_next, None)]
    assert got == [2.0, 3.0]
    r.set_range(4, 99)
    assert [d["input"][0, 0, 0, 0] for d in iter(r.get_next, None)] == [4.0]


@pytest.fixture(scope="module")
def tf_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(1)
    m = create_model("topformer-t", num_classes=5)
    return save_checkpoint(m, tmp_path_factory.mktemp("c") / "tf.safetensors",
                           {"model": "topformer-t", "num_classes": 5, "input_size": [128, 128]})


def test_table_is_cached_and_reused_then_recomputed_when_inputs_change(tf_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    base = dict(model="topformer-t", weights=tf_ckpt, targets="ort-int8", input_size="128x128", calib_count=3,
                verify_frames=1, out=out)
    r1 = export_model(ExportOptions(**base))
    table = table_path(out, "minmax")
    first = json.loads(table.read_text())
    assert r1.manifest["targets"]["ort-int8"]["calibration"]["reused"] is False
    assert first["count"] == 3 and first["method"] == "minmax" and len(first["ranges"]) > 50
    assert all(lo <= hi for lo, hi in first["ranges"].values())
    assert first["source_sha256"] == r1.manifest["targets"]["qdq"]["calibration"]["source_sha256"]
    stamp = table.stat().st_mtime_ns

    r2 = export_model(ExportOptions(**base))  # same frames, method, count, graph → no recomputation
    cal2 = r2.manifest["targets"]["ort-int8"]["calibration"]
    assert cal2["reused"] is True and r2.manifest["targets"]["qdq"]["calibration"]["reused"] is True
    assert table.stat().st_mtime_ns == stamp and json.loads(table.read_text())["created"] == first["created"]

    r3 = export_model(ExportOptions(**{**base, "calib_count": 2}))  # different count → recomputed
    assert r3.manifest["targets"]["ort-int8"]["calibration"]["reused"] is False
    assert json.loads(table.read_text())["count"] == 2
    loaded = CalibrationTable.load(table)
    assert loaded.matches("minmax", 2, r3.manifest["targets"]["ort-int8"]["calibration"]["source_sha256"],
                          r3.manifest["graph_sha256"])

    r4 = export_model(ExportOptions(**{**base, "targets": "onnx", "calib_count": None}))  # FP32 only, same graph
    assert set(r4.manifest["targets"]) == {"onnx", "ort-int8", "qdq"}  # still-valid INT8 artifacts carried over
    assert r4.manifest["targets"]["ort-int8"]["sha256"] == r3.manifest["targets"]["ort-int8"]["sha256"]
    assert (out / "model.int8.onnx").is_file() and (out / "model.qdq.onnx").is_file()


def test_entropy_searches_a_threshold_rather_than_returning_min_max(tmp_path: Path) -> None:
    """With onnxruntime's default 128 bins entropy returned the min/max range for small frame counts; with 2048 bins
    (METHOD_OPTIONS) it clips long-tailed tensors: most ranges narrower than minmax's, none wider."""
    import onnx
    from onnx import TensorProto, helper

    from segedge.export.calibration import METHOD_OPTIONS, compute_ranges

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 64, 64])
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.eye(4, dtype=np.float32).ravel().tolist())
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                          "g", [x], [y], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    rng = np.random.default_rng(0)
    inputs = [rng.standard_t(2, (1, 4, 64, 64)).astype(np.float32) for _ in range(4)]  # heavy tails
    mm = compute_ranges(path, FrameDataReader(inputs, "x"), "minmax")
    en = compute_ranges(path, FrameDataReader(inputs, "x"), "entropy")
    assert METHOD_OPTIONS["entropy"]["num_bins"] == 2048
    narrower = [k for k in mm if en[k][1] < 0.9 * mm[k][1]]
    assert narrower and all(en[k][1] <= mm[k][1] + 1e-6 for k in mm)
