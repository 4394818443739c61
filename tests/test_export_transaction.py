"""Re-exports can never lose a good export: a real `segedge export` process stopped by SIGKILL, SIGINT or SIGTERM at
named points of a re-export (segedge.testhooks), then the folder must hold the complete old export or the complete
new one, loadable, and the next run must leave no staging leftovers. Also: other targets are kept or refused, never
silently deleted; the calibration table belongs to the export that made it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segedge.errors import ExportError
from segedge.export import ExportOptions, export_model
from segedge.runtime import Segmenter

from conftest import slow_except

REPO = Path(__file__).resolve().parent.parent
BASE = ["--model", "topformer-t", "--input-size", "128x128", "--calib-count", "2"]


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _loads(folder: Path) -> list[str]:
    """Every target of the folder loads with a full sha256 check and predicts; returns the target names."""
    man = json.loads((folder / "manifest.json").read_text())
    for t in man["targets"]:
        with Segmenter.load(folder, target=t, verify="full") as seg:
            assert seg.predict(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50)
    return sorted(man["targets"])


def _export_cmd(out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "segedge", "export", *BASE, "--out", str(out), *args]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished export (onnx + ort-int8 + qdq) to copy before each interruption."""
    out = tmp_path_factory.mktemp("good") / "exp"
    export_model(ExportOptions("topformer-t", targets="ort-int8", input_size=(128, 128), calib_count=2, out=out))
    return out


