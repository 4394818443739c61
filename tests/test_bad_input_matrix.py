"""The bad-input matrix: every kind of bad value a user can hand segedge gets ONE clear line naming the problem and
the fix, and nothing is lost.

CLI: `error: …` on stderr (the only line besides progress logs), a non-zero exit code, no traceback. API: a
`segedge.errors.SegedgeError` subclass whose message is one line. Every case also checks a key phrase of the message,
so the test fails when a message changes meaning, not only when it changes shape. Cases that aim at an existing
export folder (CLI exports with `--out` on a copy of a good export, bad `Segmenter.load` arguments, a full disk)
check that the folder is byte-identical afterwards, nothing was left beside it, and it still loads; cases that break
a folder on purpose (manifests, artifacts) check that the failed load changed nothing in it.

Areas: checkpoints, manifests, artifacts, frames, overlay labels and alpha, `Segmenter.load` arguments, CLI options
(real `python -m segedge` subprocesses, run two at a time in the background while the in-process cases run),
calibration sources, datasets, output folders and a full disk.

Interruptions (SIGKILL / SIGINT / SIGTERM at named pause points of a re-export) are covered by
tests/test_export_transaction.py and not repeated here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest
import torch

import segedge.io
from segedge.errors import CheckpointError, DataError, ExportError, LabelRangeError, SegedgeError
from segedge.export import ExportOptions, export_model
from segedge.runtime import Segmenter

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "segedge" / "weights"
TOPFORMER_W = WEIGHTS / "topformer-t-camvid-384x512.safetensors"
B0_W = WEIGHTS / "b0-camvid-384x512.safetensors"
SIZE = (128, 128)  # topformer-t's inputs are multiples of 64
FRAME = np.zeros((24, 32, 3), np.uint8)


# -- shared checks ------------------------------------------------------------------------------------------------
def assert_one_line(message: str, *phrases: str) -> None:
    """One line, no traceback, every key phrase present."""
    assert "Traceback" not in message, message
    lines = message.strip().splitlines()
    assert len(lines) == 1, f"{len(lines)} lines:\n{message}"
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"


def raises_one_line(exc: type[BaseException], call: Callable[[], Any], *phrases: str) -> BaseException:
    """`call()` raises `exc` with a one-line message holding every phrase; returns the exception."""
    with pytest.raises(exc) as ei:
        call()
    assert_one_line(str(ei.value), *phrases)
    return ei.value


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones included) → sha256 of its bytes ('dir' for folders)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def assert_intact(root: Path, before: dict[str, str], folder: Path | None = None) -> None:
    """`root` is byte-identical to `before` (nothing changed, lost or left over) and `folder` still loads."""
    assert snapshot(root) == before
    if folder is not None:
        with Segmenter.load(folder, verify="full") as seg:
            assert seg.predict(FRAME).shape == FRAME.shape[:2]


def copy_export(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(autouse=True)
def _private_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sha256 cache of verify="fast" and the models cache stay out of the user's ~/.cache.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    monkeypatch.setenv("SEGEDGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "segedge-cache"))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished FP32 ONNX export of topformer-t at 128x128, copied by every case that needs a folder."""
    out = tmp_path_factory.mktemp("good") / "exp"
    export_model(ExportOptions("topformer-t", targets="onnx", input_size=SIZE, verify_frames=1, out=out))
    return out


