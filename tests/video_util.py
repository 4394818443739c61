"""Helpers shared by the tests/test_video_*.py modules: a tiny export (made once per session), synthetic clips and
image folders, test-double sources and a sleeping backend."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from segedge.errors import SegedgeError
from segedge.video.sources import BasicSource, SourceOptions

REPO = Path(__file__).resolve().parent.parent


def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TopFormer-T ONNX export at 128x128 (random-free demo weights), made once per test session."""
    out = tmp_path_factory.getbasetemp() / "video-tiny-export"
    if not (out / "manifest.json").is_file():
        from segedge.export import ExportOptions, export_model

        export_model(ExportOptions("topformer-t", targets="onnx", input_size=(128, 128), verify_frames=1, out=out))
    return out


def scene(i: int, h: int = 120, w: int = 160) -> np.ndarray:
    """Frame i of a moving scene (a red disc crossing a two-tone background)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = (200, 160, 90)
    img[h // 2:] = (70, 90, 80)
    cv2.circle(img, ((i * 5) % w, h // 2), max(6, h // 6), (30, 30, 220), -1)
    return img


def write_clip(path: Path, n: int, h: int = 120, w: int = 160, fps: float = 25.0) -> Path:
    """An n-frame mp4v clip written with cv2.VideoWriter."""
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert wr.isOpened()
    for i in range(n):
        wr.write(scene(i, h, w))
    wr.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """(frames decoded, (H, W)) of a video; (0, (0, 0)) when it cannot be opened."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return 0, (0, 0)
    n, size = 0, (0, 0)
    while True:
        ok, img = cap.read()
        if not ok:
            break
        n, size = n + 1, img.shape[:2]
    cap.release()
    return n, size


class SlowBackend:
    """Wraps a backend and sleeps before each run: a model slower than the source."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.run(x)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Script:
    """What a FlakySource does, read by read and open by open, shared by every connection the factory makes.

    reads: list of "frame" | "none" (read fails: returns None) | "raise" | "hang" (blocks until release()) |
    "bad" (a malformed frame); after the list: `after` ("frame" or "none"). opens: how many opens fail first.
    """

    def __init__(self, reads: list[str], after: str = "frame", failing_opens: int = 0, first_open_fails: bool = False):
        self.reads, self.after = list(reads), after
        self.failing_opens, self.first_open_fails = failing_opens, first_open_fails
        self.opens = 0
        self.hang = threading.Event()
        self.lock = threading.Lock()
        self.n = 0

    def next_read(self) -> str:
        with self.lock:
            return self.reads.pop(0) if self.reads else self.after

    def release(self) -> None:
        self.hang.set()


class FlakySource(BasicSource):
    """A live test double that follows a Script."""

    kind = "test camera"
    live = True
    pace_in_software = False

    def __init__(self, script: Script) -> None:
        super().__init__("test://camera", SourceOptions())
        self.script = script

    def _open(self) -> None:
        s = self.script
        s.opens += 1
        if (s.first_open_fails and s.opens == 1) or (s.opens > 1 and s.failing_opens > 0):
            if s.opens > 1:
                s.failing_opens -= 1
            raise SegedgeError("test camera: cannot open (scripted)")
        self._native_size = (48, 64)

    def _grab(self) -> Any:
        what = self.script.next_read()
        if what == "none":
            return None
        if what == "raise":
            raise RuntimeError("scripted read error")
        if what == "hang":
            self.script.hang.wait(30)
            return None
        if what == "bad":
            return np.zeros((4, 4), np.float32), None
        with self.script.lock:
            self.script.n += 1
            k = self.script.n
        return scene(k, 48, 64), None


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    """`python -m segedge ARGS` in a real subprocess."""
    import os

    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "segedge", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)
