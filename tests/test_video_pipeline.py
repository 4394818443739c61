"""segedge.video.Pipeline with a real (tiny) export: every frame with policy `all`, drops and bounded queues with
policy `latest` under a slow model, the iterator / callback / thread APIs, reconnect and give-up through a
test-double camera, corrupt and failing frames, image folders to label PNGs, and a failing output removed."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from video_util import FlakySource, Script, SlowBackend, count_frames, scene, tiny_export, write_clip

from segedge.errors import SegedgeError
from segedge.runtime import Segmenter
from segedge.video import Pipeline, ReconnectingSource, SourceLost, run_stream
from segedge.video.sinks import VideoSink


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory)


@pytest.fixture
def seg(export: Path):
    with Segmenter.load(export, threads=1) as s:
        yield s


def _invariant(st: dict) -> None:
    f = st["frames"]
    assert f["read"] == f["processed"] + f["dropped"] + f["failed"], f


def test_policy_all_processes_every_frame_into_a_readable_video(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 30)
    out = tmp_path / "out.mp4"
    with Pipeline(seg, clip, [out, tmp_path / "frames/"], view="overlay", legend=True, info=True) as p:
        st = p.run()
    assert st["status"] == "completed" and st["policy"] == "all"
    assert st["frames"] == {"read": 30, "processed": 30, "dropped": 0, "failed": 0}
    assert count_frames(out) == (30, (120, 160))
    assert len(list((tmp_path / "frames").glob("*.png"))) == 30
    assert set(st["stages_ms"]) == {"decode", "pre", "infer", "post", "render", "write"}
    assert st["latency_ms"]["n"] == 30 and st["latency_ms"]["p50"] <= st["latency_ms"]["p99"]
    for q in st["queues"].values():
        assert q["peak"] <= q["bound"] == 4
    assert any("30 frames" in line for line in st["outputs"])
    _invariant(st)
    # the labels agree with Segmenter.predict on the same frame
    cap = cv2.VideoCapture(str(clip))
    frame = cap.read()[1]
    first = next(iter(run_stream(seg, clip, max_frames=1)))
    assert np.array_equal(first.labels, seg.predict(frame))


def test_latest_policy_drops_stale_frames_under_a_slow_model_and_stays_bounded(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 60)
    seg.backend = SlowBackend(seg.backend, 0.03)
    seen: list[int] = []
    with Pipeline(seg, clip, tmp_path / "out.mp4", drop_policy="latest", on_result=lambda r: seen.append(r.index)
                  ) as p:
        st = p.run()
    f = st["frames"]
    assert st["policy"] == "latest" and f["read"] == 60
    assert f["dropped"] > 0 and f["processed"] < 60 and f["processed"] == seg.backend.calls
    _invariant(st)
    assert seen == sorted(seen) and seen[-1] == 59  # in order, and the newest frame is always processed
    assert st["queues"]["capture→pre"] == {"bound": 1, "peak": 1}
    assert st["queues"]["pre→infer"]["peak"] <= 1 and st["queues"]["infer→post"]["peak"] <= 1
    assert count_frames(tmp_path / "out.mp4")[0] == f["processed"]


def test_policy_all_under_a_slow_model_drops_nothing_and_never_exceeds_its_bound(seg, tmp_path: Path) -> None:
    seg.backend = SlowBackend(seg.backend, 0.01)
    with Pipeline(seg, "synthetic://?width=64&height=48&fps=0&frames=20", drop_policy="all", queue_size=2) as p:
        st = p.run()
    assert st["frames"]["processed"] == 20 and st["frames"]["dropped"] == 0
    assert all(q["peak"] <= 2 for q in st["queues"].values())


def test_live_synthetic_source_defaults_to_latest(seg) -> None:
    seg.backend = SlowBackend(seg.backend, 0.02)
    st = Pipeline(seg, "synthetic://?width=64&height=48&fps=200&frames=40").run()
    assert st["policy"] == "latest" and st["frames"]["processed"] < 40
    _invariant(st)


def test_iterator_callbacks_and_early_break(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 20)
    stats_seen: list[dict] = []
    results = list(run_stream(seg, clip, on_stats=stats_seen.append, stats_interval=0.01))
    assert [r.index for r in results] == list(range(20))
    r = results[3]
    assert r.labels.shape == (120, 160) and r.labels.dtype == np.uint8 and r.view.shape == (120, 160, 3)
    assert r.overlay.shape == (120, 160, 3) and set(r.timings) >= {"decode", "pre", "infer", "post", "render"}
    assert stats_seen and stats_seen[-1]["status"] == "completed" and stats_seen[-1]["frames"]["processed"] == 20
    with Pipeline(seg, clip, render=False) as p:
        for k, res in enumerate(p):
            assert res.view is None
            if k == 2:
                break
        assert not p.running and p.status == "stopped"
    assert not [t for t in threading.enumerate() if t.name in ("segedge-capture", "segedge-infer", "segedge-post")]


def test_stop_from_a_callback_drains_and_runs_from_a_thread(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 200)
    out = tmp_path / "out.mp4"
    box: dict = {}

    def on_result(r) -> None:
        if r.index == 4:
            p.stop()  # drain: frames already queued are still written

    p = Pipeline(seg, clip, out, on_result=on_result)
    t = threading.Thread(target=lambda: box.update(st=p.run()))
    t.start()
    t.join(60)
    p.close()
    st = box["st"]
    assert st["status"] == "stopped" and 5 <= st["frames"]["processed"] < 200
    assert st["frames"]["dropped"] == 0  # drained, not dropped
    assert count_frames(out)[0] == st["frames"]["processed"]


def test_max_frames_with_both_policies(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 30)
    st = Pipeline(seg, clip, max_frames=7).run()
    assert st["frames"]["read"] == 7 and st["frames"]["processed"] == 7 and st["status"] == "completed"
    st = Pipeline(seg, "synthetic://?width=64&height=48&fps=100", max_frames=5).run()  # endless live source
    assert st["frames"]["processed"] == 5 and st["status"] == "completed"
    _invariant(st)


def _camera(script: Script, **kw) -> ReconnectingSource:
    kw = {"read_timeout": 1.0, "reconnects": 3, "backoff": (0.001, 0.004), **kw}
    return ReconnectingSource(lambda: FlakySource(script), "test://camera", **kw)


def test_reconnects_are_counted_and_the_run_completes(seg, tmp_path: Path) -> None:
    script = Script(["frame"] * 3 + ["none"] + ["frame"] * 2 + ["raise", "hang"] + ["frame"] * 3)
    try:
        st = Pipeline(seg, _camera(script, read_timeout=0.3), tmp_path / "o.avi", max_frames=8,
                      drop_policy="all").run()
    finally:
        script.release()
    assert st["status"] == "completed" and st["frames"]["processed"] == 8
    ev = st["source_events"]
    assert ev["reconnects"] == 3 and ev["read_errors"] == 2 and ev["stalls"] == 1
    assert count_frames(tmp_path / "o.avi")[0] >= 8  # live: frames repeated to keep real time


def test_giving_up_raises_one_line_and_keeps_a_playable_video(seg, tmp_path: Path) -> None:
    out = tmp_path / "o.mp4"
    p = Pipeline(seg, _camera(Script(["frame"] * 4, after="none"), reconnects=2), out, drop_policy="all")
    with pytest.raises(SourceLost, match="no frames after 2 reconnect attempts, giving up"):
        p.run()
    st = p.stats()
    p.close()
    assert st["status"] == "failed" and "giving up" in st["error"] and st["frames"]["processed"] == 4
    assert st["source_events"]["reconnects"] == 2
    assert count_frames(out)[0] >= 4 and not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_image_folder_to_label_pngs_with_the_same_names_and_sizes(seg, tmp_path: Path) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    sizes = {"a": (90, 120), "b": (64, 64), "c10": (50, 200)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(d / f"{name}.jpg"), scene(len(name), h, w))
    (d / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    st = Pipeline(seg, d, tmp_path / "labels/", view="labels").run()
    assert st["frames"]["processed"] == 3 and st["source_events"]["corrupt"] == 1
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["a.png", "b.png", "c10.png"]
    for name, hw in sizes.items():
        lab = cv2.imread(str(tmp_path / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint8 and lab.shape == hw and lab.max() < seg.num_classes
        assert np.array_equal(lab, seg.predict(cv2.imread(str(d / f"{name}.jpg"))))


def test_failing_frames_are_counted_and_a_broken_model_stops_the_run(seg, tmp_path: Path) -> None:
    class Flaky:
        def __init__(self, inner, bad):
            self.inner, self.bad, self.n = inner, bad, 0

        def run(self, x):
            self.n += 1
            if self.bad(self.n):
                raise RuntimeError("scripted inference failure")
            return self.inner.run(x)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    real = seg.backend
    seg.backend = Flaky(real, lambda n: n in (2, 5))
    st = Pipeline(seg, "synthetic://?width=64&height=48&fps=0&frames=10").run()
    assert st["frames"]["failed"] == 2 and st["frames"]["processed"] == 8 and st["status"] == "completed"
    assert len(st["failures"]) == 2 and "scripted inference failure" in st["failures"][0]
    seg.backend = Flaky(real, lambda n: True)
    with pytest.raises(SegedgeError, match="inference failed on 25 frames in a row"):
        Pipeline(seg, "synthetic://?width=64&height=48&fps=0&frames=100").run()


def test_a_failing_output_is_removed_not_left_looking_valid(seg, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    clip = write_clip(tmp_path / "in.mp4", 20)
    real_write = VideoSink.write

    def write(self, result):
        if self.frames >= 5:
            raise OSError(28, "No space left on device")
        return real_write(self, result)

    monkeypatch.setattr(VideoSink, "write", write)
    out = tmp_path / "out.mp4"
    p = Pipeline(seg, clip, out)
    with pytest.raises(OSError, match="No space left"):
        p.run()
    p.close()
    assert not out.exists() and not [f for f in tmp_path.iterdir() if f.name.startswith(".")]
    assert p.status == "failed"


def test_pipeline_checks_arguments_before_loading_the_model(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 2)
    missing_model = tmp_path / "no-model"
    for kwargs, msg in [({"source": "nope.mp4"}, "input not found"),
                        ({"outputs": ["x.mp4"], "view": "labels"}, "--view labels"),
                        ({"drop_policy": "newest"}, "unknown drop policy"),
                        ({"max_frames": 0}, "max_frames"),
                        ({"view": "heatmap"}, "unknown view")]:
        args = {"source": clip, **kwargs}
        with pytest.raises(SegedgeError, match=msg):
            Pipeline(missing_model, **args)
    with pytest.raises(SegedgeError, match="model path not found"):
        Pipeline(missing_model, clip)


def test_hard_stop_drops_the_queued_frames_counted_and_still_closes_the_video(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 40)
    seg.backend = SlowBackend(seg.backend, 0.01)
    out = tmp_path / "out.mp4"

    def on_result(r) -> None:
        if r.index == 2:
            p.stop(drain=False)

    with Pipeline(seg, clip, out, on_result=on_result) as p:
        st = p.run()
    assert st["status"] == "stopped" and st["frames"]["dropped"] > 0
    _invariant(st)
    assert count_frames(out)[0] == st["frames"]["processed"] >= 3


def test_an_exception_in_a_callback_stops_the_run_and_is_raised(seg, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "in.mp4", 30)

    def on_result(r) -> None:
        if r.index == 3:
            raise ValueError("bug in the user's callback")

    p = Pipeline(seg, clip, tmp_path / "out.mp4", on_result=on_result)
    with pytest.raises(ValueError, match="bug in the user's callback"):
        p.run()
    p.close()
    assert p.status == "failed" and count_frames(tmp_path / "out.mp4")[0] == 4  # the video holds what was written


class _Overlapping:
    """A backend double that runs `depth` requests at once on a thread pool (the dispatch OpenVINO's throughput mode
    gives), recording how many were in flight; the numbers come from the real backend it wraps."""

    def __init__(self, inner, depth: int, delay: float) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.inner, self.parallel_requests, self.delay = inner, depth, delay
        self.pool = ThreadPoolExecutor(depth)
        self.lock = threading.Lock()
        self.in_flight = self.peak = 0

    def _job(self, x):
        import time

        time.sleep(self.delay)
        out = self.inner.run(x)
        with self.lock:
            self.in_flight -= 1
        return out

    def submit(self, x):
        with self.lock:
            self.in_flight += 1
            assert self.in_flight <= self.parallel_requests, "more requests in flight than the backend runs"
            self.peak = max(self.peak, self.in_flight)
        fut = self.pool.submit(self._job, x)

        class _P:
            def wait(self):
                return fut.result()

        return _P()

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_inference_overlaps_up_to_the_backends_requests_and_keeps_frame_order(seg, tmp_path: Path) -> None:
    uri = "synthetic://?width=64&height=48&fps=0&frames=24"
    ref = {r.index: r.labels.copy() for r in run_stream(seg, uri, drop_policy="all")}
    real = seg.backend
    seg.backend = double = _Overlapping(real, depth=3, delay=0.02)
    try:
        got = [(r.index, r.labels.copy()) for r in run_stream(seg, uri, drop_policy="all")]
        with Pipeline(seg, uri, drop_policy="all") as p:
            st = p.run()
            assert any("3 frames in flight" in line for line in p.describe())
    finally:
        seg.backend = real
        double.pool.shutdown()
    assert [i for i, _ in got] == sorted(ref) == list(range(24))  # in frame order, none lost
    assert all(np.array_equal(lab, ref[i]) for i, lab in got)
    assert double.peak == 3  # the window filled: inference really overlapped
    assert st["parallel"] == {"infer": 3} and st["frames"]["processed"] == 24
    _invariant(st)


def test_performance_hint_follows_the_drop_policy_unless_asked() -> None:
    from segedge.video.pipeline import performance_hint

    assert performance_hint("auto", "all", live=True) == "throughput"
    assert performance_hint("auto", "auto", live=False) == "throughput"  # files: every frame
    assert performance_hint("auto", "auto", live=True) == "latency"  # cameras: the newest frame
    assert performance_hint("auto", "latest", live=False) == "latency"
    assert performance_hint("latency", "all", live=False) == "latency"
    with pytest.raises(SegedgeError, match="unknown inference mode 'fast'"):
        performance_hint("fast", "all", live=False)
