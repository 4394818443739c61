"""Installed, not cloned: the wheel in fresh virtualenvs (slow; run with `make test-all` or `pytest -m slow`).

(a) wheel + `[export]` (+ torch==2.13.0 installed first, as `make setup` does): `segedge export` from an unrelated
    working directory uses the frames shipped inside the package, and `Segmenter.load(out).predict(frame)` works.
(b) wheel + `[ort]` only (a device's install): no torch, onnx, onnxsim or matplotlib is installed; an export folder
    made by this test's own environment loads and predicts there without importing torch, and `segedge --help` runs.

The wheel is built from a copy of the sources (so no build/ or *.egg-info lands in the checkout). Both virtualenvs
share one pip cache: `pip cache dir` of this environment, or SEGEDGE_TEST_PIP_CACHE. TORCH_PIP_ARGS (as in the
Makefile) passes extra pip arguments to the torch install. Skipped with the reason when pip cannot reach an index.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TORCH_SPEC = os.environ.get("SEGEDGE_TEST_TORCH", "torch==2.13.0")
TORCH_PIP_ARGS = shlex.split(os.environ.get("TORCH_PIP_ARGS", ""))
INSTALL_TIMEOUT = 1800  # seconds for one pip install (torch alone unpacks ~1 GB)
BIN = "Scripts" if os.name == "nt" else "bin"
# Distributions a runtime-only install must not pull in (they belong to the `export` / `openvino` extras).
NOT_IN_RUNTIME = ("torch", "onnx", "onnxsim", "matplotlib", "safetensors", "nncf", "openvino")


def _tail(text: str, n: int = 3000) -> str:
    return text[-n:] if text else ""


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on failure (with `check`), fail the test with the command and the tail of its output."""
    t0 = time.perf_counter()
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.perf_counter() - t0
    if out.returncode != 0 and check:
        pytest.fail(f"`{shlex.join(str(c) for c in cmd)}` exited {out.returncode} after {took:.0f} s\n"
                    f"--- stdout ---\n{_tail(out.stdout)}\n--- stderr ---\n{_tail(out.stderr)}", pytrace=False)
    print(f"[{took:6.1f} s] {shlex.join(str(c) for c in cmd)[:160]}")
    return out


def _venv_env(venv: Path) -> dict[str, str]:
    """This process's environment minus anything that would let the venv see other packages."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONSAFEPATH")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(VIRTUAL_ENV=str(venv), PATH=f"{venv / BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1")
    return env


def _import_chain(stderr: str) -> str:
    """The segedge frames of a traceback and its last line: which module pulled in a missing package."""
    lines = stderr.strip().splitlines()
    frames = [ln.strip() for ln in lines if ln.strip().startswith("File ") and "segedge" in ln]
    return "\n".join(frames + lines[-1:])


def _size_mb(root: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


class Venv:
    """A fresh virtualenv (no system or user site-packages) with one shared pip cache."""

    def __init__(self, path: Path, cache: Path) -> None:
        self.path, self.cache = path, cache
        _run([sys.executable, "-m", "venv", path], timeout=300)
        self.python = path / BIN / ("python.exe" if os.name == "nt" else "python")
        self.env = _venv_env(path)

    def pip(self, *args: str) -> subprocess.CompletedProcess:
        return _run([self.python, "-m", "pip", "--cache-dir", self.cache, "--disable-pip-version-check", *args],
                    env=self.env, timeout=INSTALL_TIMEOUT)

    def run(self, *args: str | Path, cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        return _run(list(args), cwd=cwd, env=self.env, timeout=timeout, check=check)

    def script(self, code: str, cwd: Path, timeout: float = 600) -> dict:
        """Run Python code in the venv from `cwd`; its last stdout line is JSON."""
        out = self.run(self.python, "-c", textwrap.dedent(code), cwd=cwd, timeout=timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def site_packages(self) -> Path:
        out = self.run(self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=self.path)
        return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def pip_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip's own cache dir when it has one (warm across runs), else one shared by this module's venvs."""
    if os.environ.get("SEGEDGE_TEST_PIP_CACHE"):
        return Path(os.environ["SEGEDGE_TEST_PIP_CACHE"])
    out = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True, timeout=60)
    if out.returncode == 0 and out.stdout.strip():
        return Path(out.stdout.strip().splitlines()[-1])
    return tmp_path_factory.mktemp("pip-cache")


