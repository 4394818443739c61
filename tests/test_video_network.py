"""A real network stream on the loopback address: an FFmpeg process (the static binary from imageio-ffmpeg, a dev
dependency) serves an MPEG-TS stream over HTTP; segedge reads it through OpenCV's FFmpeg backend, the server is
killed mid-stream and restarted, and the source reconnects; with no server coming back it gives up, counted."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from segedge.video import open_source
from segedge.video.sources import SourceLost, has_ffmpeg

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg (the dev extra) provides the ffmpeg "
                                                               "binary that serves the test stream")
pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="OpenCV was built without FFmpeg: it cannot read streams")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clip(folder: Path) -> Path:
    """A 4 s 320×240 test pattern, encoded by the same ffmpeg binary."""
    out = folder / "pattern.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", "testsrc=size=320x240:rate=25", "-t", "4", "-c:v", "mpeg4", str(out)], check=True,
                   timeout=60)
    return out


class Server:
    """`ffmpeg -re … -listen 1 http://127.0.0.1:PORT/live.ts`: one client, real-time rate, looping the clip."""

    def __init__(self, clip: Path, port: int) -> None:
        self.clip, self.port = clip, port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live.ts"

    def start(self) -> "Server":
        self.proc = subprocess.Popen([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "quiet", "-re",
                                      "-stream_loop", "-1", "-i", str(self.clip), "-c:v", "mpeg4", "-f", "mpegts",
                                      "-listen", "1", self.url], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _listening(self.port):  # not by connecting: that would be the server's one client
            assert self.proc.poll() is None and time.monotonic() < deadline, "the ffmpeg server did not start"
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _listening(port: int) -> bool:
    """Is a socket listening on 127.0.0.1:port (from /proc/net/tcp, state 0A)?"""
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        time.sleep(1.0)  # no procfs: give the server a moment
        return True
    want = f"0100007F:{port:04X}"
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return _clip(tmp_path)


def test_http_stream_reconnects_after_the_server_dies_and_comes_back(clip: Path) -> None:
    server = Server(clip, _free_port()).start()
    restarted = threading.Event()
    lines: list[str] = []
    src = open_source(server.url, read_timeout=2.0, reconnects=8, backoff=(0.3, 1.0), log=lines.append)
    try:
        src.open()
        assert src.live and src.size == (240, 320)
        before = [src.read() for _ in range(20)]
        assert all(f is not None and f.image.shape == (240, 320, 3) for f in before)
        server.kill()  # the stream drops mid-way

        def come_back() -> None:
            time.sleep(1.0)
            server.start()
            restarted.set()

        threading.Thread(target=come_back, daemon=True).start()
        after = [src.read() for _ in range(20)]
        assert restarted.is_set()
        assert all(f is not None for f in after)
        ev = src.events
        assert ev["reconnects"] >= 1 and ev["read_errors"] + ev["stalls"] >= 1
        indices = [f.index for f in before + after]
        assert indices == sorted(indices) and len(set(indices)) == 40  # indices go on across connections
        assert any("reconnecting to http://127.0.0.1" in line for line in lines)
    finally:
        src.close()
        server.kill()


def test_http_stream_gives_up_when_the_server_stays_down(clip: Path) -> None:
    server = Server(clip, _free_port()).start()
    src = open_source(server.url, read_timeout=1.0, reconnects=2, backoff=(0.1, 0.2), open_timeout=2.0)
    try:
        src.open()
        assert src.read() is not None
        server.kill()
        with pytest.raises(SourceLost, match="no frames after 2 reconnect attempts, giving up"):
            for _ in range(500):  # frames still buffered in the client come first
                src.read()
        assert src.events["reconnects"] == 2
    finally:
        src.close()
        server.kill()


def test_pipeline_over_http_keeps_going_through_a_dropped_stream(clip: Path, tmp_path_factory) -> None:
    from video_util import tiny_export

    from segedge.runtime import Segmenter
    from segedge.video import Pipeline

    server = Server(clip, _free_port()).start()
    seen: list[int] = []

    def on_result(r) -> None:
        seen.append(r.index)
        if len(seen) == 15:
            server.kill()
            threading.Timer(0.8, server.start).start()

    try:
        with Segmenter.load(tiny_export(tmp_path_factory), threads=1) as seg, \
                Pipeline(seg, server.url, drop_policy="all", max_frames=40, on_result=on_result,
                         read_timeout=2.0, reconnects=8, backoff=(0.3, 1.0)) as p:
            st = p.run()
        assert st["status"] == "completed" and st["frames"]["processed"] == 40
        assert st["source_events"]["reconnects"] >= 1
        assert seen == sorted(seen) and len(set(seen)) == 40
    finally:
        server.kill()
