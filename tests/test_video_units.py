"""segedge.video building blocks without a model: sinks (temp-name videos, folders, single images, errors), views,
bounded queues and the stats' bounded reservoirs; and that the package imports without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from video_util import REPO, count_frames, scene

from segedge.errors import SegedgeError
from segedge.runtime.palette import palette_for
from segedge.video import BoundedQueue, Renderer, Reservoir, open_sink
from segedge.video.pipeline import _EOS
from segedge.video.sinks import DisplaySink, FolderSink, ImageSink, NullSink, VideoSink
from segedge.video.stats import PipelineStats, format_line, rich_table

NAMES = ["sky", "road", "car"]


def _result(i: int, h: int = 48, w: int = 64, name: str | None = None, view: str = "overlay") -> SimpleNamespace:
    frame = scene(i, h, w)
    labels = (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)
    r = Renderer(palette_for(NAMES), NAMES, view)
    return SimpleNamespace(index=i, name=name, frame=frame, labels=labels, t_capture=time.perf_counter(),
                           view=r.render(frame, labels))


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_open_sink_dispatch_and_errors(tmp_path: Path) -> None:
    assert isinstance(open_sink(tmp_path / "a.mp4"), VideoSink)
    assert isinstance(open_sink(tmp_path / "a.avi"), VideoSink) and open_sink(tmp_path / "a.avi").fourcc == "MJPG"
    assert isinstance(open_sink(str(tmp_path / "out") + "/"), FolderSink)
    assert isinstance(open_sink(tmp_path / "noext"), FolderSink)
    assert isinstance(open_sink(tmp_path / "one.png"), ImageSink)
    assert isinstance(open_sink("null://"), NullSink)
    assert isinstance(open_sink("display://"), DisplaySink)
    assert open_sink(tmp_path / "lab", view="labels").needs_labels
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    (tmp_path / "plainfile").write_text("x")
    (tmp_path / "dir.mp4").mkdir()
    cases = [
        (lambda: open_sink(tmp_path / "a.mp4", view="labels"), "--view labels writes uint8 label PNGs"),
        (lambda: open_sink("display://", view="labels"), "display:// shows images"),
        (lambda: open_sink("s3://bucket/x.mp4"), "unsupported output scheme 's3://'"),
        (lambda: open_sink(tmp_path / "x.xyz"), "cannot tell what to write"),
        (lambda: open_sink(tmp_path / "l.jpg", view="labels"), "lossless"),
        (lambda: open_sink(blocker / "out.mp4").check(), "cannot write the video to"),
        (lambda: open_sink(str(blocker / "dir") + "/").check(), "cannot write images to"),
        (lambda: open_sink(tmp_path / "plainfile").check(), "exists and is not a folder"),
        (lambda: VideoSink(tmp_path / "dir.mp4").check(), "is a folder"),
        (lambda: VideoSink(tmp_path / "a.mp4", fourcc="toolong"), "fourcc must be 4 characters"),
    ]
    for make, msg in cases:
        with pytest.raises(SegedgeError, match=msg) as e:
            make()
        assert "\n" not in str(e.value)


def test_video_sink_writes_under_a_temp_name_and_renames_on_close(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    sink = open_sink(out)
    sink.check()
    sink.open(fps=12.0, live=False)
    for i in range(7):
        sink.write(_result(i))
        assert not out.exists()  # only the temporary file exists while writing
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".v.")]
    line = sink.close()
    assert "7 frames" in line and "12 fps" in line
    assert count_frames(out) == (7, (48, 64)) and _no_temp_files(tmp_path)
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == pytest.approx(12)


def test_video_sink_abort_leaves_nothing_and_an_empty_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "v.mp4"
    sink = VideoSink(out)
    sink.open(None, False)
    sink.write(_result(0))
    sink.abort()
    assert not out.exists() and _no_temp_files(tmp_path)
    empty = VideoSink(out)
    assert "not written" in empty.close() and not out.exists()


def test_live_video_sink_repeats_frames_to_keep_real_time(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "live.avi")
    sink.open(fps=10.0, live=True)
    first = _result(0)
    sink.write(first)
    later = _result(1)
    later.t_capture = first.t_capture + 0.5  # five frame periods later: the frames between were dropped
    sink.write(later)
    sink.close()
    assert sink.frames == 6 and count_frames(tmp_path / "live.avi")[0] == 6


def test_video_sink_fits_frames_of_other_sizes_to_the_first(tmp_path: Path) -> None:
    sink = VideoSink(tmp_path / "m.mp4")
    sink.open(None, False)
    sink.write(_result(0, 48, 64))
    sink.write(_result(1, 30, 50))
    sink.close()
    assert count_frames(tmp_path / "m.mp4") == (2, (48, 64))
    assert sink.fps == 25.0  # no source rate: the default


def test_folder_and_image_sinks_keep_names_and_label_values(tmp_path: Path) -> None:
    labels = FolderSink(tmp_path / "lab", labels=True)
    labels.check()
    labels.write(_result(0, name="a.jpg"))
    labels.write(_result(1, 30, 40, name="sub/b.jpg"))
    labels.write(_result(7))
    assert labels.close() == f"{tmp_path / 'lab'}/: 3 label maps (uint8 PNG)"
    a = cv2.imread(str(tmp_path / "lab" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert a.dtype == np.uint8 and a.shape == (48, 64) and np.array_equal(a, _result(0).labels)
    assert cv2.imread(str(tmp_path / "lab" / "sub" / "b.png"), cv2.IMREAD_UNCHANGED).shape == (30, 40)
    assert (tmp_path / "lab" / "000007.png").is_file() and _no_temp_files(tmp_path / "lab")
    views = FolderSink(tmp_path / "views")
    views.check()
    views.write(_result(0, name="a.jpg"))
    assert cv2.imread(str(tmp_path / "views" / "a.png")).shape == (48, 64, 3)
    one = ImageSink(tmp_path / "one.png")
    one.write(_result(0))
    with pytest.raises(SegedgeError, match="takes one frame"):
        one.write(_result(1))
    assert one.close() == str(tmp_path / "one.png")


def test_display_is_skipped_headless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    d = DisplaySink()
    assert d.why_not and "skipped" in d.describe()
    assert d.write(_result(0)) is True and d.close() is None


def test_views_shapes_legend_and_info() -> None:
    frame = scene(3, 60, 80)
    labels = np.zeros((60, 80), np.uint8)
    labels[30:] = 1
    pal = palette_for(NAMES)
    over = Renderer(pal, NAMES, "overlay", alpha=1.0).render(frame, labels)
    mask = Renderer(pal, NAMES, "mask").render(frame, labels)
    assert np.array_equal(over, mask)  # alpha 1: colours only
    assert tuple(mask[0, 0]) == tuple(int(v) for v in pal[0][::-1])
    side = Renderer(pal, NAMES, "side").render(frame, labels)
    assert side.shape == (60, 160, 3) and np.array_equal(side[:, :80], frame)
    assert Renderer(pal, NAMES, "labels", legend=True, info=True).render(frame, labels) is labels
    big = scene(0, 360, 480)
    lab = np.zeros((360, 480), np.uint8)
    lab[200:] = 2
    plain = Renderer(pal, NAMES, "mask").render(big, lab)
    legend = Renderer(pal, NAMES, "mask", legend=True).render(big, lab)
    info = Renderer(pal, NAMES, "mask", info=True).render(big, lab, "25.0 fps  40 ms")
    assert not np.array_equal(plain[:80, -200:], legend[:80, -200:])  # legend top right
    assert np.array_equal(plain[:, :200], legend[:, :200])
    assert not np.array_equal(plain[:40, :200], info[:40, :200])  # text top left
    for bad in ({"view": "blend"}, {"alpha": 1.5}):
        with pytest.raises(SegedgeError):
            Renderer(pal, NAMES, **bad)


def test_bounded_queue_latest_mode_replaces_and_blocking_mode_blocks() -> None:
    q = BoundedQueue("t", 4, latest=True)
    assert q.bound == 1
    assert q.put(1) == (True, None)
    assert q.put(2) == (True, 1)  # the stale item comes back, to be counted as dropped
    assert q.get() == 2 and q.peak == 1
    b = BoundedQueue("b", 2)
    b.put(1), b.put(2)
    done = threading.Event()
    threading.Thread(target=lambda: (b.put(3), done.set()), daemon=True).start()
    assert not done.wait(0.2)  # full: the producer waits
    assert b.get() == 1 and done.wait(2) and b.peak == 2
    b.close()
    assert [b.get(), b.get(), b.get()] == [2, 3, _EOS]
    c = BoundedQueue("c", 1)
    c.put("x")
    assert c.abort() == ["x"] and c.get() is _EOS and c.put("y") == (False, None)


def test_reservoir_is_bounded_and_exact_where_it_can_be() -> None:
    r = Reservoir(size=100, seed=1)
    for x in range(10_000):
        r.add(float(x))
    s = r.summary()
    assert len(r._sample) == 100 and s["n"] == 10_000 and s["mean"] == pytest.approx(4999.5)
    assert s["min"] == 0 and s["max"] == 9999 and 3000 < s["p50"] < 7000
    assert Reservoir().summary()["p50"] is None
    st = PipelineStats()
    st.start()
    st.count("read", 3)
    st.stage("infer", 5.0)
    for _ in range(3):
        st.frame_done(20.0)
    snap = st.snapshot()
    assert snap["frames"]["processed"] == 3 and snap["latency_ms"]["p50"] == 20.0
    assert snap["slowest_stage"] == "infer" and json.dumps(snap)
    assert "3 frames" in format_line(snap)
    rich_table({**snap, "source_events": {"reconnects": 1}})


def test_video_package_imports_without_torch(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import sys
        class _NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxsim"):
                    raise ModuleNotFoundError(f"No module named '{name}' (blocked by the test)", name=name)
                return None
        sys.meta_path.insert(0, _NoTorch())
        import segedge.video, segedge.video.sources, segedge.video.sinks, segedge.video.views
        import segedge.video.stats, segedge.video.pipeline
        allowed = {"numpy", "cv2", "rich", "segedge"}
        third = {m.split(".")[0] for m in sys.modules} - set(sys.stdlib_module_names) - allowed
        import segedge.commands.run  # the command module too (typer is the CLI's own dependency)
        print(sorted(m for m in third if not m.startswith("_")), "torch" in sys.modules)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "False"], r.stdout


def test_colorize_table_lookup_matches_plain_indexing_for_every_label_type() -> None:
    from segedge.runtime.palette import colorize, deterministic_palette

    rng = np.random.default_rng(0)
    pal = deterministic_palette(12)
    lab8 = rng.integers(0, 256, (37, 53)).astype(np.uint8)  # includes 255 (ignore) and values past the palette
    ref = np.zeros((256, 3), np.uint8)
    ref[:12] = pal[:, ::-1]
    assert np.array_equal(colorize(lab8, pal), ref[lab8])
    assert np.array_equal(colorize(lab8[:, ::2], pal), ref[lab8[:, ::2]])  # a strided view
    lab16 = rng.integers(0, 1000, (9, 11)).astype(np.uint16)
    big = np.zeros((1000, 3), np.uint8)
    big[:12] = pal[:, ::-1]
    assert np.array_equal(colorize(lab16, pal), big[lab16])
