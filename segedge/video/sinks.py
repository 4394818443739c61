"""Where a pipeline's results go, by URI: a video file, a folder of images, one image, a window, or nowhere.

| URI | sink |
|---|---|
| `out.mp4` (`.mp4 .m4v .mov .mkv .avi`) | video (OpenCV VideoWriter; mp4v, MJPG for .avi), at the source's frame rate, written under a temporary name and renamed when closed, so a failed or killed run never leaves a file that looks complete |
| `out/` (a folder, existing or not, or a path without extension) | one PNG per frame: the view (overlay / mask / side) or, with view `labels`, uint8 label maps at the frame's size; image inputs keep their file names (`a.jpg` → `a.png`), others are numbered (`000123.png`) |
| `out.png` (`.png .jpg .jpeg .bmp .tif .tiff .webp`) | one image: the input must be one frame |
| `display://` (`display://TITLE`) | an OpenCV window (q or Esc stops); skipped with a note where there is no display |
| `null://` | nothing (measure only) |

`check()` runs before the model loads (a folder we cannot write to is a one-line error then, not after a minute of
work); the file is opened on the first frame, when the size is known. Only numpy, OpenCV and the standard library.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import SegedgeError
from ..io import ensure_writable_dir

VIDEO_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}
IMAGE_OUT_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_FPS = 25.0
MAX_GAP_S = 1.0  # live video sinks repeat frames to keep real time across gaps up to this long


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _probe_dir(folder: Path, what: str) -> None:
    """Create `folder` if needed and check that files can be created in it (one-line error otherwise)."""
    ensure_writable_dir(folder, f"{what} to {folder}")


class Sink:
    """Receives each Result (see segedge.video.pipeline) in order; `close()` finishes the output and returns a line
    saying what was written; `abort()` removes anything incomplete. `write` returns False to ask the pipeline to stop
    (a display window closed)."""

    uri: str = ""
    needs_labels = False  # True: writes result.labels; False: writes result.view (a BGR image)

    def check(self) -> None:
        """Fail early (before the model loads) when this output cannot be written."""

    def open(self, fps: float | None, live: bool) -> None:
        """The pipeline is starting: the source's frame rate (None when unknown) and whether it is live."""

    def write(self, result: Any) -> bool:
        raise NotImplementedError

    def close(self) -> str | None:
        return None

    def abort(self) -> None:
        """Drop what is incomplete (a failed run); idempotent."""

    def describe(self) -> str:
        return self.uri


class NullSink(Sink):
    """Discards every frame."""

    def __init__(self, uri: str = "null://") -> None:
        self.uri = uri

    def write(self, result: Any) -> bool:
        return True

    def describe(self) -> str:
        return "null:// (results discarded)"


