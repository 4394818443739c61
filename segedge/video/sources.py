"""Frame sources by URI: cameras, Jetson CSI cameras, network streams, GStreamer pipelines, video files, images.

    src = open_source("clip.mp4")                # or 0, "v4l2:///dev/video0", "csi://0", "rtsp://…", a folder, …
    with src:                                    # open() prints nothing; describe() says what was opened
        while (frame := src.read()) is not None:  # Frame(index, image, t_capture, name, decode_ms)
            ...

| URI | source | live |
|---|---|---|
| `0`, `1`, `/dev/video0`, `v4l2:///dev/video0`, `v4l2://0` | OpenCV camera (V4L2 on Linux) | yes |
| `csi://0` | Jetson CSI camera: `nvarguscamerasrc … ! appsink` through OpenCV's GStreamer backend | yes |
| `rtsp://…`, `rtsps://`, `rtmp://`, `srt://`, `udp://`, `tcp://`, `http(s)://` | network stream (FFmpeg, or GStreamer with `backend="gstreamer"`), low-latency options | yes |
| `gst://PIPELINE` or any string with ` ! ` | a GStreamer pipeline (an appsink is appended when missing) | yes |
| `synthetic://?width=480&height=360&fps=30&frames=300` | generated moving scene, paced like a camera | yes (fps > 0) |
| `clip.mp4`, `file:///…/clip.mkv` | video file (FFmpeg) | no |
| `frames/`, `img.jpg`, `'frames/*.png'` | image folder (natural order), single image, glob | no |

Live sources are wrapped in a `ReconnectingSource`: a read that fails, raises or takes longer than `read_timeout`
reconnects with exponential back-off and gives up after `reconnects` attempts in a row without a good frame
(`SourceLost`). Frames that cannot be decoded (an unreadable image file, an empty or malformed array) are skipped
and counted in `source.events["corrupt"]`.

Only numpy, OpenCV and the standard library are imported here: this runs on devices without torch.
"""

from __future__ import annotations

import glob as _glob
import math
import os
import queue
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from ..errors import SegedgeError, first_line
from ..io import as_bgr, read_image_file

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".jp2")
VIDEO_EXTS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".wmv",
              ".flv", ".3gp", ".ogv", ".gif", ".h264", ".264", ".h265", ".265", ".hevc", ".mjpeg", ".mjpg", ".y4m")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "http", "https")
SCHEMES = ("v4l2", "csi", "gst", "synthetic", "file") + STREAM_SCHEMES
FLIPS = {"none": None, "h": 1, "horizontal": 1, "v": 0, "vertical": 0, "both": -1, "180": -1}
BACKENDS = ("auto", "ffmpeg", "gstreamer")
MAX_CORRUPT_IN_A_ROW = 100


class SourceLost(SegedgeError):
    """A live source stopped delivering frames and reconnecting did not bring it back."""


class ReadTimeout(Exception):
    """A read took longer than the source's read timeout (a stalled stream)."""


@dataclass
class Frame:
    """One frame from a source."""

    index: int  # position in the source's stream, 0-based (dropped frames keep their numbers)
    image: np.ndarray  # H×W×3 uint8 BGR
    t_capture: float  # time.perf_counter() when the frame was captured (read returned; sensor time for synthetic)
    name: str | None = None  # image sources: the file's path relative to the input (outputs keep its stem)
    decode_ms: float = 0.0  # time spent reading and decoding it (a live camera's wait for the frame included)


@dataclass(frozen=True)
class SourceOptions:
    """What `open_source` accepts besides the URI (every field optional)."""

    width: int | None = None  # cameras: asked of the driver; other sources: frames resized to it
    height: int | None = None
    fps: float | None = None  # cameras: asked of the driver; files and images: read at this rate (real time)
    loop: bool = False  # files and images: start again at the end
    flip: str = "none"  # none | h | v | both (180°)
    backend: str = "auto"  # network streams: auto (FFmpeg when OpenCV has it) | ffmpeg | gstreamer
    read_timeout: float | None = None  # live sources: seconds without a frame before reconnecting (default 5)
    open_timeout: float = 10.0  # network streams: seconds to connect
    reconnects: int = 5  # live sources: failed attempts in a row before giving up
    backoff: tuple[float, float] = (0.5, 8.0)  # first and longest wait between reconnect attempts, seconds
    rtsp_transport: str = "tcp"  # tcp | udp (FFmpeg)

    def checked(self) -> "SourceOptions":
        """These options, validated (one-line errors)."""
        for name in ("width", "height"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > 16384):
                raise SegedgeError(f"{name} must be a whole number of pixels from 1 to 16384, got {v!r}")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, (int, float))
                                     or not 0 < float(self.fps) <= 1000):
            raise SegedgeError(f"fps must be a number above 0 and at most 1000, got {self.fps!r}")
        if str(self.flip).lower() not in FLIPS:
            raise SegedgeError(f"flip must be one of none, h, v, both, got {self.flip!r}")
        if str(self.backend).lower() not in BACKENDS:
            raise SegedgeError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.read_timeout is not None and not self.read_timeout > 0:
            raise SegedgeError(f"read timeout must be above 0 seconds, got {self.read_timeout!r}")
        if not self.open_timeout > 0:
            raise SegedgeError(f"open timeout must be above 0 seconds, got {self.open_timeout!r}")
        if isinstance(self.reconnects, bool) or not isinstance(self.reconnects, int) or self.reconnects < 0:
            raise SegedgeError(f"reconnects must be a whole number ≥ 0, got {self.reconnects!r}")
        if len(self.backoff) != 2 or not 0 <= self.backoff[0] <= self.backoff[1]:
            raise SegedgeError(f"backoff must be (first, longest) seconds with 0 ≤ first ≤ longest, got "
                               f"{self.backoff!r}")
        if str(self.rtsp_transport).lower() not in ("tcp", "udp"):
            raise SegedgeError(f"rtsp transport must be tcp or udp, got {self.rtsp_transport!r}")
        return replace(self, flip=str(self.flip).lower(), backend=str(self.backend).lower(),
                       rtsp_transport=str(self.rtsp_transport).lower())


