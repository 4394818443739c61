"""The default export-check / calibration frames ship inside the package and resolve without the repository.

`segedge export` reads them whenever no `--calib` is given (even the FP32 export checks against PyTorch on them),
so an installed wheel must find them next to its own modules, never relative to the working directory or a
source checkout. The wheel itself is built and installed in tests/test_install.py (slow).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import segedge
from segedge.errors import DataError
from segedge.export import calibration
from segedge.export.calibration import DEFAULT_CALIB_DIR, IMAGE_EXTS, load_calibration_frames

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(segedge.__file__).resolve().parent


def _tomllib():
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    return pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")


def test_default_frames_live_inside_the_package() -> None:
    frames = sorted(p for p in DEFAULT_CALIB_DIR.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    assert DEFAULT_CALIB_DIR.is_absolute()
    assert DEFAULT_CALIB_DIR.is_relative_to(PACKAGE), f"{DEFAULT_CALIB_DIR} is outside the package {PACKAGE}"
    assert len(frames) >= 10
    img = cv2.imread(str(frames[0]))
    assert img is not None and img.shape == (360, 480, 3) and img.dtype == np.uint8


def test_default_frames_are_declared_package_data() -> None:
    """Every shipped frame matches a package-data glob, so wheels and sdists carry it."""
    cfg = _tomllib().loads((REPO / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["segedge"]
    rel = [p.relative_to(PACKAGE).as_posix() for p in DEFAULT_CALIB_DIR.iterdir() if p.is_file()]
    missing = [r for r in rel if not any(fnmatch.fnmatch(r, g) for g in globs)]
    assert not missing, f"not in [tool.setuptools.package-data] segedge: {missing}"


def test_default_source_resolves_from_another_cwd(tmp_path: Path) -> None:
    """From an unrelated working directory (no calib_data/ there), the default source is the package's folder."""
    code = ("import json; from segedge.export.calibration import load_calibration_frames as f; "
            "c = f(None, 3); print(json.dumps({'source': c.source, 'kind': c.kind, 'n': len(c)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONSAFEPATH": "1"})  # cwd not on sys.path
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["kind"] == "folder" and got["n"] == 3
    assert Path(got["source"]) == DEFAULT_CALIB_DIR
    assert not Path(got["source"]).is_relative_to(tmp_path)


def test_default_source_in_process() -> None:
    frames = load_calibration_frames(None, 2)
    assert Path(frames.source) == DEFAULT_CALIB_DIR and len(frames) == 2
    assert all(f.dtype == np.uint8 and f.ndim == 3 for f in frames.frames)


def test_missing_default_frames_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calibration, "DEFAULT_CALIB_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match=r"reinstall segedge, or pass --calib") as e:
        load_calibration_frames(None, 2)
    assert "\n" not in str(e.value)
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(calibration, "DEFAULT_CALIB_DIR", tmp_path / "empty")
    with pytest.raises(DataError, match=r"missing from this install"):
        load_calibration_frames(None, 2)


def test_make_frames_draws_the_shipped_frames() -> None:
    """calib_data/make_frames.py (the generator kept at the repository root) still draws what ships."""
    script = REPO / "calib_data" / "make_frames.py"
    if not script.is_file():
        pytest.skip("calib_data/make_frames.py is only in the source repository")
    spec = importlib.util.spec_from_file_location("segedge_make_frames", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    def smooth(img: np.ndarray) -> np.ndarray:  # JPEG drops the sensor noise; compare the scene, not the noise
        return cv2.GaussianBlur(img, (7, 7), 2.0).astype(np.float32)

    for i in (0, 1):
        drawn = smooth(mod.draw_frame((360, 480), np.random.default_rng([0, i])))
        shipped = smooth(cv2.imread(str(DEFAULT_CALIB_DIR / f"street_{i:02d}.jpg")))
        assert np.abs(drawn - shipped).mean() < 1.5