class VideoSink(Sink):
    """A video file, written under a temporary name beside it and renamed into place by `close()`."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None, fourcc: str | None = None) -> None:
        self.path = Path(path)
        self.uri = str(path)
        ext = self.path.suffix.lower()
        if ext not in VIDEO_FOURCC:
            raise SegedgeError(f"cannot write video {self.path.name}: use one of {', '.join(VIDEO_FOURCC)}")
        if fourcc is not None and (len(fourcc) != 4 or not fourcc.isascii()):
            raise SegedgeError(f"fourcc must be 4 characters (e.g. mp4v, MJPG, avc1), got {fourcc!r}")
        if fps is not None and not 0 < float(fps) <= 1000:
            raise SegedgeError(f"output fps must be above 0 and at most 1000, got {fps!r}")
        self.fourcc = fourcc or VIDEO_FOURCC[ext]
        self.fps = float(fps) if fps else None
        self.live = False
        self._writer: Any = None
        self._tmp: Path | None = None
        self._size: tuple[int, int] | None = None  # (W, H)
        self.frames = 0
        self._t_first: float | None = None

    def check(self) -> None:
        if self.path.is_dir():
            raise SegedgeError(f"output {self.path} is a folder; name a video file (e.g. {self.path / 'out.mp4'}) "
                               "or end the path with / for one image per frame")
        _probe_dir(self.path.parent if str(self.path.parent) else Path("."), "the video")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise SegedgeError(f"cannot replace {self.path}: it is read-only")

    def open(self, fps: float | None, live: bool) -> None:
        if self.fps is None:
            self.fps = fps if fps and 1 <= fps <= 240 else DEFAULT_FPS
        self.live = live

    def _start(self, img: np.ndarray) -> None:
        h, w = img.shape[:2]
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".partial{self.path.suffix}",
                                   dir=self.path.parent if str(self.path.parent) else ".")
        os.close(fd)
        self._tmp = Path(tmp)
        writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), float(self.fps or DEFAULT_FPS),
                                 (w, h))
        if not writer.isOpened():
            self._tmp.unlink(missing_ok=True)
            self._tmp = None
            raise SegedgeError(f"OpenCV cannot encode {self.fourcc} into {self.path.suffix} here; try another "
                               "extension (.avi writes MJPG) or fourcc")
        self._writer, self._size = writer, (w, h)

    def write(self, result: Any) -> bool:
        img = result.view
        if img is None or img.ndim != 3:
            raise SegedgeError(f"{self.path.name}: a video needs an image view (overlay, mask, side), not raw labels")
        if self._writer is None:
            self._start(img)
        w, h = self._size  # type: ignore[misc]
        if img.shape[1] != w or img.shape[0] != h:  # images of several sizes: fit them to the first
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        repeat = 1
        if self.live and self.fps:
            # A live source loses frames (drop policy, camera): repeat this one so the video keeps real time.
            if self._t_first is None:
                self._t_first = result.t_capture
            due = int(round((result.t_capture - self._t_first) * self.fps)) + 1
            repeat = max(1, min(due - self.frames, int(MAX_GAP_S * self.fps)))
        for _ in range(repeat):
            self._writer.write(img)
        self.frames += repeat
        return True

    def close(self) -> str | None:
        writer, tmp = self._writer, self._tmp
        self._writer = self._tmp = None
        if writer is None or tmp is None:
            return f"{self.path}: not written (no frames)"
        writer.release()
        try:
            if tmp.stat().st_size == 0:
                raise SegedgeError(f"{self.path}: the encoder wrote nothing (disk full?); nothing kept")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        w, h = self._size  # type: ignore[misc]
        return f"{self.path}: {self.frames} frames, {w}x{h} @ {self.fps:g} fps ({self.fourcc})"

    def abort(self) -> None:
        writer, tmp = self._writer, self._tmp
        self._writer = self._tmp = None
        if writer is not None:
            writer.release()
        if tmp is not None:
            tmp.unlink(missing_ok=True)

    def describe(self) -> str:
        rate = f"{self.fps:g} fps" if self.fps else "the source's fps"
        live = ", frames repeated to keep real time" if self.live else ""
        return f"video {self.path} ({self.fourcc}, {rate}{live}; written under a temporary name until closed)"


def _write_image_atomic(path: Path, img: np.ndarray, params: list[int] | None = None) -> None:
    ok, buf = cv2.imencode(path.suffix.lower(), img, params or [])
    if not ok:
        raise SegedgeError(f"OpenCV cannot encode {path.suffix} images")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.tobytes())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png_params() -> list[int]:
    return [cv2.IMWRITE_PNG_COMPRESSION, 1]  # fast; PNG is lossless at any level


class FolderSink(Sink):
    """One PNG per frame in a folder: image inputs keep their names (a.jpg → a.png), other inputs are numbered by
    frame index. Each file is written under a temporary name and renamed, so none is ever half-written."""

    def __init__(self, folder: str | os.PathLike, labels: bool = False) -> None:
        self.folder = Path(folder)
        self.uri = str(folder)
        self.needs_labels = labels
        self.frames = 0

    def check(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise SegedgeError(f"output {self.folder} exists and is not a folder; choose another --output")
        _probe_dir(self.folder, "images")

    def _name(self, result: Any) -> Path:
        if result.name:
            rel = Path(result.name).with_suffix(".png")
            if rel.is_absolute() or ".." in rel.parts:
                rel = Path(rel.name)
            return self.folder / rel
        return self.folder / f"{result.index:06d}.png"

    def write(self, result: Any) -> bool:
        img = result.labels if self.needs_labels else result.view
        path = self._name(result)
        if path.parent != self.folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        _write_image_atomic(path, img, _png_params())
        self.frames += 1
        return True

    def close(self) -> str | None:
        what = "label maps (uint8 PNG)" if self.needs_labels else "images"
        return f"{self.folder}/: {self.frames} {what}"

    def describe(self) -> str:
        what = "uint8 label PNGs at each frame's size" if self.needs_labels else "one PNG per frame"
        return f"folder {self.folder}/ ({what}; image inputs keep their names)"


class ImageSink(Sink):
    """One image file: the input must hold one frame (a single image, or --max-frames 1)."""

    def __init__(self, path: str | os.PathLike, labels: bool = False) -> None:
        self.path = Path(path)
        self.uri = str(path)
        self.needs_labels = labels
        self.frames = 0
        if labels and self.path.suffix.lower() not in (".png", ".tif", ".tiff", ".bmp"):
            raise SegedgeError(f"label maps need a lossless format: write {self.path.with_suffix('.png').name}, "
                               f"not {self.path.name}")

    def check(self) -> None:
        if self.path.is_dir():
            raise SegedgeError(f"output {self.path} is a folder; end it with / to write one image per frame")
        _probe_dir(self.path.parent if str(self.path.parent) else Path("."), "the image")

    def write(self, result: Any) -> bool:
        if self.frames:
            raise SegedgeError(f"{self.path.name} takes one frame but the input has more; write to a folder "
                               f"({self.path.with_suffix('')}/) or a video, or pass --max-frames 1")
        img = result.labels if self.needs_labels else result.view
        _write_image_atomic(self.path, img, _png_params() if self.path.suffix.lower() == ".png" else None)
        self.frames = 1
        return True

    def close(self) -> str | None:
        return f"{self.path}" if self.frames else f"{self.path}: not written (no frames)"


def display_available() -> str | None:
    """None when OpenCV can open a window here, else why not."""
    info = cv2.getBuildInformation()
    m = re.search(r"GUI:\s*(\S+)", info)
    if m and m.group(1).upper() == "NONE":
        return "this OpenCV has no GUI (opencv-python-headless); install opencv-python for display://"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    return None


class DisplaySink(Sink):
    """An OpenCV window; q or Esc (or closing the window) stops the pipeline. All calls stay on one thread."""

    def __init__(self, title: str = "segedge") -> None:
        self.title = title or "segedge"
        self.uri = f"display://{title}"
        self.why_not = display_available()
        self._shown = False
        self.frames = 0

    def write(self, result: Any) -> bool:
        if self.why_not:
            return True
        img = result.view
        cv2.imshow(self.title, img)
        self._shown = True
        self.frames += 1
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        try:
            if cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
                return False
        except cv2.error:
            return False
        return True

    def close(self) -> str | None:
        if self._shown:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
        return None if self.why_not else f"display: {self.frames} frames shown"

    def abort(self) -> None:
        self.close()

    def describe(self) -> str:
        if self.why_not:
            return f"display:// skipped: {self.why_not}"
        return f"window '{self.title}' (q or Esc stops)"


def open_sink(uri: str | os.PathLike, view: str = "overlay", fps: float | None = None,
              fourcc: str | None = None) -> Sink:
    """A sink for `uri` (see the module docstring), checked but not yet written. `view` is the pipeline's view:
    'labels' makes folder and image sinks write uint8 label maps, and is refused for videos and windows."""
    if isinstance(uri, Sink):
        return uri
    text = os.fspath(uri).strip() if isinstance(uri, (str, os.PathLike)) else ""
    if not text:
        raise SegedgeError(f"output must be a file, a folder or a URI (display://, null://), got {uri!r}")
    labels = view == "labels"
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", text)
    if m:
        scheme, rest = m.group(1).lower(), m.group(2)
        if scheme == "null":
            return NullSink(text)
        if scheme == "display":
            if labels:
                raise SegedgeError("display:// shows images: use --view mask, overlay or side (labels are for "
                                   "folders of PNGs)")
            return DisplaySink(rest or "segedge")
        if scheme == "file":
            text = rest
        else:
            raise SegedgeError(f"unsupported output scheme '{scheme}://': use a video file ({', '.join(VIDEO_FOURCC)}),"
                               " a folder (ending in /), an image file, display:// or null://")
    p = Path(text).expanduser()
    ext = p.suffix.lower()
    if text.endswith(("/", os.sep)) or p.is_dir() or not ext:
        return FolderSink(p, labels)
    if ext in VIDEO_FOURCC:
        if labels:
            raise SegedgeError(f"--view labels writes uint8 label PNGs, which a video would blur: give a folder "
                               f"(e.g. {p.with_suffix('')}/) or use --view mask for a video")
        return VideoSink(p, fps, fourcc)
    if ext in IMAGE_OUT_EXTS:
        return ImageSink(p, labels)
    raise SegedgeError(f"cannot tell what to write for output {text}: use a video ({', '.join(VIDEO_FOURCC)}), an "
                       f"image ({', '.join(IMAGE_OUT_EXTS)}), a folder ending in /, display:// or null://")


__all__ = ["DisplaySink", "FolderSink", "ImageSink", "NullSink", "Sink", "VideoSink", "display_available",
           "open_sink"]