@pytest.fixture(scope="module")
def good_ov(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same export with the OpenVINO IR target (model.xml + model.bin), for the OpenVINO artifact cases."""
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    out = tmp_path_factory.mktemp("good-ov") / "exp"
    export_model(ExportOptions("topformer-t", targets="openvino", input_size=SIZE, verify_frames=1, out=out))
    return out


@pytest.fixture(scope="module")
def seg(good: Path) -> Any:
    with Segmenter.load(good) as s:
        yield s


# -- checkpoints --------------------------------------------------------------------------------------------------
class _Pickled:
    """Pickled into a .pt file: segedge must refuse to unpickle it (weights_only)."""


def _write_checkpoints(d: Path) -> None:
    blob = TOPFORMER_W.read_bytes()
    (d / "corrupt.safetensors").write_bytes(np.random.default_rng(0).bytes(5000))
    (d / "truncated.safetensors").write_bytes(blob[: len(blob) // 2])
    (d / "empty.safetensors").write_bytes(b"")
    torch.save({"head": _Pickled()}, d / "pickle.pt")
    (d / "garbage.pt").write_bytes(np.random.default_rng(1).bytes(3000))
    torch.save({"w": torch.zeros(3)}, d / "foreign.pt")
    torch.save([1, 2, 3], d / "list.pt")


def _create(name: str, weights: Path | str, **kw: Any) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from segedge.models import create_model

        return create_model(name, weights=d / weights if isinstance(weights, str) else weights, **kw)
    return call


def _load(file: Path | str, **kw: Any) -> Callable[[Path], Any]:
    return lambda d: Segmenter.load(d / file if isinstance(file, str) else file, **kw)


CHECKPOINT_CASES = [
    ("corrupt-safetensors", _load("corrupt.safetensors"), CheckpointError, ["corrupt.safetensors is not a readable "
                                                                            "safetensors file"]),
    ("truncated-safetensors", _create("topformer-t", "truncated.safetensors"), CheckpointError,
     ["not a readable safetensors file", "truncated or corrupt"]),
    ("truncated-safetensors-load", _load("truncated.safetensors", model="topformer-t"), CheckpointError,
     ["not a readable safetensors file"]),
    ("empty-safetensors", _load("empty.safetensors"), CheckpointError, ["not a readable safetensors file"]),
    ("wrong-model-load", _load(B0_W, model="topformer-t"), CheckpointError,
     ["segedge checkpoint of 'b0', not 'topformer-t'", "--model b0"]),
    ("wrong-model-create", _create("topformer-t", B0_W), CheckpointError, ["segedge checkpoint of 'b0'"]),
    ("wrong-num-classes", _create("topformer-t", TOPFORMER_W, num_classes=5), CheckpointError,
     ["has 11 classes but num_classes=5 was asked", "drop --num-classes"]),
    ("missing-file-create", _create("topformer-t", "nope.safetensors"), CheckpointError, ["checkpoint not found"]),
    ("missing-file-load", _load("nope.safetensors"), SegedgeError, ["model path not found"]),
    ("pt-pickle", _create("topformer-t", "pickle.pt"), CheckpointError,
     ["contains pickled Python objects", "_Pickled", "refuses to unpickle"]),
    ("pt-pickle-load", _load("pickle.pt", model="topformer-t"), CheckpointError, ["pickled Python objects"]),
    ("pt-garbage", _create("topformer-t", "garbage.pt"), CheckpointError, ["not a readable PyTorch checkpoint"]),
    ("pt-foreign-keys", _create("topformer-t", "foreign.pt"), CheckpointError, ["unrecognised checkpoint layout"]),
    ("pt-not-a-state-dict", _create("topformer-t", "list.pt"), CheckpointError,
     ["does not hold a state dict of tensors"]),
    ("pt-without-model-name", _load("foreign.pt"), SegedgeError, ["does not say which model it holds", "model="]),
    ("model-name-typo", _create("topformr-t", TOPFORMER_W), SegedgeError, ["did you mean 'topformer-t'"]),
]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("checkpoints")
    _write_checkpoints(d)
    return d


@pytest.mark.parametrize("call, exc, phrases", [pytest.param(*c[1:], id=c[0]) for c in CHECKPOINT_CASES])
def test_checkpoint(checkpoints: Path, call: Callable[[Path], Any], exc: type, phrases: list[str]) -> None:
    before = snapshot(checkpoints)
    raises_one_line(exc, lambda: call(checkpoints), *phrases)
    assert snapshot(checkpoints) == before  # a bad checkpoint is reported, never rewritten or removed


# -- manifests ----------------------------------------------------------------------------------------------------
def _set(*path: str, value: Any) -> Callable[[dict], None]:
    def mutate(m: dict) -> None:
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value
    return mutate


def _drop(*path: str) -> Callable[[dict], None]:
    def mutate(m: dict) -> None:
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]
    return mutate


MANIFEST_CASES = [
    ("invalid-json", "{not json", {}, ["manifest.json is not valid JSON", "re-run `segedge export`"]),
    ("empty-file", "", {}, ["is not valid JSON"]),
    ("json-list", "[1, 2]", {}, ["has no 'targets' map"]),
    ("missing-input", _drop("input"), {}, ["key 'input' is missing"]),
    ("missing-num-classes", _drop("num_classes"), {}, ["key 'num_classes' is missing"]),
    ("missing-targets", _drop("targets"), {}, ["has no 'targets' map"]),
    ("targets-empty", _set("targets", value={}), {}, ["lists no targets"]),
    ("target-without-file", _drop("targets", "onnx", "file"), {}, ["a target entry has no 'file'"]),
    ("two-mean-values", _set("input", "mean", value=[123.675, 116.28]), {}, ["mean must be three finite numbers"]),
    ("mean-nan", _set("input", "mean", value=[float("nan"), 116.28, 103.53]), {}, ["three finite numbers"]),
    ("std-zero", _set("input", "std", value=[0, 57.12, 57.375]), {}, ["std must be positive"]),
    ("file-outside-folder", _set("targets", "onnx", "file", value="../other/model.onnx"), {},
     ["outside the export folder"]),
    ("file-absolute", _set("targets", "onnx", "file", value="/etc/hosts"), {}, ["outside the export folder"]),
    ("companion-outside-folder", _set("targets", "onnx", "companion_files", value={"../x.bin": {}}), {},
     ["outside the export folder"]),
    ("num-classes-vs-model", lambda m: m.update(num_classes=5, class_names=m["class_names"][:5]), {},
     ["outputs 11 classes but its contract says 5"]),
    ("num-classes-vs-names", _set("num_classes", value=5), {}, ["11 class names for 5 classes"]),
    ("input-size-vs-model", _set("input", "height", value=256), {}, ["takes input height 128 but its contract "
                                                                     "says 256"]),
    ("io-mode-only", _set("input", "io", value="raw"), {}, ["input io 'raw' takes uint8 NHWC frames"]),
    ("io-mode-vs-model", lambda m: m["input"].update(io="raw", dtype="uint8", layout="NHWC"), {},
     ["takes float32 input but its contract says uint8 (io raw)"]),
    ("io-unknown", _set("input", "io", value="yuv"), {}, ["input io 'yuv' is not one of float, raw"]),
    ("size-bytes-not-a-number", _set("targets", "onnx", "size_bytes", value="big"), {},
     ["size_bytes must be a whole number of bytes"]),
    ("sha256-not-a-string", _set("targets", "onnx", "sha256", value=5), {}, ["sha256 must be a hex string"]),
    ("companions-not-a-map", _set("targets", "onnx", "companion_files", value=["model.bin"]), {},
     ["'companion_files' must map file names"]),
    ("output-size-one-value", _set("output", "size", value=[16]), {}, ["output size must be [height, width]"]),
    ("output-kind-unknown", _set("output", "kind", value="probs"), {}, ["output kind 'probs' is not logits or "
                                                                        "labels"]),
    ("target-typo", None, {"target": "onxx"}, ["target 'onxx' is not in", "it holds onnx"]),
]


@pytest.mark.parametrize("mutate, load_kw, phrases", [pytest.param(*c[1:], id=c[0]) for c in MANIFEST_CASES])
def test_manifest(good: Path, tmp_path: Path, mutate: Any, load_kw: dict, phrases: list[str]) -> None:
    folder = copy_export(good, tmp_path / "exp")
    man = folder / "manifest.json"
    if isinstance(mutate, str):
        man.write_text(mutate)
    elif mutate is not None:
        data = json.loads(man.read_text())
        mutate(data)
        man.write_text(json.dumps(data))
    before = snapshot(tmp_path)
    raises_one_line(SegedgeError, lambda: Segmenter.load(folder, **load_kw), *phrases)
    assert_intact(tmp_path, before)


# -- artifacts ----------------------------------------------------------------------------------------------------
def _truncate(name: str) -> Callable[[Path], None]:
    def act(folder: Path) -> None:
        blob = (folder / name).read_bytes()
        (folder / name).write_bytes(blob[: len(blob) // 2])
    return act


def _swap(name: str) -> Callable[[Path], None]:  # same size, other bytes: only the sha256 can tell
    def act(folder: Path) -> None:
        size = (folder / name).stat().st_size
        (folder / name).write_bytes(np.random.default_rng(2).bytes(size))
    return act


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


ARTIFACT_CASES = [
    ("onnx-swapped", "good", _swap("model.onnx"), {}, ["model.onnx does not match the sha256 in manifest.json",
                                                        "verify='off'"]),
    ("onnx-swapped-full", "good", _swap("model.onnx"), {"verify": "full"}, ["does not match the sha256"]),
    ("onnx-swapped-unverified", "good", _swap("model.onnx"), {"verify": "off"},
     ["onnxruntime cannot load model.onnx"]),
    ("onnx-truncated", "good", _truncate("model.onnx"), {}, ["model.onnx is", "replaced or truncated"]),
    ("onnx-truncated-file", "good", _truncate("model.onnx"), {"file": "model.onnx"}, ["replaced or truncated"]),
    ("onnx-truncated-unverified", "good", _truncate("model.onnx"), {"verify": "off"},
     ["onnxruntime cannot load model.onnx"]),
    ("onnx-missing", "good", _remove("model.onnx"), {}, ["lists model.onnx for target 'onnx' but the file is "
                                                         "missing"]),
    ("openvino-bin-missing", "good_ov", _remove("model.bin"), {"target": "openvino"},
     ["lists model.bin for target 'openvino' but the file is missing"]),
    ("openvino-bin-missing-unverified", "good_ov", _remove("model.bin"), {"target": "openvino", "verify": "off"},
     ["needs its weights file model.bin"]),
    ("openvino-bin-truncated", "good_ov", _truncate("model.bin"), {"target": "openvino"},
     ["model.bin is", "replaced or truncated"]),
    ("openvino-bin-truncated-unverified", "good_ov", _truncate("model.bin"), {"target": "openvino", "verify": "off"},
     ["model.xml + model.bin is not a readable OpenVINO IR"]),
]


@pytest.mark.parametrize("source, act, load_kw, phrases", [pytest.param(*c[1:], id=c[0]) for c in ARTIFACT_CASES])
def test_artifact(request: pytest.FixtureRequest, tmp_path: Path, source: str, act: Callable[[Path], None],
                  load_kw: dict, phrases: list[str]) -> None:
    folder = copy_export(request.getfixturevalue(source), tmp_path / "exp")
    act(folder)
    kw = dict(load_kw)
    path = folder / kw.pop("file") if "file" in kw else folder
    before = snapshot(tmp_path)
    raises_one_line(SegedgeError, lambda: Segmenter.load(path, **kw), *phrases)
    assert_intact(tmp_path, before)


# -- frames -------------------------------------------------------------------------------------------------------
FRAME_CASES = [
    ("float32", FRAME.astype(np.float32), ["frame dtype is float32", "(frame * 255)"]),
    ("float64-0-1", np.random.default_rng(0).random((24, 32, 3)), ["frame dtype is float64"]),
    ("uint16", FRAME.astype(np.uint16), ["frame is uint16 (16-bit)", "(frame >> 8)"]),
    ("int16", FRAME.astype(np.int16), ["frame is int16 (16-bit)"]),
    ("bool", FRAME.astype(bool), ["frame dtype is bool"]),
    ("empty", np.zeros((0, 0, 3), np.uint8), ["frame is empty"]),
    ("empty-rows", np.zeros((0, 32), np.uint8), ["frame is empty"]),
    ("5-channels", np.zeros((24, 32, 5), np.uint8), ["frame shape (24, 32, 5) is not an image"]),
    ("2-channels", np.zeros((24, 32, 2), np.uint8), ["is not an image"]),
    ("batch-to-predict", np.zeros((2, 24, 32, 3), np.uint8), ["is not an image", "predict_batch"]),
    ("none", None, ["frame must be a numpy array", "got NoneType"]),
    ("list", FRAME.tolist(), ["frame must be a numpy array", "got list", "np.asarray"]),
    ("path-string", "frame.png", ["got str"]),
]


@pytest.mark.parametrize("frame, phrases", [pytest.param(*c[1:], id=c[0]) for c in FRAME_CASES])
def test_frame(seg: Any, frame: Any, phrases: list[str]) -> None:
    raises_one_line(SegedgeError, lambda: seg.predict(frame), *phrases)


@pytest.mark.parametrize("frames, phrases", [
    pytest.param(None, ["predict_batch takes a list of frames", "got NoneType"], id="batch-none"),
    pytest.param(FRAME, ["predict_batch takes a list of frames", "shape (24, 32, 3)", "use predict"],
                 id="batch-one-frame"),
    pytest.param([FRAME, None], ["frame must be a numpy array"], id="batch-with-none"),
])
def test_frame_batch(seg: Any, frames: Any, phrases: list[str]) -> None:
    raises_one_line(SegedgeError, lambda: seg.predict_batch(frames), *phrases)


# -- overlay labels and alpha -------------------------------------------------------------------------------------
LABELS = np.zeros(FRAME.shape[:2], np.uint8)
OVERLAY_CASES = [
    ("labels-nan", {"labels": np.full(FRAME.shape[:2], np.nan)}, ["labels must hold integer class indices"]),
    ("labels-negative", {"labels": np.full(FRAME.shape[:2], -1, np.int32)}, ["labels hold negative values"]),
    ("labels-float", {"labels": LABELS.astype(np.float32)}, ["integer class indices", "got float32"]),
    ("labels-3d", {"labels": np.zeros((24, 32, 3), np.uint8)}, ["labels must be an H×W array", "(24, 32, 3)"]),
    ("labels-empty", {"labels": np.zeros((0, 0), np.uint8)}, ["labels must be an H×W array"]),
    ("labels-list", {"labels": LABELS.tolist()}, ["labels must be an H×W integer numpy array", "got list"]),
    ("alpha-2", {"labels": LABELS, "alpha": 2}, ["alpha must be a number from 0", "got 2"]),
    ("alpha-negative", {"labels": LABELS, "alpha": -0.1}, ["alpha must be a number from 0"]),
    ("alpha-nan", {"labels": LABELS, "alpha": float("nan")}, ["alpha must be a number from 0"]),
    ("alpha-string", {"labels": LABELS, "alpha": "0.5"}, ["alpha must be a number", "'0.5'"]),
    ("alpha-bool", {"labels": LABELS, "alpha": True}, ["alpha must be a number", "True"]),
]


@pytest.mark.parametrize("kw, phrases", [pytest.param(*c[1:], id=c[0]) for c in OVERLAY_CASES])
def test_overlay(seg: Any, kw: dict, phrases: list[str]) -> None:
    raises_one_line(SegedgeError, lambda: seg.overlay(FRAME, **kw), *phrases)


def test_overlay_accepts_numpy_alpha(seg: Any) -> None:
    """The other side of alpha-bool: numpy scalars are numbers too (np.linspace, a slider's value)."""
    assert seg.overlay(FRAME, LABELS, alpha=np.float32(0.3)).shape == FRAME.shape


# -- Segmenter.load arguments -------------------------------------------------------------------------------------
LOAD_CASES = [
    ("path-none", None, {}, ["Segmenter.load needs a path", "got NoneType"]),
    ("path-int", 3, {}, ["Segmenter.load needs a path", "got int"]),
    ("path-missing", "nope", {}, ["model path not found"]),
    ("folder-without-manifest", "empty", {}, ["has no manifest.json"]),
    ("threads-negative", "exp", {"threads": -3}, ["threads must be a whole number ≥ 1", "got -3"]),
    ("threads-zero", "exp", {"threads": 0}, ["threads must be a whole number ≥ 1", "got 0"]),
    ("threads-fraction", "exp", {"threads": 1.5}, ["threads must be a whole number"]),
    ("backend-typo", "exp", {"backend": "onxruntime"}, ["unknown backend 'onxruntime'", "did you mean "
                                                                                       "'onnxruntime'"]),
    ("backend-for-another-file-kind", "exp", {"backend": "torch"}, ["backend 'torch' opens", "not model.onnx"]),
    ("verify-maybe", "exp", {"verify": "maybe"}, ["verify must be one of fast, full, off", "'maybe'"]),
    ("postprocess-unknown", "exp", {"postprocess": "slow"}, ["unknown postprocess 'slow'"]),
    ("provider-unknown", "exp", {"providers": ["FooExecutionProvider"]},
     ["execution provider 'FooExecutionProvider' is not available", "CPUExecutionProvider"]),
    ("provider-name-as-string", "exp", {"providers": "FooExecutionProvider"}, ["'FooExecutionProvider' is not "
                                                                               "available"]),
]


@pytest.mark.parametrize("path, kw, phrases", [pytest.param(*c[1:], id=c[0]) for c in LOAD_CASES])
def test_load_arguments(good: Path, tmp_path: Path, path: Any, kw: dict, phrases: list[str]) -> None:
    folder = copy_export(good, tmp_path / "exp")
    (tmp_path / "empty").mkdir()
    before = snapshot(tmp_path)
    arg = tmp_path / path if isinstance(path, str) else path
    raises_one_line(SegedgeError, lambda: Segmenter.load(arg, **kw), *phrases)
    assert_intact(tmp_path, before, folder)


# -- calibration sources ------------------------------------------------------------------------------------------
def _calib_inputs(d: Path) -> None:
    (d / "tiny").mkdir()
    cv2.imwrite(str(d / "tiny" / "dot.png"), np.zeros((1, 1, 3), np.uint8))
    (d / "notes").mkdir()
    (d / "notes" / "readme.txt").write_text("no frames here")
    (d / "empty").mkdir()
    (d / "corrupt").mkdir()
    (d / "corrupt" / "a.jpg").write_bytes(b"not a jpeg")
    (d / "clip.mp4").write_text("not a video")


CALIB_CASES = [
    ("one-1x1-image", "tiny", {}, DataError, ["calibration frame dot.png is 1x1 px", "too small"]),
    ("video-that-is-not", "clip.mp4", {}, DataError, ["cannot open video", "clip.mp4", "extract frames"]),
    ("folder-without-images", "notes", {}, DataError, ["holds 1 file(s) but no images"]),
    ("empty-folder", "empty", {}, DataError, ["is empty"]),
    ("unreadable-images", "corrupt", {}, DataError, ["none of the 1 image files", "could be read"]),
    ("nowhere", "no-such-frames", {}, DataError, ["does not exist", "DATASET:ROOT"]),
    ("dataset-name-typo", "camvdi:{d}", {}, DataError, ["unknown dataset 'camvdi': did you mean 'camvid'"]),
    ("dataset-root-missing", "camvid:{d}/no-such-root", {}, DataError, ["data folder not found"]),
    ("count-zero", "tiny", {"count": 0}, SegedgeError, ["--calib-count must be positive, got 0"]),
    ("not-a-source", 5, {}, SegedgeError, ["cannot calibrate from a int"]),
]


@pytest.mark.parametrize("source, kw, exc, phrases", [pytest.param(*c[1:], id=c[0]) for c in CALIB_CASES])
def test_calibration_source(tmp_path: Path, source: Any, kw: dict, exc: type, phrases: list[str]) -> None:
    from segedge.export.calibration import load_calibration_frames

    _calib_inputs(tmp_path)
    if isinstance(source, str):
        source = source.format(d=tmp_path) if "{d}" in source else (
            str(tmp_path / source) if ":" not in source else source)
    raises_one_line(exc, lambda: load_calibration_frames(source, kw.get("count", 4)), *phrases)


# -- datasets -----------------------------------------------------------------------------------------------------
def _mask_folder(root: Path, value: int) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(root / "masks" / "a.png"), np.full((8, 8), value, np.uint8))
    return root


def _camvid(root: Path, value: int) -> Path:
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    cv2.imwrite(str(root / "val" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(root / "valannot" / "a.png"), np.full((8, 8), value, np.uint8))
    return root


def _open(name: str, make: Callable[[Path], Path] | None, **kw: Any) -> Callable[[Path], Any]:
    def call(d: Path) -> Any:
        from segedge.data.datasets import open_dataset

        root = make(d / "data") if make else d / "no-such-data"
        return open_dataset(name, root, **kw)
    return call


DATASET_CASES = [
    ("name-typo", _open("camvdi", lambda r: _camvid(r, 3)), DataError, ["unknown dataset 'camvdi'",
                                                                        "did you mean 'camvid'"]),
    ("name-typo-cityscapes", _open("cityscape", lambda r: _camvid(r, 3)), DataError, ["did you mean 'cityscapes'"]),
    ("folder-labels-out-of-range", lambda d: _open("folder", lambda r: _mask_folder(r, 7), num_classes=3)(d)[0],
     LabelRangeError, ["holds values beyond the 3 classes", "7: 64 px", "--num-classes"]),
    ("folder-labels-out-of-range-validate",
     lambda d: _open("folder", lambda r: _mask_folder(r, 7), num_classes=3)(d).validate(), LabelRangeError,
     ["beyond the 3 classes"]),
    ("camvid-labels-out-of-range", lambda d: _open("camvid", lambda r: _camvid(r, 40))(d)[0], LabelRangeError,
     ["beyond camvid's label ids (0..11)", "40: 64 px"]),
    ("folder-without-classes", _open("folder", lambda r: _mask_folder(r, 1)), DataError, ["pass --num-classes N"]),
    ("root-missing", _open("camvid", None), DataError, ["data folder not found"]),
    ("split-missing", _open("camvid", lambda r: _camvid(r, 3), split="train"), DataError,
     ["CamVid 'train' folder not found"]),
]


@pytest.mark.parametrize("call, exc, phrases", [pytest.param(*c[1:], id=c[0]) for c in DATASET_CASES])
def test_dataset(tmp_path: Path, call: Callable[[Path], Any], exc: type, phrases: list[str]) -> None:
    raises_one_line(exc, lambda: call(tmp_path), *phrases)


# -- input sizes (API side of the CLI's --input-size cases) -------------------------------------------------------
@pytest.mark.parametrize("text, phrases", [
    pytest.param("abc", ["cannot parse input size 'abc'", "HEIGHTxWIDTH"], id="size-letters"),
    pytest.param("-64x64", ["cannot parse input size '-64x64'"], id="size-negative"),
    pytest.param("1e3", ["cannot parse input size '1e3'"], id="size-float-notation"),
    pytest.param("0x0", ["input size 0x0 must be positive"], id="size-zero"),
    pytest.param("4160x4160", ["larger than segedge allows (4096 per side"], id="size-over-limit"),
])
def test_input_size(text: str, phrases: list[str]) -> None:
    from segedge.commands import resolve_input_size

    raises_one_line(SegedgeError, lambda: resolve_input_size("topformer-t", text), *phrases)


# -- output folders and a full disk -------------------------------------------------------------------------------
def _enospc(path: Any = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


@pytest.mark.parametrize("out, phrases", [
    pytest.param("exp/manifest.json", ["output path", "exists and is not a folder"], id="out-is-a-file"),
    pytest.param("exp/manifest.json/sub", ["exp/manifest.json is a file, not a folder", "choose another --out"],
                 id="out-under-a-file"),
])
def test_output_folder(good: Path, tmp_path: Path, out: str, phrases: list[str]) -> None:
    """Tests run as root, so an unwritable parent is made with a regular file where a folder should be."""
    folder = copy_export(good, tmp_path / "exp")
    before = snapshot(tmp_path)
    raises_one_line(ExportError, lambda: export_model(ExportOptions("topformer-t", input_size=SIZE,
                                                                    out=tmp_path / out)), *phrases)
    assert_intact(tmp_path, before, folder)


def test_disk_full_before_staging(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC on the first write beside the folder (the probe): one line, before any work."""
    folder = copy_export(good, tmp_path / "exp")
    before = snapshot(tmp_path)

    def full(*a: Any, **k: Any) -> Any:
        raise _enospc()

    import segedge.io as io_mod

    monkeypatch.setattr(io_mod.tempfile, "mkstemp", full)
    raises_one_line(ExportError, lambda: export_model(ExportOptions("topformer-t", input_size=SIZE, out=folder)),
                    "cannot write beside output folder", "No space left on device", "--out")
    monkeypatch.undo()
    assert_intact(tmp_path, before, folder)


def run_cli_in_process(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The real CLI entry point in this process (so a failure can be injected); (exit code, stdout, stderr)."""
    from segedge.cli import main

    handler = signal.getsignal(signal.SIGTERM)  # main() installs its own SIGTERM handler
    try:
        with pytest.raises(SystemExit) as ei:
            main(args)
    finally:
        signal.signal(signal.SIGTERM, handler)
    out, err = capsys.readouterr()
    return ei.value.code, out, err


def test_disk_full_creating_staging_cli(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    """ENOSPC when the re-export creates its staging folder beside the old export (before the trace): one line."""
    from segedge.export.folder import STAGING_TAG

    folder = copy_export(good, tmp_path / "exp")
    before = snapshot(tmp_path)
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *a: Any, **k: Any) -> None:
        if STAGING_TAG in self.name:
            raise _enospc(self)
        real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, out, err = run_cli_in_process(["export", "--model", "topformer-t", "--input-size", "128x128", "--out",
                                         str(folder)], capsys)
    monkeypatch.undo()
    assert code == 2 and out == ""
    assert_cli_error(err, "cannot create a staging folder beside", "No space left on device", "--out")
    assert_intact(tmp_path, before, folder)


@pytest.mark.slow
def test_disk_full_at_commit_cli(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """ENOSPC while writing the new manifest, the re-export's last write before the swap (after a full trace and
    check, hence slow): `error:` + one line naming the folder, exit 1, the old export untouched."""
    folder = copy_export(good, tmp_path / "exp")
    before = snapshot(tmp_path)

    @contextlib.contextmanager
    def full(path: Any) -> Any:
        raise _enospc(path)
        yield  # pragma: no cover

    monkeypatch.setattr(segedge.io, "atomic_path", full)
    code, out, err = run_cli_in_process(["export", "--model", "topformer-t", "--input-size", "128x128", "--out",
                                         str(folder)], capsys)
    monkeypatch.undo()
    assert code == 1 and out == ""
    assert_cli_error(err, f"error: no space left on device writing {folder};",
                     "free some space or choose another --out")
    assert_intact(tmp_path, before, folder)


@pytest.mark.slow
def test_disk_full_tmpfs_subprocess(good: Path, tmp_path: Path) -> None:
    """A real full disk: a tmpfs with room for the old export but not for the new one beside it."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    size_mb = (sum(p.stat().st_size for p in good.iterdir()) >> 20) + 2
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a small tmpfs here ({e}); the in-process ENOSPC cases cover the message")
    try:
        folder = copy_export(good, mnt / "exp")
        before = snapshot(mnt)
        proc = subprocess.run([sys.executable, "-m", "segedge", "export", "--model", "topformer-t", "--input-size",
                               "128x128", "--out", str(folder)], capture_output=True, text=True,
                              cwd=tmp_path, env=_cli_env(tmp_path), timeout=300)
        assert proc.returncode == 1, proc.stderr
        assert_cli_error(proc.stderr, f"error: no space left on device writing {folder};", "choose another --out")
        assert_intact(mnt, before, folder)
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True, timeout=30)


# -- CLI options through real subprocesses ------------------------------------------------------------------------
# Progress lines of rich's console.log on stderr: "[HH:MM:SS] message", or indented under the previous timestamp.
_PROGRESS = re.compile(r"^(\[\d\d:\d\d:\d\d\] | {11})\S")


def assert_cli_error(stderr: str, *phrases: str) -> str:
    """Exactly one `error:` line, the last one, every other line progress; no traceback; returns the line."""
    assert "Traceback" not in stderr, stderr
    lines = [ln.rstrip() for ln in stderr.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    errors = [ln for ln in lines if ln.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    stray = [ln for ln in lines[:-1] if not _PROGRESS.match(ln)]
    assert not stray, f"lines that are neither progress nor the error: {stray}"
    assert_one_line(errors[0], *phrases)
    return errors[0]


def _cli_env(caches: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout's segedge, wide progress lines, caches under `caches`."""
    env = {k: v for k, v in os.environ.items() if k not in ("SEGEDGE_DEBUG", "SEGEDGE_TEST_PAUSE")}
    env.update(PYTHONPATH=str(REPO), COLUMNS="200", XDG_CACHE_HOME=str(caches / "xdg-cache"),
               SEGEDGE_CACHE_DIR=str(caches / "segedge-cache"))
    return env


@dataclass(frozen=True)
class CliCase:
    """`segedge <args>` ({d}: the case's folder, which holds `exp`, a copy of the good export) → code + phrases."""

    id: str
    args: tuple[str, ...]
    code: int
    phrases: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    uses_export: bool = True  # --out is the copy of the good export: it must come out identical and loadable


EXPORT = ("export", "--model", "topformer-t", "--input-size", "128x128", "--out", "{d}/exp")


def _export(*extra: str, size: str = "128x128") -> tuple[str, ...]:
    return tuple(size if a == "128x128" else a for a in EXPORT) + extra


def _bench(*extra: str) -> tuple[str, ...]:
    return ("bench", "--model", "topformer-t", "--out", "{d}/bench-out", *extra)


CLI_CASES = [
    CliCase("model-typo", ("export", "--model", "topformr-t", "--out", "{d}/exp"), 2,
            ("unknown model 'topformr-t'", "did you mean 'topformer-t'")),
    CliCase("target-typo", _export("--target", "onnx,ort-int9"), 2, ("unknown export target 'ort-int9'",
                                                                     "did you mean 'ort-int8'")),
    CliCase("input-size-no-width", _export(size="384x"), 2, ("cannot parse input size '384x'", "HEIGHTxWIDTH")),
    CliCase("input-size-not-multiple", _export(size="100x100"), 2, ("multiples of 64", "height 64 or 128")),
    CliCase("input-size-8192", _export(size="8192x8192"), 2, ("input size 8192x8192 is larger than segedge allows",
                                                             "smaller --input-size")),
    CliCase("opset-11", _export("--opset", "11"), 2, ("opset 11 is not supported", "13..20")),
    CliCase("opset-not-a-number", _export("--opset", "seventeen"), 2, ("Invalid value for '--opset'",)),
    CliCase("io-yuv", _export("--io", "yuv"), 2, ("--io must be float or raw, got 'yuv'",)),
    CliCase("ort-scope-without-ort-target", _export("--ort-scope", "conv"), 2,
            ("--ort-scope applies to --target ort-int8 only",)),
    CliCase("calib-nowhere", _export("--target", "ort-int8", "--calib", "{d}/no-such-frames"), 2,
            ("calibration source", "does not exist")),
    CliCase("calib-folder-without-images", _export("--target", "ort-int8", "--calib", "{d}/notes"), 2,
            ("holds 1 file(s) but no images",), setup=_calib_inputs),
    CliCase("calib-video-that-is-not", _export("--target", "ort-int8", "--calib", "{d}/clip.mp4"), 2,
            ("cannot open video",), setup=_calib_inputs),
    CliCase("calib-count-0", _export("--target", "ort-int8", "--calib-count", "0"), 2,
            ("'--calib-count'", "greater than or equal to 1")),
    CliCase("val-missing", _export("--val", "{d}/no-such-val"), 2, ("--val folder not found",)),
    CliCase("out-is-a-file", _export()[:-1] + ("{d}/exp/manifest.json",), 2, ("exists and is not a folder",)),
    CliCase("bench-data-missing", _bench("--data", "{d}/no-such-data"), 2, ("data folder not found",),
            uses_export=False),
    CliCase("bench-data-option-missing", _bench(), 2, ("Missing option '--data'",), uses_export=False),
    CliCase("bench-target-typo", _bench("--data", "{d}/no-such-data", "--targets", "onnx,ort-int9"), 2,
            ("unknown export target 'ort-int9'", "did you mean 'ort-int8'"), uses_export=False),
    CliCase("bench-dataset-typo", _bench("--data", "{d}", "--dataset", "camvdi"), 2,
            ("unknown dataset 'camvdi'", "did you mean 'camvid'"), uses_export=False),
    CliCase("doctor-bad-flag", ("doctor", "--bogus"), 2, ("No such option: --bogus", "segedge doctor --help"),
            uses_export=False),
    CliCase("command-typo", ("exprot",), 2, ("No such command 'exprot'", "Did you mean 'export'"),
            uses_export=False),
]


@dataclass
class _CliRun:
    case: CliCase
    folder: Path
    before: dict[str, str] = field(default_factory=dict)
    future: Future | None = None


def _run_cli(run: _CliRun) -> subprocess.CompletedProcess:
    args = [a.replace("{d}", str(run.folder)) for a in run.case.args]
    return subprocess.run([sys.executable, "-m", "segedge", *args], capture_output=True, text=True,
                          cwd=run.folder, env=_cli_env(run.folder.parent), timeout=300)


def _cli_items(request: pytest.FixtureRequest) -> list[Any]:
    """The selected `test_cli` items of this module (`-k` and friends already applied)."""
    return [item for item in request.session.items if Path(str(item.fspath)) == Path(__file__)
            and getattr(item, "originalname", None) == "test_cli" and hasattr(item, "callspec")]


@pytest.fixture(scope="module")
def cli_runs(request: pytest.FixtureRequest, good: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Start every selected CLI case at once, two processes at a time, in the background: each one mostly loads
    torch before it fails, so they run while the in-process cases do. Each test then waits for its own."""
    wanted = {item.callspec.params["case"].id for item in _cli_items(request)}
    runs: dict[str, _CliRun] = {}
    base = tmp_path_factory.mktemp("cli")
    for case in CLI_CASES:
        if case.id not in wanted:
            continue
        run = runs[case.id] = _CliRun(case, base / case.id)
        run.folder.mkdir()
        if case.uses_export:
            copy_export(good, run.folder / "exp")
        if case.setup:
            case.setup(run.folder)
        run.before = snapshot(run.folder)
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="segedge-cli")
    for run in runs.values():
        run.future = pool.submit(_run_cli, run)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def _start_cli_early(request: pytest.FixtureRequest) -> None:
    """Start the CLI subprocesses before the first case of this module when any CLI case is selected."""
    if _cli_items(request):
        request.getfixturevalue("cli_runs")


# A sample runs in the fast suite (each case is a process that loads torch); every case runs with -m slow.
FAST_CLI = {"model-typo", "target-typo", "input-size-8192", "ort-scope-without-ort-target", "calib-nowhere",
            "out-is-a-file", "bench-target-typo", "doctor-bad-flag", "command-typo"}


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=() if c.id in FAST_CLI else (pytest.mark.slow,))
                                  for c in CLI_CASES])
def test_cli(cli_runs: dict[str, _CliRun], case: CliCase) -> None:
    run = cli_runs[case.id]
    proc = run.future.result(timeout=600)
    assert proc.returncode == case.code, proc.stderr
    assert proc.stdout == ""
    assert_cli_error(proc.stderr, *case.phrases)
    if case.uses_export:
        assert_intact(run.folder, run.before, run.folder / "exp")


def test_matrix_size() -> None:
    """The matrix keeps at least 60 cases (it is the regression net for the one-line rule)."""
    n = sum(len(x) for x in (CHECKPOINT_CASES, MANIFEST_CASES, ARTIFACT_CASES, FRAME_CASES, OVERLAY_CASES,
                             LOAD_CASES, CALIB_CASES, DATASET_CASES, CLI_CASES))
    assert n >= 60, n