@pytest.fixture(scope="module")
def index_reachable(pip_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (with pip's reason) when no package index answers."""
    dest = tmp_path_factory.mktemp("pip-probe")
    out = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--cache-dir", str(pip_cache),
                          "--dest", str(dest), "--disable-pip-version-check", "typer>=0.12"],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        why = [ln for ln in (out.stderr or out.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
        pytest.skip(f"pip cannot reach a package index here ({why[-1].strip() if why else 'no output'}); "
                    "the install tests need one")


@pytest.fixture(scope="module")
def wheel(index_reachable: None, pip_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """segedge's wheel, built (isolated build, as pip does for users) from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "segedge", src / "segedge",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--cache-dir", pip_cache, "--disable-pip-version-check",
          src, "-w", dist], timeout=INSTALL_TIMEOUT)
    wheels = sorted(dist.glob("segedge-*.whl"))
    assert len(wheels) == 1, wheels
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    frames = [n for n in names if n.startswith("segedge/assets/frames/") and n.endswith(".jpg")]
    assert len(frames) >= 10, f"the wheel carries {len(frames)} default frames"
    return wheels[0]


def test_wheel_export_then_predict_from_a_temp_cwd(wheel: Path, pip_cache: Path,
                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """(a) wheel[export] in a fresh venv: FP32 export from an unrelated cwd, then Segmenter.load(out).predict."""
    root = tmp_path_factory.mktemp("venv-export")
    venv = Venv(root / "venv", pip_cache)
    venv.pip("install", TORCH_SPEC, *TORCH_PIP_ARGS)  # first, so [export]'s torch range is already met
    venv.pip("install", f"{wheel}[export]")
    cwd = root / "cwd"
    cwd.mkdir()
    out = cwd / "tt"
    venv.run(venv.path / BIN / "segedge", "export", "--model", "topformer-t", "--target", "onnx", "--out", out,
             cwd=cwd, timeout=900)
    assert (out / "model.onnx").is_file() and (out / "manifest.json").is_file()
    assert not (cwd / "calib_data").exists()
    got = venv.script(f"""
        import json
        from pathlib import Path
        import cv2
        import segedge
        from segedge.export.calibration import DEFAULT_CALIB_DIR
        from segedge.runtime import Segmenter
        frame = cv2.imread(str(sorted(DEFAULT_CALIB_DIR.glob("*.jpg"))[0]))
        seg = Segmenter.load({str(out)!r})
        labels = seg.predict(frame)
        print(json.dumps({{"package": str(Path(segedge.__file__).parent), "frames": str(DEFAULT_CALIB_DIR),
                          "frame": list(frame.shape), "labels": list(labels.shape), "dtype": str(labels.dtype),
                          "max": int(labels.max()), "classes": seg.num_classes}}))
    """, cwd=cwd)
    site = venv.site_packages()
    assert Path(got["package"]).is_relative_to(site), got  # the installed copy, not this checkout
    assert Path(got["frames"]).is_relative_to(Path(got["package"])), got
    assert got["labels"] == got["frame"][:2] and got["dtype"] == "uint8" and got["max"] < got["classes"], got
    print(f"venv with segedge[export] + {TORCH_SPEC}: {_size_mb(venv.path):.0f} MB")
    shutil.rmtree(venv.path, ignore_errors=True)


def test_runtime_only_install_predicts_without_torch(wheel: Path, pip_cache: Path,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    """(b) wheel[ort] only: no torch/onnx/onnxsim/matplotlib installed; an export from this environment loads,
    predicts, never imports torch; `segedge --help` works."""
    root = tmp_path_factory.mktemp("venv-runtime")
    export = root / "tt-128"
    _run([sys.executable, "-m", "segedge", "export", "--model", "topformer-t", "--target", "onnx",
          "--input-size", "128x128", "--out", export], cwd=root, timeout=900)
    venv = Venv(root / "venv", pip_cache)
    venv.pip("install", f"{wheel}[ort]")
    cwd = root / "cwd"
    cwd.mkdir()
    installed = venv.script(f"""
        import json
        from importlib import metadata
        names = {list(NOT_IN_RUNTIME)!r}
        have = []
        for n in names:
            try:
                metadata.version(n)
                have.append(n)
            except metadata.PackageNotFoundError:
                pass
        print(json.dumps({{"have": have}}))
    """, cwd=cwd)
    assert installed["have"] == [], f"a runtime-only install pulled in {installed['have']}"
    for what, cmd in (("import segedge.runtime", [venv.python, "-c", "import segedge.runtime"]),
                      ("segedge --help", [venv.path / BIN / "segedge", "--help"])):
        tried = venv.run(*cmd, cwd=cwd, check=False)
        if tried.returncode != 0:
            pytest.fail(f"`{what}` fails in a runtime-only install (segedge[ort], no torch):\n"
                        f"{_import_chain(tried.stderr)}", pytrace=False)
    got = venv.script(f"""
        import json, sys
        import numpy as np
        from segedge.runtime import Segmenter
        seg = Segmenter.load({str(export)!r})
        frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        labels = seg.predict(frame)
        loaded = sorted(m for m in {list(NOT_IN_RUNTIME)!r} if m in sys.modules)
        try:
            import torch  # noqa: F401
            importable = True
        except ImportError:
            importable = False
        print(json.dumps({{"labels": list(labels.shape), "dtype": str(labels.dtype), "max": int(labels.max()),
                          "classes": seg.num_classes, "loaded": loaded, "torch_importable": importable}}))
    """, cwd=cwd)
    assert got["labels"] == [240, 320] and got["dtype"] == "uint8" and got["max"] < got["classes"], got
    assert got["loaded"] == [], f"loading and predicting imported {got['loaded']}"
    assert got["torch_importable"] is False
    helped = venv.run(venv.path / BIN / "segedge", "--help", cwd=cwd)
    assert "export" in helped.stdout and "Usage" in helped.stdout
    print(f"runtime-only venv (segedge[ort]): {_size_mb(venv.path):.0f} MB")
    shutil.rmtree(venv.path, ignore_errors=True)
