"""Dataset readers behind a small registry: CamVid, Cityscapes, ADE20K and a generic images/masks folder.

Every reader yields `Sample(image_path, label_path)` pairs and knows its class names and ignore index; labels are
returned already mapped to train ids (ignore = 255). Images are read as BGR uint8 (OpenCV), labels as uint8.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..errors import DataError, LabelRangeError, first_line
from ..io import read_image_file
from ..plugins import Registry

IGNORE_INDEX = 255
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
# Cityscapes labelIds → trainIds (official cityscapesScripts labels.py); everything else is ignored.
CITYSCAPES_ID_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                          26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
ADE20K_CLASSES = (
    "wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door table mountain "
    "plant curtain chair car water painting sofa shelf house sea mirror rug field armchair seat fence desk rock "
    "wardrobe lamp bathtub railing cushion base box column signboard chest-of-drawers counter sand sink skyscraper "
    "fireplace refrigerator grandstand path stairs runway case pool-table pillow screen-door stairway river bridge "
    "bookcase blind coffee-table toilet flower book hill bench countertop stove palm kitchen-island computer "
    "swivel-chair boat bar arcade-machine hovel bus towel light truck tower chandelier awning streetlight booth "
    "television airplane dirt-track apparel pole land bannister escalator ottoman bottle buffet poster stage van "
    "ship fountain conveyer-belt canopy washer plaything swimming-pool stool barrel basket waterfall tent bag "
    "minibike cradle oven ball food step tank trade-name microwave pot animal bicycle lake dishwasher screen "
    "blanket sculpture hood sconce vase traffic-light tray ashcan fan pier crt-screen plate monitor bulletin-board "
    "shower radiator glass clock flag"
).split()


@dataclass(frozen=True)
class Sample:
    """One image and its label file."""

    image_path: Path
    label_path: Path | None


class SegDataset:
    """A list of image/label pairs plus the knowledge needed to read labels as train ids."""

    name = "folder"

    def __init__(self, root: Path, split: str, samples: list[Sample], class_names: list[str],
                 label_map: np.ndarray | None = None, strict: bool = False, max_raw_label: int | None = None) -> None:
        self.root, self.split, self.samples = Path(root), split, samples
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX
        self.label_map = label_map  # 256-entry uint8 LUT raw value → train id
        self.strict = strict
        self.max_raw_label = max_raw_label  # highest raw value the format defines (255 = ignore is always fine)
        self.skipped = 0  # unreadable / mismatched samples passed over by `__iter__` and `evaluate`

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def read_image(self, i: int) -> np.ndarray:
        """BGR uint8 image of sample i."""
        return read_image(self.samples[i].image_path)

    def read_label(self, i: int) -> np.ndarray:
        """uint8 label of sample i in train ids (ignore = 255)."""
        s = self.samples[i]
        if s.label_path is None:
            raise DataError(f"{s.image_path.name} has no label in split '{self.split}'")
        lab = cv2.imread(str(s.label_path), cv2.IMREAD_UNCHANGED)
        if lab is None:
            raise DataError(f"cannot read label {s.label_path}; the file is missing or not an image")
        if lab.ndim == 3:
            lab = lab[..., 0]
        if lab.dtype != np.uint8:
            if lab.max() > 255:
                raise DataError(f"label {s.label_path.name} has values above 255; save labels as 8-bit PNG")
            lab = lab.astype(np.uint8)
        top = self.max_raw_label if self.label_map is not None else self.num_classes - 1
        if top is not None:
            bad = (lab > top) & (lab != IGNORE_INDEX)
            if bad.any():
                vals, cnt = np.unique(lab[bad], return_counts=True)
                desc = ", ".join(f"{v}: {c} px" for v, c in zip(vals[:5].tolist(), cnt[:5].tolist()))
                what = f"the {self.num_classes} classes" if self.label_map is None else \
                    f"{self.name}'s label ids (0..{top})"
                raise LabelRangeError(f"label {s.label_path.name} holds values beyond {what} ({desc}); fix the mask, "
                                      f"pass the right --num-classes / --dataset, or use {IGNORE_INDEX} for ignore")
        return self.label_map[lab] if self.label_map is not None else lab

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        img, lab = self.read_image(i), self.read_label(i)
        if img.shape[:2] != lab.shape[:2]:
            raise DataError(f"{self.samples[i].image_path.name}: image is {img.shape[1]}x{img.shape[0]} but its label "
                            f"is {lab.shape[1]}x{lab.shape[0]}; image and mask must have the same size")
        return img, lab

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Sample i, or None (counted in `skipped`) when it is unreadable or mismatched and the set is not strict.

        Label values beyond the classes always raise: they mean a wrong --num-classes or dataset type, and skipping
        them would quietly change what is trained or measured.
        """
        try:
            return self[i]
        except LabelRangeError:
            raise
        except DataError:
            if self.strict:
                raise
            self.skipped += 1
            return None

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            item = self.get(i)
            if item is not None:
                yield item

    def skipped_note(self) -> str | None:
        """One line about skipped samples, or None."""
        if not self.skipped:
            return None
        return f"{self.skipped} unreadable or mismatched sample(s) in {self.root} ({self.split}) were skipped; " \
               "--strict makes them an error"

    def validate(self, limit: int | None = None) -> dict[str, int]:
        """Check labels for out-of-range values; raise with counts, or return per-value pixel counts."""
        counts = np.zeros(256, np.int64)
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(n):
            counts += np.bincount(self.read_label(i).ravel(), minlength=256)
        bad = {v: int(c) for v, c in enumerate(counts) if c and v >= self.num_classes and v != IGNORE_INDEX}
        if bad:
            desc = ", ".join(f"{v}: {c} px" for v, c in list(bad.items())[:5])
            raise LabelRangeError(f"labels hold values beyond the {self.num_classes} classes ({desc}); fix the masks, "
                            f"pass the right --num-classes, or map them to {IGNORE_INDEX} (ignore)")
        return {int(v): int(c) for v, c in enumerate(counts) if c}


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as 8-bit BGR, with a clear error when it is missing or unreadable."""
    img = read_image_file(path)
    if img is None:
        raise DataError(f"cannot read image {path}; the file is missing, truncated or not an image")
    return img


def _need_dir(p: Path, what: str) -> Path:
    if not p.is_dir():
        raise DataError(f"{what} folder not found: {p}; check --data points at the dataset root")
    return p


def _images(d: Path, recursive: bool = False) -> list[Path]:
    it = d.rglob("*") if recursive else d.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _pair_by_stem(images: list[Path], masks: list[Path], root: Path, what: str,
                  mask_key: Callable[[Path], str] = lambda p: p.stem,
                  image_key: Callable[[Path], str] = lambda p: p.stem) -> list[Sample]:
    by_stem = {mask_key(m): m for m in masks}
    pairs = [Sample(i, by_stem[image_key(i)]) for i in images if image_key(i) in by_stem]
    if not pairs:
        raise DataError(f"no image/mask pairs found in {root} ({what}: {len(images)} images, {len(masks)} masks "
                        "matched by file name); check the layout")
    return pairs


def _identity_map(num_classes: int) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    return lut


def open_camvid(root: Path, split: str = "val", strict: bool = False, **_: object) -> SegDataset:
    """CamVid in the SegNet layout: `split/` + `splitannot/`, ids 0-10, 11 = void → ignore."""
    root = Path(root)
    img_dir = _need_dir(root / split, f"CamVid '{split}'")
    ann_dir = _need_dir(root / f"{split}annot", f"CamVid '{split}annot'")
    pairs = _pair_by_stem(_images(img_dir), _images(ann_dir), root, f"CamVid {split}")
    lut = _identity_map(11)
    lut[11] = IGNORE_INDEX
    ds = SegDataset(root, split, pairs, CAMVID_CLASSES, lut, strict, max_raw_label=11)
    ds.name = "camvid"
    return ds


def open_cityscapes(root: Path, split: str = "val", strict: bool = False, **_: object) -> SegDataset:
    """Cityscapes: `leftImg8bit/<split>/<city>/*_leftImg8bit.png` + `gtFine/<split>/<city>/*_gtFine_labelIds.png`."""
    root = Path(root)
    img_dir = _need_dir(root / "leftImg8bit" / split, f"Cityscapes leftImg8bit/{split}")
    gt_dir = _need_dir(root / "gtFine" / split, f"Cityscapes gtFine/{split}")
    images = [p for p in _images(img_dir, True) if p.name.endswith("_leftImg8bit.png")]
    masks = [p for p in _images(gt_dir, True) if p.name.endswith("_gtFine_labelIds.png")]
    pairs = _pair_by_stem(images, masks, root, f"Cityscapes {split}",
                          mask_key=lambda p: p.name[: -len("_gtFine_labelIds.png")],
                          image_key=lambda p: p.name[: -len("_leftImg8bit.png")])
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for k, v in CITYSCAPES_ID_TO_TRAIN.items():
        lut[k] = v
    ds = SegDataset(root, split, pairs, CITYSCAPES_CLASSES, lut, strict, max_raw_label=33)
    ds.name = "cityscapes"
    return ds


def open_ade20k(root: Path, split: str = "val", strict: bool = False, **_: object) -> SegDataset:
    """ADE20K (ADEChallengeData2016): images/{training,validation} + annotations/…; 0 → ignore (reduce zero label)."""
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    sub = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}.get(split)
    if sub is None:
        raise DataError(f"ADE20K has splits 'train' and 'val', not '{split}'")
    img_dir = _need_dir(root / "images" / sub, f"ADE20K images/{sub}")
    ann_dir = _need_dir(root / "annotations" / sub, f"ADE20K annotations/{sub}")
    pairs = _pair_by_stem(_images(img_dir), _images(ann_dir), root, f"ADE20K {split}")
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[1:151] = np.arange(150)  # reduce_zero_label: 0 (other) → ignore, 1..150 → 0..149
    ds = SegDataset(root, split, pairs, ADE20K_CLASSES, lut, strict, max_raw_label=150)
    ds.name = "ade20k"
    return ds


def load_class_names(path: str | Path) -> list[str]:
    """Class names from a JSON/YAML list, or a mapping of id → name."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class names file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except Exception as e:
        raise DataError(f"cannot parse class names file {p.name}: {first_line(e)}") from e
    if isinstance(obj, dict) and "classes" in obj:
        obj = obj["classes"]
    if isinstance(obj, dict):
        obj = [obj[k] for k in sorted(obj, key=lambda k: int(k))]
    if not isinstance(obj, list) or not obj:
        raise DataError(f"{p.name} must hold a list of class names (or an id → name mapping)")
    return [str(x) for x in obj]