def _new_events() -> dict[str, int]:
    return {"corrupt": 0, "read_errors": 0, "stalls": 0, "reconnects": 0, "missed": 0}


class Source:
    """A stream of BGR frames. `open()`, then `read()` until it returns None (end of stream), then `close()`.

    `live` sources (cameras, streams) default to the *latest frame* drop policy, others to *every frame*.
    `events` counts what went wrong on the way (corrupt frames skipped, read errors, stalls, reconnects, frames the
    source itself missed). `interrupt()` may be called from any thread to make a blocked `read` return None soon.
    """

    kind: str = "source"
    live: bool = False

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.events: dict[str, int] = _new_events()
        self.last_problem: str | None = None  # the latest corrupt frame / read error, in one line

    def open(self) -> None:
        """Connect / open the file; raises a one-line SegedgeError when that fails."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end of the stream (or once interrupted)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device / file. Idempotent."""

    def interrupt(self) -> None:
        """Ask a blocked or retrying `read` to give up soon (thread-safe)."""

    @property
    def fps(self) -> float | None:
        """Frames per second as the source reports it (None when unknown)."""
        return None

    @property
    def size(self) -> tuple[int, int] | None:
        """(H, W) of the frames once open (None when unknown or varying)."""
        return None

    @property
    def frame_count(self) -> int | None:
        """How many frames a file source holds (None for live sources and when unknown)."""
        return None

    def describe(self) -> str:
        """One line saying what is open: kind, URI, size, rate and the options in force."""
        return f"{self.kind} {self.uri}"

    def __enter__(self) -> "Source":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        while (frame := self.read()) is not None:
            yield frame


def _natural_key(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _check_image(img: Any) -> np.ndarray | None:
    """The frame as H×W×3 uint8 BGR (grayscale and BGRA converted), or None when it is not a usable image."""
    return as_bgr(img)


class BasicSource(Source):
    """A source that reads frames itself: subclasses implement `_open`, `_grab` and `_close`.

    `_grab()` returns None at the end of the stream, else (image, name) where image None (or malformed) is a corrupt
    frame: skipped, counted, and fatal only after MAX_CORRUPT_IN_A_ROW in a row. This class applies the options
    every source shares: resize to width/height (unless the device delivered that size), flip, real-time pacing at
    `fps` for file sources, and the frame index / timestamps.
    """

    resize_in_software = True  # cameras ask the driver for width/height instead
    pace_in_software = True  # cameras and live streams deliver at their own rate

    def __init__(self, uri: str, options: SourceOptions | None = None) -> None:
        super().__init__(uri)
        self.options = (options or SourceOptions()).checked()
        self._index = 0
        self._t0: float | None = None
        self._paced = 0
        self._opened = False
        self._stop = threading.Event()
        self._native_size: tuple[int, int] | None = None
        self._native_fps: float | None = None

    # -- subclass hooks -----------------------------------------------------------------------------------------
    def _open(self) -> None:
        raise NotImplementedError

    def _grab(self) -> tuple[np.ndarray | None, str | None] | None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    # -- Source -------------------------------------------------------------------------------------------------
    def open(self) -> None:
        if self._opened:
            return
        self._open()
        self._opened = True

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._close()

    def interrupt(self) -> None:
        self._stop.set()

    @property
    def fps(self) -> float | None:
        if self.pace_in_software and self.options.fps:
            return float(self.options.fps)
        return self._native_fps

    @property
    def size(self) -> tuple[int, int] | None:
        o = self.options
        if self.resize_in_software and o.width and o.height:
            return (o.height, o.width)
        return self._native_size

    def _pace(self) -> None:
        """Files and images read at options.fps: wait until this frame's time (real-time playback)."""
        if not (self.pace_in_software and self.options.fps):
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self._paced / float(self.options.fps)
        if due > now:
            self._stop.wait(due - now)
        elif now - due > 1.0:  # fell behind by more than a second (stopped in a debugger, say): restart the clock
            self._t0, self._paced = now, 0
        self._paced += 1

    def _shape(self, img: np.ndarray) -> np.ndarray:
        o = self.options
        if self.resize_in_software and (o.width or o.height):
            h, w = img.shape[:2]
            tw = o.width or max(1, round(w * o.height / h))
            th = o.height or max(1, round(h * o.width / w))
            if (th, tw) != (h, w):
                img = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR)
        code = FLIPS[o.flip]
        if code is not None:
            img = cv2.flip(img, code)
        return img

    def read(self) -> Frame | None:
        if not self._opened:
            raise SegedgeError(f"{self.kind} {self.uri} is not open; call open() first (or use `with source:`)")
        in_a_row = 0
        while not self._stop.is_set():
            self._pace()
            t = time.perf_counter()
            got = self._grab()
            if got is None:
                return None
            raw, name = got
            img = _check_image(raw)
            if img is None:
                self.events["corrupt"] += 1
                what = "unreadable" if raw is None else (f"malformed ({raw.dtype} {raw.shape})"
                                                         if isinstance(raw, np.ndarray) else type(raw).__name__)
                self.last_problem = f"frame {self._index}{f' ({name})' if name else ''} {what}: skipped"
                self._index += 1
                in_a_row += 1
                if in_a_row >= MAX_CORRUPT_IN_A_ROW:
                    raise SegedgeError(f"{self.uri}: {in_a_row} corrupt frames in a row (last: {self.last_problem}); "
                                       "the input is not a readable video / image stream")
                continue
            img = self._shape(img)
            now = time.perf_counter()
            frame = Frame(self._index, img, now, name, (now - t) * 1e3)
            self._index += 1
            return frame
        return None