def _interrupt(good: Path, tmp_path: Path, point: str, sig: int, new_args: list[str]) -> tuple[Path, dict, dict]:
    folder = tmp_path / "exp"
    shutil.copytree(good, folder)
    before = _snapshot(folder)
    flag = tmp_path / "paused"
    env = {**os.environ, "SEGEDGE_TEST_PAUSE": point, "SEGEDGE_TEST_PAUSE_FILE": str(flag),
           "PYTHONPATH": str(REPO)}
    # preexec_fn: a test runner started in the background (`nohup pytest &`) ignores SIGINT, and so would the
    # child it starts; a user's Ctrl-C reaches a foreground process whose SIGINT has its default disposition.
    proc = subprocess.Popen(_export_cmd(folder, *new_args), env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the export never reached the pause point"
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the export did not stop within 300 s of signal {sig}; its stderr ended: {err[-2000:]}")
    return folder, before, {"code": proc.returncode}


@pytest.mark.parametrize("point, sig", slow_except(
    [("export:staged", signal.SIGINT), ("export:kept", signal.SIGTERM), ("export:before-swap", signal.SIGKILL),
     ("export:swapped", signal.SIGKILL), ("export:staged", signal.SIGTERM), ("export:kept", signal.SIGKILL),
     ("export:swapped", signal.SIGINT)],
    {"staged-SIGINT", "before-swap-SIGKILL"},
    ids=["staged-SIGINT", "kept-SIGTERM", "before-swap-SIGKILL", "swapped-SIGKILL", "staged-SIGTERM",
         "kept-SIGKILL", "swapped-SIGINT"]))
def test_interrupted_re_export_leaves_old_or_new_export(good: Path, tmp_path: Path, point: str, sig: int) -> None:
    """The re-export changes the graph (raw io) and replaces every target."""
    folder, before, res = _interrupt(good, tmp_path, point, sig, ["--target", "onnx", "--io", "raw", "--replace"])
    after = _snapshot(folder)
    man = json.loads((folder / "manifest.json").read_text())
    if point == "export:swapped":  # the swap happened: the complete new export
        assert man["input"]["io"] == "raw" and _loads(folder) == ["onnx"]
    else:  # the complete old export, byte for byte
        assert after == before and _loads(folder) == ["onnx", "ort-int8", "qdq"]
    if sig != signal.SIGKILL:  # Ctrl-C and SIGTERM clean up at once
        assert res["code"] == 130
        assert not list(tmp_path.glob(".exp.segedge-*"))
    r = subprocess.run(_export_cmd(folder, "--target", "onnx"), cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert not list(tmp_path.glob(".exp.segedge-*")), "the next run removes what a killed run left"
    if point == "export:swapped":
        assert r.returncode == 0, r.stderr
    else:  # the old folder holds ort-int8/qdq of the float graph: same graph, so they are carried over
        assert r.returncode == 0 and _loads(folder) == ["onnx", "ort-int8", "qdq"], r.stderr


def test_re_export_keeps_or_refuses_other_targets(good: Path, tmp_path: Path) -> None:
    folder = tmp_path / "exp"
    shutil.copytree(good, folder)
    (folder / "NOTES.txt").write_text("mine")  # a user's file: never removed
    before = _snapshot(folder)
    with pytest.raises(ExportError, match=r"holds ort-int8, qdq built from another graph.*--replace"):
        export_model(ExportOptions("topformer-t", targets="onnx", input_size=(128, 128), io="raw", out=folder))
    assert _snapshot(folder) == before
    # Same graph: the other targets are still valid and carried over (hard links, bytes unchanged).
    export_model(ExportOptions("topformer-t", targets="onnx", input_size=(128, 128), verify_frames=2, out=folder))
    assert _loads(folder) == ["onnx", "ort-int8", "qdq"] and (folder / "NOTES.txt").read_text() == "mine"
    assert _snapshot(folder)["model.int8.onnx"] == before["model.int8.onnx"]
    # --replace drops what no longer fits, and the stale calibration table with it.
    export_model(ExportOptions("topformer-t", targets="onnx", input_size=(128, 128), io="raw", replace=True,
                               out=folder))
    assert _loads(folder) == ["onnx"] and not (folder / "model.int8.onnx").exists()
    assert not (folder / "calibration.minmax.json").exists() and (folder / "NOTES.txt").read_text() == "mine"


def test_fallback_without_atomic_exchange_and_recovery(good: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import segedge.export.folder as folder_mod

    folder = tmp_path / "exp"
    shutil.copytree(good, folder)
    monkeypatch.setattr(folder_mod, "exchange", lambda a, b: False)  # e.g. a file system without RENAME_EXCHANGE
    export_model(ExportOptions("topformer-t", targets="onnx", input_size=(128, 128), io="raw", replace=True,
                               out=folder))
    assert _loads(folder) == ["onnx"] and sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
    # A kill between the two renames leaves the old state aside and no folder: the next run puts it back.
    old = tmp_path / ".exp.segedge-old-1-abcd"
    os.replace(folder, old)
    stale = tmp_path / ".exp.segedge-staging-999999999-dead"
    stale.mkdir()
    notes = folder_mod.recover(folder)
    assert folder.is_dir() and not old.exists() and not stale.exists() and len(notes) == 2
    assert _loads(folder) == ["onnx"]


def test_runtime_refuses_a_swapped_or_truncated_artifact(good: Path, tmp_path: Path) -> None:
    from segedge.errors import SegedgeError

    folder = tmp_path / "exp"
    shutil.copytree(good, folder)
    qdq = (folder / "model.qdq.onnx").read_bytes()
    (folder / "model.int8.onnx").write_bytes(qdq)  # another valid model under the expected name
    with pytest.raises(SegedgeError, match=r"model.int8.onnx is \d+ bytes but manifest.json recorded"):
        Segmenter.load(folder, target="ort-int8")
    man = json.loads((folder / "manifest.json").read_text())
    man["targets"]["ort-int8"]["size_bytes"] = len(qdq)  # same size, other bytes: only the hash can tell
    (folder / "manifest.json").write_text(json.dumps(man))
    for mode in ("fast", "full"):
        with pytest.raises(SegedgeError, match="does not match the sha256"):
            Segmenter.load(folder, target="ort-int8", verify=mode)
    Segmenter.load(folder, target="ort-int8", verify="off").close()  # the user's explicit choice
    man["targets"]["onnx"]["file"] = "../exp/model.onnx"
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SegedgeError, match="outside the export folder"):
        Segmenter.load(folder, target="onnx")
