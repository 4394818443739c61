"""Dataset readers on tiny synthetic folders in every layout, and their errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import write_pairs
from segedge.data.datasets import open_dataset
from segedge.errors import DataError, LabelRangeError


def test_camvid_layout_maps_void_to_ignore(camvid_like):
    ds = open_dataset("camvid", camvid_like, "train")
    assert len(ds) == 6 and ds.num_classes == 11 and ds.class_names[2] == "Pole"
    img, lab = ds[0]
    assert img.dtype == np.uint8 and img.shape == (64, 96, 3)
    assert lab.shape == (64, 96) and (lab[:2] == 255).all()
    assert set(np.unique(lab)) <= {0, 3, 8, 255}
    assert open_dataset("camvid", camvid_like, "val").split == "val"


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cs"
    ids = np.array([7, 26, 0], np.uint8)  # road, car, unlabeled
    write_pairs(root / "leftImg8bit" / "val" / "aachen", root / "gtFine" / "val" / "aachen", 2, 32, 64,
                stem_fn=lambda i: (f"aachen_{i:06d}_000019_leftImg8bit", f"aachen_{i:06d}_000019_gtFine_labelIds"),
                label_fn=lambda lab: ids[lab])
    ds = open_dataset("cityscapes", root, "val")
    assert len(ds) == 2 and ds.num_classes == 19
    _, lab = ds[0]
    assert set(np.unique(lab)) <= {0, 13, 255}


def test_ade20k_reduce_zero_label(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    write_pairs(root / "images" / "validation", root / "annotations" / "validation", 2, 32, 32,
                stem_fn=lambda i: f"ADE_val_{i:08d}", label_fn=lambda lab: lab * 5, img_suffix=".jpg")
    ds = open_dataset("ade20k", tmp_path, "val")
    assert ds.num_classes == 150 and len(ds) == 2
    _, lab = ds[0]
    # raw 0 → ignore, raw 5 → 4, raw 10 → 9
    assert set(np.unique(lab)) <= {255, 4, 9}


def test_folder_with_class_file_and_num_classes(tmp_path):
    root = tmp_path / "f"
    write_pairs(root / "images", root / "masks", 3, 32, 48, img_suffix=".jpg")
    (root / "classes.json").write_text(json.dumps(["bg", "a", "b"]))
    ds = open_dataset("folder", root, "val")
    assert ds.class_names == ["bg", "a", "b"] and len(ds) == 3
    (root / "classes.json").unlink()
    assert open_dataset("folder", root, "val", num_classes=3).num_classes == 3
    with pytest.raises(DataError, match="--num-classes"):
        open_dataset("folder", root, "val")


def test_missing_folder_and_no_pairs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_dataset("camvid", tmp_path / "nope", "val")
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="valannot"):
        open_dataset("camvid", tmp_path, "val")
    (tmp_path / "valannot").mkdir()
    cv2.imwrite(str(tmp_path / "val" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "valannot" / "b.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(DataError, match="no image/mask pairs"):
        open_dataset("camvid", tmp_path, "val")
    with pytest.raises(DataError, match="unknown dataset"):
        open_dataset("coco", tmp_path, "val")


def test_size_mismatch_and_out_of_range_labels(tmp_path):
    root = tmp_path / "f"
    write_pairs(root / "images", root / "masks", 2, 32, 32)
    cv2.imwrite(str(root / "masks" / "f000.png"), np.zeros((16, 16), np.uint8))
    ds = open_dataset("folder", root, "val", num_classes=3)
    with pytest.raises(DataError, match="same size"):
        ds[0]
    bad = np.full((32, 32), 7, np.uint8)
    bad[0, 0] = 9
    cv2.imwrite(str(root / "masks" / "f001.png"), bad)
    with pytest.raises(DataError, match=r"7: 1023 px, 9: 1 px"):
        ds[1]


def test_unreadable_files_skipped_or_strict(tmp_path):
    root = tmp_path / "f"
    write_pairs(root / "images", root / "masks", 3, 16, 16)
    (root / "images" / "f001.png").write_bytes(b"not a png")
    ds = open_dataset("folder", root, "val", num_classes=3)
    items = list(ds)
    assert len(items) == 2 and ds.skipped == 1
    assert ds.skipped_note().startswith("1 unreadable or mismatched sample(s)")
    strict = open_dataset("folder", root, "val", num_classes=3, strict=True)
    with pytest.raises(DataError, match="cannot read image"):
        list(strict)


def test_evaluate_skips_unreadable_unless_strict_but_never_out_of_range(tmp_path):
    from segedge.evaluation import evaluate

    root = tmp_path / "f"
    write_pairs(root / "images", root / "masks", 3, 16, 16)
    (root / "images" / "f001.png").write_bytes(b"not a png")
    ds = open_dataset("folder", root, "val", num_classes=3)
    m = evaluate(lambda img: np.zeros(img.shape[:2], np.uint8), ds)
    assert ds.skipped == 1 and m.confusion.sum() == 2 * 16 * 16
    with pytest.raises(DataError, match="cannot read image"):
        evaluate(lambda img: np.zeros(img.shape[:2], np.uint8),
                 open_dataset("folder", root, "val", num_classes=3, strict=True))
    cv2.imwrite(str(root / "masks" / "f002.png"), np.full((16, 16), 5, np.uint8))
    with pytest.raises(LabelRangeError, match="5: 256 px"):  # skipping would quietly change the measurement
        list(open_dataset("folder", root, "val", num_classes=3))


def test_camvid_raw_values_beyond_void_are_reported(camvid_like):
    lab = cv2.imread(str(camvid_like / "valannot" / "f000.png"), cv2.IMREAD_UNCHANGED)
    lab[0, :4] = 40
    cv2.imwrite(str(camvid_like / "valannot" / "f000.png"), lab)
    ds = open_dataset("camvid", camvid_like, "val")
    with pytest.raises(LabelRangeError, match=r"camvid's label ids \(0..11\) \(40: 4 px\)"):
        ds[0]


@pytest.mark.camvid
def test_real_camvid_counts(camvid_root):
    tr, va = open_dataset("camvid", camvid_root, "train"), open_dataset("camvid", camvid_root, "val")
    assert (len(tr), len(va)) == (367, 101)
    img, lab = va[0]
    assert img.shape == (360, 480, 3) and lab.shape == (360, 480) and lab.max() <= 255
    counts = va.validate(limit=3)
    assert set(counts) <= set(range(11)) | {255}