# -- OpenCV VideoCapture sources ----------------------------------------------------------------------------------
def has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER))
    except Exception:  # very old OpenCV: read the build information
        return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


def has_ffmpeg() -> bool:
    """Whether this OpenCV build can decode through FFmpeg."""
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG))
    except Exception:
        return bool(re.search(r"FFMPEG:\s+YES", cv2.getBuildInformation()))


def _no_gstreamer(what: str) -> SegedgeError:
    return SegedgeError(
        f"{what} needs OpenCV built with GStreamer, and this OpenCV ({cv2.__version__}) has none (pip's "
        "opencv-python wheels never do); on a Jetson use JetPack's OpenCV (`sudo apt install python3-opencv`, then "
        "a venv with --system-site-packages and `pip uninstall opencv-python-headless`), elsewhere build OpenCV "
        "with -DWITH_GSTREAMER=ON")


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: float = 30,
                 flip_method: int = 0) -> str:
    """The GStreamer pipeline that reads a Jetson CSI camera (nvarguscamerasrc) into BGR frames for OpenCV."""
    rate = f"{int(round(fps))}/1" if float(fps).is_integer() else f"{int(round(fps * 1000))}/1000"
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){rate}, "
            f"format=(string)NV12 ! nvvidconv flip-method={flip_method} ! "
            f"video/x-raw, width=(int){width}, height=(int){height}, format=(string)BGRx ! videoconvert ! "
            "video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")


def _with_appsink(pipeline: str) -> str:
    if re.search(r"\bappsink\b", pipeline):
        return pipeline
    return pipeline.rstrip().rstrip("!").rstrip() + \
        " ! videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false"


def _rtsp_gstreamer(url: str, latency_ms: int = 0) -> str:
    return (f"rtspsrc location={url} latency={latency_ms} drop-on-latency=true ! decodebin ! videoconvert ! "
            "video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")


def _redact(uri: str) -> str:
    """The URI with any password replaced by ***, for messages."""
    return re.sub(r"(://[^:/@\s]+:)[^@/\s]+@", r"\1***@", uri)