def open_folder(root: Path, split: str = "val", strict: bool = False, num_classes: int | None = None,
                class_names: list[str] | str | Path | None = None, **_: object) -> SegDataset:
    """Generic layout: `images/` + `masks/` matched by stem (optionally under `<split>/`); mask values are class ids."""
    root = Path(root)
    base = root / split if (root / split / "images").is_dir() else root
    img_dir = _need_dir(base / "images", "images")
    mask_dir = _need_dir(base / "masks", "masks")
    if class_names is None:
        for cand in ("classes.json", "classes.yaml", "classes.yml"):
            if (root / cand).is_file():
                class_names = root / cand
                break
    if isinstance(class_names, (str, Path)):
        class_names = load_class_names(class_names)
    if class_names is None:
        if not num_classes:
            raise DataError(f"folder dataset {root} has no classes.json: pass --num-classes N or a class names file")
        class_names = [f"class_{i}" for i in range(num_classes)]
    pairs = _pair_by_stem(_images(img_dir), _images(mask_dir), root, "folder")
    ds = SegDataset(root, split, pairs, list(class_names), _identity_map(len(class_names)), strict)
    # Out-of-range values must be reported, not silently ignored: keep raw values and check them in validate().
    ds.label_map = None
    return ds


@dataclass(frozen=True)
class DatasetReader:
    """A registered dataset layout: its name and the function that opens a split of it."""

    name: str
    open: Callable[..., SegDataset]


