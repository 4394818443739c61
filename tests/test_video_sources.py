"""segedge.video.sources: URIs → sources, files and image folders, options, corrupt frames, and the reconnecting
wrapper of live sources (reconnect, back-off, stall, give up) driven by test-double sources."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from video_util import FlakySource, Script, scene, write_clip

from segedge.errors import SegedgeError
from segedge.video.sources import (CaptureSource, ImageSource, ReconnectingSource, SourceLost, SourceOptions,
                                   SyntheticSource, csi_pipeline, has_gstreamer, open_source)


def _read_all(src) -> list:
    with src:
        return list(src)


def test_video_file_every_frame_with_size_fps_and_count(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "c.mp4", 12, fps=20)
    src = open_source(str(clip))
    assert isinstance(src, CaptureSource) and not src.live
    frames = _read_all(src)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (120, 160, 3) and frames[0].image.dtype == np.uint8
    assert src.fps == pytest.approx(20) and src.frame_count == 12
    assert "video file" in src.describe() and "160x120" in src.describe() and "12 frames" in src.describe()
    assert all(b.t_capture >= a.t_capture for a, b in zip(frames, frames[1:]))
    # file:// URIs, resize, flip and loop
    flipped = _read_all(open_source(f"file://{clip}", width=80, height=60, flip="h"))
    assert flipped[0].image.shape == (60, 80, 3)
    ref = cv2.flip(cv2.resize(frames[0].image, (80, 60), interpolation=cv2.INTER_AREA), 1)
    assert np.abs(flipped[0].image.astype(int) - ref).mean() < 1
    looped = open_source(clip, loop=True)
    with looped:
        idx = [looped.read().index for _ in range(30)]
    assert idx == list(range(30)) and looped.frame_count is None


def test_image_folder_natural_order_names_and_corrupt_files(tmp_path: Path) -> None:
    d = tmp_path / "frames"
    d.mkdir()
    for i in (1, 2, 10):
        cv2.imwrite(str(d / f"f{i}.jpg"), scene(i, 40 + i, 60))
    (d / "f3.png").write_bytes(b"not a png")  # corrupt: skipped and counted
    (d / "notes.txt").write_text("ignored")
    src = open_source(d)
    assert isinstance(src, ImageSource) and not src.live and src.frame_count == 4
    frames = _read_all(src)
    assert [f.name for f in frames] == ["f1.jpg", "f2.jpg", "f10.jpg"]  # natural order, f3.png skipped
    assert [f.image.shape[0] for f in frames] == [41, 42, 50]  # each frame keeps its own size
    assert src.events["corrupt"] == 1 and "f3.png" in src.last_problem
    # glob and single image
    assert [f.name for f in _read_all(open_source(str(d / "f1*.jpg")))] == ["f1.jpg", "f10.jpg"]
    assert [f.name for f in _read_all(open_source(d / "f2.jpg"))] == ["f2.jpg"]


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"\x00junk" * 100)
    (tmp_path / "dup").mkdir()
    cv2.imwrite(str(tmp_path / "dup" / "a.jpg"), scene(0))
    cv2.imwrite(str(tmp_path / "dup" / "a.png"), scene(1))
    cases = {
        str(tmp_path / "missing.mp4"): "input not found",
        "nosuchthing": "input not found",
        "ftp://host/x": "unsupported input scheme 'ftp://'",
        str(tmp_path / "empty"): "no images in folder",
        str(tmp_path / "*.jpg"): "no image files match",
        str(tmp_path / "zero.mp4"): "is empty",
        "rtsp://": "names no host",
        "v4l2://video0": "v4l2:// takes a device path",
        "synthetic://?fps=x": "fps must be a number",
        "synthetic://?colour=red": "unknown synthetic:// option",
        str(tmp_path / "dup"): "would give outputs of one name",
    }
    for uri, msg in cases.items():
        with pytest.raises(SegedgeError, match=msg) as e:
            open_source(uri)
        assert "\n" not in str(e.value)
    with pytest.raises(SegedgeError, match="cannot decode|no decodable frame"):
        open_source(tmp_path / "junk.mp4").open()
    with pytest.raises(SegedgeError, match="flip must be"):
        open_source(tmp_path / "dup" / "a.jpg", flip="sideways")
    with pytest.raises(SegedgeError, match="fps must be"):
        open_source(tmp_path / "dup" / "a.jpg", fps=0)


def test_cameras_csi_and_gstreamer_uris(tmp_path: Path) -> None:
    cam = open_source("0")
    assert cam.live and isinstance(cam, ReconnectingSource) and cam.kind == "camera"
    assert open_source(3).uri == "3"
    assert open_source("v4l2:///dev/video7").kind == "camera"
    with pytest.raises(SegedgeError, match="cannot open camera"):
        open_source("v4l2:///dev/segedge-no-such-camera").open()  # first open: not retried, one line
    text = csi_pipeline(1, 1920, 1080, 60, 2)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! ") and "width=(int)1920" in text and \
        "framerate=(fraction)60/1" in text and "flip-method=2" in text and text.endswith("sync=false")
    assert "appsink" in text
    if not has_gstreamer():
        for uri in ("csi://0", "gst://videotestsrc ! videoconvert", "videotestsrc ! appsink"):
            with pytest.raises(SegedgeError, match="needs OpenCV built with GStreamer") as e:
                open_source(uri)
            assert "\n" not in str(e.value)
        with pytest.raises(SegedgeError, match="nvarguscamerasrc sensor-id=0"):  # the error shows the pipeline
            open_source("csi://0", width=640, height=480)


def test_rtsp_uses_ffmpeg_low_latency_and_fails_fast_on_a_silent_server() -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []
    threading.Thread(target=lambda: [conns.append(srv.accept()) for _ in range(4)], daemon=True).start()
    uri = f"rtsp://user:secret@127.0.0.1:{srv.getsockname()[1]}/stream"
    src = open_source(uri, open_timeout=0.4, read_timeout=0.4)
    assert src.live and src.kind == "stream"
    assert "secret" not in src.describe()
    with pytest.raises(SegedgeError, match="cannot connect to .* within 0.4 s") as e:
        src.open()
    assert "secret" not in str(e.value) and "\n" not in str(e.value)
    srv.close()


def test_synthetic_source_is_live_and_counts_what_a_slow_reader_misses() -> None:
    src = open_source("synthetic://?width=64&height=48&fps=0&frames=5")
    assert not src.live and len(_read_all(src)) == 5
    live = open_source("synthetic://?width=64&height=48&fps=50&frames=3")
    assert isinstance(live, SyntheticSource) and live.live and live.fps == 50
    frames = _read_all(live)
    assert [f.image.shape for f in frames] == [(48, 64, 3)] * 3
    assert frames[1].t_capture - frames[0].t_capture == pytest.approx(1 / 50)  # sensor timestamps


# -- reconnecting live sources ------------------------------------------------------------------------------------
def _reconnecting(script: Script, **kw) -> ReconnectingSource:
    kw = {"read_timeout": 1.0, "reconnects": 3, "backoff": (0.001, 0.004), **kw}
    return ReconnectingSource(lambda: FlakySource(script), "test://camera", **kw)


def test_reconnects_after_failed_and_raising_reads() -> None:
    script = Script(["frame"] * 3 + ["none"] + ["frame"] * 2 + ["raise"] + ["frame"] * 3)
    src = _reconnecting(script)
    with src:
        frames = [src.read() for _ in range(8)]
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == sorted({f.index for f in frames})  # indices keep increasing
    assert src.events["reconnects"] == 2 and src.events["read_errors"] == 2 and script.opens == 3


def test_gives_up_after_the_limit_with_one_line() -> None:
    script = Script(["frame"] * 2, after="none")
    src = _reconnecting(script, reconnects=3)
    with src:
        assert src.read() is not None and src.read() is not None
        with pytest.raises(SourceLost, match="no frames after 3 reconnect attempts, giving up") as e:
            src.read()
    assert "\n" not in str(e.value) and "the stream ended" in str(e.value)
    assert src.events["reconnects"] == 3 and script.opens == 4


def test_failed_reopens_count_towards_the_limit_then_recover() -> None:
    script = Script(["frame", "none"], after="frame", failing_opens=2)
    src = _reconnecting(script, reconnects=3)
    with src:
        assert src.read() is not None
        assert src.read() is not None  # two reopen attempts fail, the third works
    assert src.events["reconnects"] == 3 and script.opens == 4


def test_a_stalled_read_times_out_and_reconnects() -> None:
    script = Script(["frame", "hang"], after="frame")
    src = _reconnecting(script, read_timeout=0.2)
    try:
        with src:
            assert src.read().index == 0
            f = src.read()  # the hang is abandoned after 0.2 s; a new connection delivers
            assert f is not None and f.index >= 1
        assert src.events["stalls"] == 1 and src.events["reconnects"] == 1
    finally:
        script.release()


def test_first_open_is_not_retried_and_interrupt_ends_a_backoff() -> None:
    with pytest.raises(SegedgeError, match="cannot open"):
        _reconnecting(Script([], first_open_fails=True)).open()
    script = Script(["frame"], after="none")
    src = _reconnecting(script, reconnects=50, backoff=(5.0, 5.0))
    with src:
        assert src.read() is not None
        threading.Timer(0.2, src.interrupt).start()
        assert src.read() is None  # returns on interrupt instead of sleeping out the back-off


def test_malformed_frames_from_a_live_source_are_skipped_and_counted() -> None:
    script = Script(["frame", "bad", "bad", "frame"])
    src = _reconnecting(script)
    with src:
        a, b = src.read(), src.read()
    assert a.index == 0 and b.index == 3 and src.events["corrupt"] == 2


def test_source_options_are_validated() -> None:
    for kw, msg in [({"width": 0}, "width"), ({"reconnects": -1}, "reconnects"), ({"backend": "vlc"}, "backend"),
                    ({"read_timeout": 0}, "read timeout"), ({"backoff": (2, 1)}, "backoff"),
                    ({"rtsp_transport": "http"}, "rtsp transport")]:
        with pytest.raises(SegedgeError, match=msg):
            SourceOptions(**kw).checked()


def test_a_real_http_mjpeg_stream_that_stalls_reconnects_then_gives_up_when_the_server_goes() -> None:
    """FFmpeg through OpenCV on 127.0.0.1: 4 frames, a stall, a reconnect, more frames; then the server closes."""
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    jpgs = [cv2.imencode(".jpg", scene(i, 48, 64))[1].tobytes() for i in range(6)]
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for j in jpgs:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(j)
                                     + j + b"\r\n")
                    self.wfile.flush()
                release.wait(5)  # then stall with the connection open
            except OSError:
                pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    src = open_source(f"http://127.0.0.1:{srv.server_address[1]}/cam.mjpg", read_timeout=0.4, open_timeout=1.0,
                      reconnects=2, backoff=(0.05, 0.1))
    try:
        with src:
            got = [src.read() for _ in range(6)]  # at least one stall on the way
            assert all(f is not None and f.image.shape == (48, 64, 3) for f in got)
            assert src.events["reconnects"] >= 1 and src.events["stalls"] + src.events["read_errors"] >= 1
            srv.shutdown()
            srv.server_close()
            t0 = time.monotonic()
            with pytest.raises(SourceLost, match="giving up"):
                while True:
                    src.read()
            assert time.monotonic() - t0 < 30
    finally:
        release.set()
