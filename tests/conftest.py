"""Shared fixtures: tiny synthetic datasets made on the fly, and the optional CamVid location."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CAMVID = Path(os.environ.get("SEGEDGE_CAMVID", REPO.parent / "shared" / "datasets" / "camvid"))


def synthetic_scene(rng: np.random.Generator, h: int, w: int, num_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A BGR image whose regions' colours determine their class, and the matching label."""
    lab = np.zeros((h, w), np.uint8)
    for c in range(1, num_classes):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        lab[y0:y0 + h // 2, x0:x0 + w // 2] = c
    palette = np.array([[200, 60, 30], [40, 180, 60], [30, 50, 220], [120, 120, 120]], np.uint8)[:num_classes]
    img = palette[lab].astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), lab


def write_pairs(img_dir: Path, lab_dir: Path, n: int, h: int, w: int, seed: int = 0, num_classes: int = 3,
                lab_suffix: str = ".png", img_suffix: str = ".png", label_fn=None, stem_fn=None) -> None:
    """Write n synthetic image/label pairs."""
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, lab = synthetic_scene(rng, h, w, num_classes)
        stem = stem_fn(i) if stem_fn else f"f{i:03d}"
        cv2.imwrite(str(img_dir / f"{stem[0] if isinstance(stem, tuple) else stem}{img_suffix}"), img)
        out = label_fn(lab) if label_fn else lab
        cv2.imwrite(str(lab_dir / f"{stem[1] if isinstance(stem, tuple) else stem}{lab_suffix}"), out)


def write_camvid_like(root: Path) -> Path:
    """A CamVid-layout folder (train/trainannot/val/valannot) with 11 classes + void 11, at `root`."""
    def to_camvid(lab):  # spread synthetic classes over CamVid ids, with some void
        out = np.array([3, 0, 8], np.uint8)[lab]
        out[:2, :] = 11
        return out
    write_pairs(root / "train", root / "trainannot", 6, 64, 96, 0, label_fn=to_camvid)
    write_pairs(root / "val", root / "valannot", 3, 64, 96, 1, label_fn=to_camvid)
    return root


@pytest.fixture
def camvid_like(tmp_path: Path) -> Path:
    """A CamVid-layout folder (train/trainannot/val/valannot) with 11 classes + void 11."""
    return write_camvid_like(tmp_path / "camvid")


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid copy in ../shared, or skip with a message."""
    if not (CAMVID / "val").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set SEGEDGE_CAMVID); its licence forbids shipping it here")
    return CAMVID


def slow_except(values, keep, ids=None) -> list:
    """Parametrize values, all but those in `keep` marked slow: the fast suite runs a sample of an expensive matrix
    (every case runs with `-m slow` / `make test-all`)."""
    out = []
    for i, v in enumerate(values):
        name = ids[i] if ids is not None else v
        marks = () if name in keep else (pytest.mark.slow,)
        out.append(pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=marks, id=str(name)))
    return out