class CaptureSource(BasicSource):
    """Frames from an OpenCV VideoCapture: a camera, a network stream, a GStreamer pipeline or a video file."""

    def __init__(self, uri: str, target: Any, api: int, kind: str, live: bool, options: SourceOptions | None = None,
                 params: list[int] | None = None, env: dict[str, str] | None = None,
                 pipeline_text: str | None = None) -> None:
        super().__init__(uri, options)
        self.kind, self.live = kind, live
        self._target, self._api, self._params, self._env = target, api, list(params or []), dict(env or {})
        self.pipeline_text = pipeline_text
        self._cap: Any = None
        self._pending: np.ndarray | None = None
        self._count: int | None = None
        self._camera = kind == "camera"
        self.resize_in_software = not self._camera and kind != "CSI camera"
        self.pace_in_software = not live
        self._granted: str = ""

    def _fail_open(self) -> SegedgeError:
        o, shown = self.options, _redact(self.uri)
        if self._camera:
            dev = self._target if isinstance(self._target, str) else f"index {self._target}"
            node = self._target if isinstance(self._target, str) else f"/dev/video{self._target}"
            hint = (f"{node} does not exist: list cameras with `v4l2-ctl --list-devices` (or `ls /dev/video*`)"
                    if sys.platform.startswith("linux") and not os.path.exists(node) else
                    "is it connected, and not held by another program? (`v4l2-ctl --list-devices`, `fuser "
                    "/dev/video*`)" if sys.platform.startswith("linux") else "is it connected and not in use?")
            return SegedgeError(f"cannot open camera {dev}: {hint}")
        if self.kind == "CSI camera":
            return SegedgeError(f"cannot open {shown}: nvarguscamerasrc did not start (is the sensor connected and "
                                f"nvargus-daemon running? `sudo systemctl restart nvargus-daemon`); pipeline: "
                                f"{self.pipeline_text}")
        if self.kind == "GStreamer pipeline":
            return SegedgeError(f"the GStreamer pipeline did not start; test it with `gst-launch-1.0 "
                                f"{self.pipeline_text.replace(' appsink', ' fakesink')}`")
        if self.kind == "stream":
            return SegedgeError(f"cannot connect to {shown} within {o.open_timeout:g} s: check the address, port, "
                                "path and credentials, and that the stream is up (try `ffprobe URL`)"
                                + ("; for RTSP also try --rtsp-transport udp" if shown.startswith("rtsp") else ""))
        return SegedgeError(f"cannot decode {self.uri}: not a video file OpenCV's FFmpeg can read")

    def _open_cap(self) -> Any:
        old = {k: os.environ.get(k) for k in self._env}
        os.environ.update(self._env)  # FFmpeg capture options are read from the environment when opening
        try:
            if self._params:
                return cv2.VideoCapture(self._target, self._api, self._params)
            return cv2.VideoCapture(self._target, self._api)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _open(self) -> None:
        cap = self._open_cap()
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise self._fail_open()
        o = self.options
        if self._camera:
            if o.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, o.width)
            if o.height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, o.height)
            if o.fps:
                cap.set(cv2.CAP_PROP_FPS, float(o.fps))
        ok, img = cap.read()
        if not ok or img is None:
            cap.release()
            if self.kind == "video file":
                raise SegedgeError(f"{self.uri} opened but holds no decodable frame (truncated, empty, or a codec "
                                   "this OpenCV's FFmpeg lacks)")
            raise self._fail_open()
        self._cap, self._pending = cap, img
        h, w = img.shape[:2]
        self._native_size = (h, w)
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._native_fps = float(fps) if fps and math.isfinite(fps) and 0.5 <= fps <= 1000 else None
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if self.kind == "video file" else 0
        self._count = n if n > 0 else None
        if self._camera and (o.width or o.height or o.fps):
            asked = f"{o.width or w}x{o.height or h}" + (f" @ {o.fps:g}" if o.fps else "")
            got = f"{w}x{h}" + (f" @ {self._native_fps:g}" if self._native_fps else "")
            if asked != got:
                self._granted = f" (asked {asked}, the camera gave {got})"

    def _grab(self) -> tuple[np.ndarray | None, str | None] | None:
        if self._pending is not None:
            img, self._pending = self._pending, None
            return img, None
        ok, img = self._cap.read()
        if ok:
            return img, None
        if self.kind == "video file" and self._count is not None:
            # A failed read well before the end is a frame FFmpeg could not decode: try the next ones; only when one
            # of them decodes were the failures corrupt frames (frame counts of some containers are approximate).
            fails = 1
            while fails <= 3 and int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0) < self._count - 1:
                ok, img = self._cap.read()
                if ok:
                    self.events["corrupt"] += fails
                    self.last_problem = f"{fails} undecodable frame{'s' if fails > 1 else ''} before frame " \
                                        f"{self._index}: skipped"
                    self._index += fails
                    return img, None
                fails += 1
        if self.options.loop and self.kind == "video file" and not self._stop.is_set():
            self._cap.release()
            self._cap = self._open_cap()
            ok, img = self._cap.read() if self._cap.isOpened() else (False, None)
            return (img, None) if ok else None
        return None

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    @property
    def frame_count(self) -> int | None:
        return None if self.live or self.options.loop else self._count

    def describe(self) -> str:
        o = self.options
        parts = []
        if self.size:
            parts.append(f"{self.size[1]}x{self.size[0]}")
        if self.fps:
            parts.append(f"{self.fps:.4g} fps" + (" (paced)" if self.pace_in_software and o.fps else ""))
        if self.frame_count:
            parts.append(f"{self.frame_count} frames")
        opts = [f"flip {o.flip}"] if o.flip != "none" else []
        if o.loop:
            opts.append("loop")
        desc = f"{self.kind} {_redact(self.uri)}: {', '.join(parts) or 'size unknown'}{self._granted}"
        return desc + (f" ({', '.join(opts)})" if opts else "")


# -- images --------------------------------------------------------------------------------------------------------
def _imread(path: Path) -> np.ndarray | None:
    """The image file as BGR, or None when it is not a decodable image (segedge.io.read_image_file)."""
    return read_image_file(path)


class ImageSource(BasicSource):
    """Frames from image files: a folder (its images in natural order), one image, or a glob pattern.

    Each frame carries `name`, the file's path relative to the folder (or the glob's fixed part), so outputs keep it.
    """

    kind = "images"

    def __init__(self, uri: str, files: list[Path], base: Path, options: SourceOptions | None = None) -> None:
        super().__init__(uri, options)
        self.files, self.base = files, base
        self.names = [str(f.relative_to(base)) if f.is_relative_to(base) else f.name for f in files]
        stems: dict[str, str] = {}
        for n in self.names:
            key = str(Path(n).with_suffix(""))
            if key in stems:
                raise SegedgeError(f"{stems[key]} and {n} in {uri} would give outputs of one name ({key}.png); "
                                   f"select one kind with a glob, e.g. '{Path(uri) / ('*' + Path(n).suffix)}'")
            stems[key] = n
        self._pos = 0

    def _open(self) -> None:
        self._pos = 0
        first = _imread(self.files[0])
        if first is not None:
            self._native_size = first.shape[:2]

    def _grab(self) -> tuple[np.ndarray | None, str | None] | None:
        if self._pos >= len(self.files):
            if not self.options.loop or self._stop.is_set():
                return None
            self._pos = 0
        i = self._pos
        self._pos += 1
        return _imread(self.files[i]), self.names[i]

    @property
    def size(self) -> tuple[int, int] | None:
        return super().size if self.options.width and self.options.height else None  # images may vary in size

    @property
    def frame_count(self) -> int | None:
        return None if self.options.loop else len(self.files)

    def describe(self) -> str:
        o = self.options
        first = self._native_size
        extra = [f"first {first[1]}x{first[0]}"] if first else []
        if o.width or o.height:
            extra.append(f"resized to {o.width or 'auto'}x{o.height or 'auto'}")
        if o.fps:
            extra.append(f"paced at {o.fps:g} fps")
        if o.flip != "none":
            extra.append(f"flip {o.flip}")
        if o.loop:
            extra.append("loop")
        return f"images {self.uri}: {len(self.files)} file{'s' if len(self.files) != 1 else ''}" + \
            (f" ({', '.join(extra)})" if extra else "")