DATASETS: Registry[DatasetReader] = Registry("dataset", hint="choose one of")
for _name, _fn in (("camvid", open_camvid), ("cityscapes", open_cityscapes), ("ade20k", open_ade20k),
                   ("folder", open_folder)):
    DATASETS.register(DatasetReader(_name, _fn))


def open_labelled_folder(root: str | Path, num_classes: int) -> SegDataset:
    """A labelled folder given as `--val`, its layout detected (CamVid, Cityscapes, ADE20K, else a plain folder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--val folder not found: {root}; pass a labelled dataset folder")
    if (root / "valannot").is_dir() or (root / "testannot").is_dir():
        kind, split = "camvid", "val" if (root / "valannot").is_dir() else "test"
    elif (root / "leftImg8bit").is_dir():
        kind, split = "cityscapes", "val"
    elif (root / "ADEChallengeData2016").is_dir() or (root / "annotations").is_dir():
        kind, split = "ade20k", "val"
    else:
        kind, split = "folder", "val"
    ds = open_dataset(kind, root, split, **({"num_classes": num_classes} if kind == "folder" else {}))
    if ds.num_classes != num_classes:
        raise DataError(f"--val dataset has {ds.num_classes} classes but the model has {num_classes}")
    return ds


def open_dataset(name: str, root: str | Path, split: str = "val", **kwargs: object) -> SegDataset:
    """Open a dataset split by registry name; clear errors for unknown names and missing folders."""
    if name not in DATASETS:
        raise DataError(DATASETS.unknown_message(name))
    reader = DATASETS.get(name)
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder not found: {root}; pass --data pointing at the dataset root")
    return reader.open(root, split, **kwargs)