# -- synthetic -----------------------------------------------------------------------------------------------------
class SyntheticSource(BasicSource):
    """A generated street-like scene that moves, delivered like a camera: frame k exists at t0 + k/fps.

    Reads wait for the next frame; a reader that falls more than `buffer` frames behind loses the oldest ones, as a
    camera driver's ring buffer does (counted in events["missed"]). `t_capture` is the frame's own time, so latency
    includes the time a frame waited to be read. fps=0 generates as fast as it is read (not live). `frames=N` ends
    the stream after N frames (default: endless).
    """

    kind = "synthetic"
    pace_in_software = False

    def __init__(self, uri: str, width: int = 480, height: int = 360, fps: float = 30.0, frames: int | None = None,
                 buffer: int = 4, seed: int = 0, options: SourceOptions | None = None) -> None:
        super().__init__(uri, options)
        self.resize_in_software = False
        self.width, self.height, self.rate, self.frames, self.buffer = width, height, float(fps), frames, buffer
        self.live = self.rate > 0
        rng = np.random.default_rng(seed)
        period = width
        sky = np.linspace(230, 150, height // 3, dtype=np.float32)[:, None, None] * np.ones((1, 1, 3), np.float32)
        sky[..., 2] *= 0.85
        scene = np.zeros((height, width + period, 3), np.uint8)
        scene[:height // 3] = sky.astype(np.uint8)
        scene[height // 3:2 * height // 3] = (60, 90, 70)
        scene[2 * height // 3:] = (90, 80, 85)
        for _ in range(12):  # buildings and cars: blocks of colour that the models see as objects
            x, bw = int(rng.integers(0, width)), int(rng.integers(width // 20, width // 6))
            top = int(rng.integers(height // 6, height // 2))
            colour = tuple(int(c) for c in rng.integers(40, 200, 3))
            for xx in (x, x + period):
                cv2.rectangle(scene, (xx, top), (xx + bw, 2 * height // 3), colour, -1)
        scene[:, width:] = scene[:, :period]
        noise = rng.integers(-6, 7, scene.shape, dtype=np.int16)
        self._scene = np.clip(scene.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        self._period = period
        self._next = 0
        self._t0: float | None = None
        self._native_size = (height, width)
        self._native_fps = self.rate or None

    def _open(self) -> None:
        self._native_size = (self.height, self.width)
        self._native_fps = self.rate or None
        self._next, self._t0 = 0, None

    def _render(self, k: int) -> np.ndarray:
        x = (k * 4) % self._period
        img = self._scene[:, x:x + self.width].copy()
        cx = int((k * 7) % (self.width + 80)) - 40
        cv2.circle(img, (cx, int(self.height * 0.75)), max(4, self.height // 12), (30, 30, 200), -1)
        return img

    def _grab(self) -> tuple[np.ndarray | None, str | None] | None:
        if self.frames is not None and self._next >= self.frames:
            return None
        if self.rate > 0:
            now = time.perf_counter()
            if self._t0 is None:
                self._t0 = now
            due = self._t0 + self._next / self.rate
            if due > now:
                if self._stop.wait(due - now):
                    return None
            else:
                newest = int((now - self._t0) * self.rate)
                if newest - self._next >= self.buffer:  # the ring buffer overflowed: the oldest frames are gone
                    skip = newest - self._next - self.buffer + 1
                    self.events["missed"] += skip
                    self._next += skip
                    self._index += skip
        return self._render(self._next), None

    def read(self) -> Frame | None:
        frame = super().read()
        if frame is not None:
            if self.rate > 0 and self._t0 is not None:
                frame.t_capture = self._t0 + self._next / self.rate  # the frame's sensor time
            self._next += 1
        return frame

    @property
    def frame_count(self) -> int | None:
        return None if self.live else self.frames

    def describe(self) -> str:
        rate = f"@ {self.rate:g} fps (camera-paced, {self.buffer}-frame buffer)" if self.rate > 0 else "unpaced"
        n = f", {self.frames} frames" if self.frames is not None else ""
        return f"synthetic {self.width}x{self.height} {rate}{n}"


# -- resilience for live sources ------------------------------------------------------------------------------------
class _Reader:
    """One thread that performs the reads of one connection, so a read that hangs can be abandoned."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self._req: queue.Queue[bool] = queue.Queue()
        self._res: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._abandoned = False
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name="segedge-source-reader", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while self._req.get():
            try:
                out: tuple[bool, Any] = (True, self.src.read())
            except BaseException as e:  # handed to the caller
                out = (False, e)
            if self._abandoned:
                break
            self._res.put(out)
        if self._abandoned:
            try:
                self.src.close()  # only now: closing a capture another thread is reading from can crash OpenCV
            except Exception:
                pass

    def read(self, timeout: float, stop: threading.Event) -> Frame | None:
        if not self._busy:
            self._req.put(True)
            self._busy = True
        deadline = time.monotonic() + timeout
        while True:
            try:
                ok, value = self._res.get(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                if stop.is_set():
                    return None
                if time.monotonic() >= deadline:
                    raise ReadTimeout from None
                continue
            self._busy = False
            if ok:
                return value
            raise value

    def shutdown(self, abandon: bool) -> None:
        """End the thread; an abandoned (stalled) connection is closed by the thread once its read returns."""
        if abandon and self._busy:
            self._abandoned = True
            self.src.interrupt()
            self._req.put(False)
            return
        self._req.put(False)
        self._thread.join(timeout=5)
        try:
            self.src.close()
        except Exception:
            pass


class ReconnectingSource(Source):
    """A live source that survives failures: `factory()` makes a fresh (unopened) source for every connection.

    A read that raises, returns None (the stream ended: for a live source that is a failure) or takes longer than
    `read_timeout` closes the connection and opens a new one after a back-off (`backoff[0]`, doubling up to
    `backoff[1]`). After `reconnects` attempts in a row without a good frame it raises SourceLost. The first open is
    not retried: a wrong address fails at once. Frame indices continue across connections.
    """

    def __init__(self, factory: Callable[[], Source], uri: str | None = None, read_timeout: float | None = 5.0,
                 reconnects: int = 5, backoff: tuple[float, float] = (0.5, 8.0),
                 log: Callable[[str], None] | None = None) -> None:
        self._factory = factory
        self._inner: Source | None = None
        self._proto = factory()
        super().__init__(uri or self._proto.uri)
        self.kind, self.live = self._proto.kind, True
        self.read_timeout, self.reconnects, self.backoff = read_timeout, reconnects, backoff
        self.log = log
        self._reader: _Reader | None = None
        self._failures = 0
        self._stop = threading.Event()
        self._index_offset = 0
        self._last_index = -1
        self._opened = False

    def _say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def _attach(self, src: Source) -> None:
        self._inner = src
        self._reader = _Reader(src) if self.read_timeout else None

    def open(self) -> None:
        if self._opened:
            return
        src, self._proto = self._proto, None  # type: ignore[assignment]
        try:
            src.open()
        except BaseException:
            src.close()
            raise
        self._attach(src)
        self._opened = True

    def _absorb(self, src: Source | None) -> None:
        """Keep what a connection counted (corrupt frames, frames it missed) when it goes."""
        if src is not None:
            for k in ("corrupt", "missed"):
                self._events[k] += src.events.get(k, 0)

    def _drop(self, abandon: bool = False) -> None:
        src, reader = self._inner, self._reader
        self._inner = self._reader = None
        self._absorb(src)
        self._index_offset = self._last_index + 1
        if reader is not None:
            reader.shutdown(abandon)
        elif src is not None:
            try:
                src.close()
            except Exception:
                pass
        self._failures += 1

    def _connect(self) -> bool:
        """Open a new connection after a back-off; False when stopped; SourceLost after too many failures."""
        while True:
            if self._failures > self.reconnects:
                raise SourceLost(f"{_redact(self.uri)}: no frames after {self.reconnects} reconnect attempt"
                                 f"{'s' if self.reconnects != 1 else ''}, giving up (last problem: "
                                 f"{self.last_problem or 'unknown'})")
            delay = min(self.backoff[0] * 2 ** max(0, self._failures - 1), self.backoff[1])
            if self._stop.wait(delay):
                return False
            self._events["reconnects"] += 1
            self._say(f"reconnecting to {_redact(self.uri)} (attempt {self._failures} of {self.reconnects}) after: "
                      f"{self.last_problem}")
            src = self._factory()
            try:
                src.open()
            except Exception as e:
                try:
                    src.close()
                except Exception:
                    pass
                self.last_problem = first_line(e)
                self._failures += 1
                continue
            self._attach(src)
            return True

    def read(self) -> Frame | None:
        if not self._opened:
            raise SegedgeError(f"{self.kind} {self.uri} is not open; call open() first (or use `with source:`)")
        while not self._stop.is_set():
            if self._inner is None and not self._connect():
                return None
            try:
                if self._reader is not None:
                    frame = self._reader.read(float(self.read_timeout or 0), self._stop)
                    if frame is None and self._stop.is_set():
                        self._drop(abandon=True)
                        return None
                else:
                    frame = self._inner.read()  # type: ignore[union-attr]
            except ReadTimeout:
                self._events["stalls"] += 1
                self.last_problem = f"no frame for {self.read_timeout:g} s (stalled)"
                self._drop(abandon=True)
                continue
            except SourceLost:
                raise
            except Exception as e:
                self._events["read_errors"] += 1
                self.last_problem = f"read failed: {first_line(e)}"
                self._drop()
                continue
            if frame is None:
                if self._stop.is_set():
                    return None
                self._events["read_errors"] += 1
                self.last_problem = "the stream ended"
                self._drop()
                continue
            self._failures = 0
            frame.index += self._index_offset
            self._last_index = frame.index
            return frame
        return None

    def close(self) -> None:
        if self._inner is not None or self._reader is not None:
            src, reader = self._inner, self._reader
            self._inner = self._reader = None
            self._absorb(src)
            if reader is not None:
                reader.shutdown(abandon=reader._busy)
            elif src is not None:
                src.close()
        if self._proto is not None:
            self._proto.close()
        self._opened = False

    def interrupt(self) -> None:
        self._stop.set()
        inner = self._inner
        if inner is not None:
            inner.interrupt()

    @property
    def events(self) -> dict[str, int]:  # type: ignore[override]
        inner = self._inner
        merged = dict(self._events)
        if inner is not None:
            for k, v in inner.events.items():
                if k in ("corrupt", "missed"):
                    merged[k] = merged.get(k, 0) + v
        return merged

    @events.setter
    def events(self, value: dict[str, int]) -> None:
        self._events = value

    def _src(self) -> Source | None:
        return self._inner or self._proto

    @property
    def fps(self) -> float | None:
        s = self._src()
        return s.fps if s else None

    @property
    def size(self) -> tuple[int, int] | None:
        s = self._src()
        return s.size if s else None

    def describe(self) -> str:
        s = self._src()
        base = s.describe() if s else f"{self.kind} {_redact(self.uri)}"
        t = f"read timeout {self.read_timeout:g} s, " if self.read_timeout else ""
        return f"{base} [live: {t}up to {self.reconnects} reconnects]"


# -- the factory ----------------------------------------------------------------------------------------------------
def _int_or_none(v: str | None, name: str) -> int | None:
    if v in (None, ""):
        return None
    try:
        return int(v)  # type: ignore[arg-type]
    except ValueError as e:
        raise SegedgeError(f"synthetic:// option {name} must be a whole number, got {v!r}") from e


def _synthetic(uri: str, opts: SourceOptions) -> SyntheticSource:
    q = dict(parse_qsl(urlsplit(uri).query))
    unknown = set(q) - {"width", "height", "fps", "frames", "buffer", "seed"}
    if unknown:
        raise SegedgeError(f"unknown synthetic:// option(s) {', '.join(sorted(unknown))}: use width, height, fps, "
                           "frames, buffer, seed (e.g. synthetic://?width=480&height=360&fps=30&frames=300)")
    try:
        fps = float(q["fps"]) if "fps" in q else float(opts.fps if opts.fps is not None else 30.0)
    except ValueError as e:
        raise SegedgeError(f"synthetic:// option fps must be a number, got {q['fps']!r}") from e
    width = _int_or_none(q.get("width"), "width") or opts.width or 480
    height = _int_or_none(q.get("height"), "height") or opts.height or 360
    frames = _int_or_none(q.get("frames"), "frames")
    buffer = _int_or_none(q.get("buffer"), "buffer") or 4
    if not (16 <= width <= 8192 and 16 <= height <= 8192) or fps < 0 or (frames is not None and frames < 1) \
            or buffer < 1:
        raise SegedgeError(f"synthetic:// needs 16 ≤ width, height ≤ 8192, fps ≥ 0, frames ≥ 1, buffer ≥ 1; got {uri}")
    return SyntheticSource(uri, width, height, fps, frames, buffer, _int_or_none(q.get("seed"), "seed") or 0,
                           replace(opts, width=None, height=None, fps=None))


def _camera_api() -> int:
    return cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY


def _live(factory: Callable[[], Source], uri: str, opts: SourceOptions,
          log: Callable[[str], None] | None) -> Source:
    return ReconnectingSource(factory, uri, opts.read_timeout if opts.read_timeout is not None else 5.0,
                              opts.reconnects, opts.backoff, log)


def _stream(uri: str, opts: SourceOptions, log: Callable[[str], None] | None) -> Source:
    scheme = uri.split(":", 1)[0].lower()
    backend = opts.backend
    if backend == "auto":
        backend = "ffmpeg" if has_ffmpeg() else "gstreamer"
    if backend == "gstreamer":
        if not has_gstreamer():
            raise _no_gstreamer(f"{_redact(uri)} with the GStreamer backend")
        if scheme in ("rtsp", "rtsps"):
            text = _rtsp_gstreamer(uri)
        else:
            text = f"uridecodebin uri={uri} ! videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true " \
                   "max-buffers=1 sync=false"
        return _live(lambda: CaptureSource(uri, text, cv2.CAP_GSTREAMER, "stream", True, opts, pipeline_text=text),
                     uri, opts, log)
    if not has_ffmpeg():
        raise SegedgeError(f"this OpenCV has no FFmpeg to read {_redact(uri)}; install opencv-python-headless from "
                           "PyPI, or pass backend gstreamer")
    ms = int(opts.open_timeout * 1000)
    read_ms = int((opts.read_timeout if opts.read_timeout is not None else 5.0) * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
    # Low latency: no input buffering, no reordering delay; RTSP over TCP unless told otherwise.
    ff = "fflags;nobuffer|flags;low_delay|max_delay;0"
    if scheme in ("rtsp", "rtsps"):
        ff = f"rtsp_transport;{opts.rtsp_transport}|" + ff
    env = {"OPENCV_FFMPEG_CAPTURE_OPTIONS": ff}
    return _live(lambda: CaptureSource(uri, uri, cv2.CAP_FFMPEG, "stream", True, opts, params=params, env=env),
                 uri, opts, log)


def _gstreamer(uri: str, text: str, opts: SourceOptions, log: Callable[[str], None] | None) -> Source:
    if not has_gstreamer():
        raise _no_gstreamer("a GStreamer pipeline")
    text = _with_appsink(text)
    return _live(lambda: CaptureSource(uri, text, cv2.CAP_GSTREAMER, "GStreamer pipeline", True, opts,
                                       pipeline_text=text), uri, opts, log)


def _csi(uri: str, opts: SourceOptions, log: Callable[[str], None] | None) -> Source:
    rest = uri.split("://", 1)[1].strip("/")
    try:
        sensor = int(rest or 0)
    except ValueError as e:
        raise SegedgeError(f"csi:// takes a sensor id, e.g. csi://0, got {uri}") from e
    flip_method = {None: 0, 1: 4, 0: 6, -1: 2}[FLIPS[opts.flip]]  # nvvidconv: 4 horizontal, 6 vertical, 2 = 180°
    text = csi_pipeline(sensor, opts.width or 1280, opts.height or 720, opts.fps or 30, flip_method)
    if not has_gstreamer():
        raise _no_gstreamer(f"{uri} (pipeline: {text})")
    hw_opts = replace(opts, flip="none")  # nvvidconv flips in hardware
    return _live(lambda: CaptureSource(uri, text, cv2.CAP_GSTREAMER, "CSI camera", True, hw_opts,
                                       pipeline_text=text), uri, opts, log)


def _camera(uri: str, target: int | str, opts: SourceOptions, log: Callable[[str], None] | None) -> Source:
    return _live(lambda: CaptureSource(uri, target, _camera_api(), "camera", True, opts), uri, opts, log)


def _images(uri: str, files: list[Path], base: Path, opts: SourceOptions) -> ImageSource:
    return ImageSource(uri, sorted(files, key=lambda f: _natural_key(str(f.relative_to(base))
                                                                     if f.is_relative_to(base) else f.name)),
                       base, opts)


def _is_char_device(p: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(p).st_mode)
    except OSError:
        return False


def open_source(uri: str | int | os.PathLike, options: SourceOptions | None = None,
                log: Callable[[str], None] | None = None, **kwargs: Any) -> Source:
    """A source for `uri` (see the module docstring), not yet opened: call `open()` or use `with`.

    Options come as a SourceOptions or as keywords (width=, height=, fps=, loop=, flip=, backend=, read_timeout=,
    reconnects=, backoff=, open_timeout=, rtsp_transport=). What can be checked without touching a device (the file
    exists, the scheme is known, OpenCV has GStreamer) is checked here; `log` receives reconnect messages.
    """
    opts = replace(options or SourceOptions(), **kwargs).checked()
    if isinstance(uri, bool):
        raise SegedgeError(f"input must be a URI, a path or a camera index, got {uri!r}")
    if isinstance(uri, int):
        if uri < 0:
            raise SegedgeError(f"camera index must be ≥ 0, got {uri}")
        return _camera(str(uri), uri, opts, log)
    text = os.fspath(uri).strip() if isinstance(uri, (str, os.PathLike)) else None
    if not text:
        raise SegedgeError(f"input must be a URI, a path or a camera index, got {uri!r}")
    if text.isdigit():
        return _camera(text, int(text), opts, log)
    if " ! " in text and "://" not in text.split(" ", 1)[0]:
        return _gstreamer(text, text, opts, log)
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    if m:
        scheme = m.group(1).lower()
        rest = text[m.end():]
        if scheme == "gst":
            if not rest.strip():
                raise SegedgeError("gst:// needs a pipeline, e.g. 'gst://videotestsrc ! videoconvert ! appsink'")
            return _gstreamer(text, rest, opts, log)
        if scheme == "v4l2":
            target: int | str = int(rest) if rest.isdigit() else rest
            if isinstance(target, str) and not target.startswith("/"):
                raise SegedgeError(f"v4l2:// takes a device path or index: v4l2:///dev/video0 or v4l2://0, got {text}")
            return _camera(text, target, opts, log)
        if scheme == "csi":
            return _csi(text, opts, log)
        if scheme == "synthetic":
            return _synthetic(text, opts)
        if scheme in STREAM_SCHEMES:
            if not rest.strip("/"):
                raise SegedgeError(f"{text} names no host; e.g. rtsp://user:pass@192.168.1.10:554/stream1")
            return _stream(text, opts, log)
        if scheme == "file":
            text = rest
            if not text:
                raise SegedgeError("file:// needs a path, e.g. file:///data/clip.mp4")
        else:
            raise SegedgeError(f"unsupported input scheme '{scheme}://' in {_redact(text)}: use a camera index "
                               f"(0), a file, folder or glob, or one of {', '.join(s + '://' for s in SCHEMES)}")
    if _is_char_device(text) and not Path(text).is_file():
        return _camera(text, text, opts, log)
    if any(c in text for c in "*?[") and not Path(text).exists():
        files = sorted(Path(p) for p in _glob.glob(text, recursive=True) if Path(p).is_file()
                       and Path(p).suffix.lower() in IMAGE_EXTS)
        if not files:
            raise SegedgeError(f"no image files match {text} (images: {', '.join(IMAGE_EXTS)})")
        fixed = re.split(r"[*?\[]", text, maxsplit=1)[0]
        base = Path(fixed) if fixed.endswith(("/", os.sep)) else Path(fixed).parent
        return _images(text, files, base, opts)
    p = Path(text).expanduser()
    if p.is_dir():
        files = [f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS
                 and not f.name.startswith(".")]
        if not files:
            videos = [f.name for f in p.iterdir() if f.suffix.lower() in VIDEO_EXTS]
            hint = f"; it holds videos ({', '.join(sorted(videos)[:3])}): pass one of them" if videos else ""
            raise SegedgeError(f"no images in folder {p} (looked for {', '.join(IMAGE_EXTS)}){hint}")
        return _images(text, files, p, opts)
    if p.is_file():
        if not os.access(p, os.R_OK):
            raise SegedgeError(f"cannot read {p}: permission denied")
        if p.suffix.lower() in IMAGE_EXTS:
            return _images(text, [p], p.parent, opts)
        if p.stat().st_size == 0:
            raise SegedgeError(f"{p} is empty (0 bytes): not a video")
        return CaptureSource(text, str(p), cv2.CAP_FFMPEG if has_ffmpeg() else cv2.CAP_ANY, "video file", False,
                             opts)
    if p.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS or os.sep in text or "/" in text:
        raise SegedgeError(f"input not found: {text}")
    raise SegedgeError(f"input not found: {text} (not a file, folder, glob, camera index or URI; URIs: "
                       f"{', '.join(s + '://' for s in SCHEMES)})")


__all__ = ["BasicSource", "CaptureSource", "Frame", "IMAGE_EXTS", "ImageSource", "ReconnectingSource", "ReadTimeout",
           "Source", "SourceLost", "SourceOptions", "SyntheticSource", "VIDEO_EXTS", "csi_pipeline", "has_ffmpeg",
           "has_gstreamer", "open_source"]
