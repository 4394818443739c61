"""A pipelined stream: capture, pre-processing, inference, post-processing + render + write in four threads
joined by bounded queues, so throughput approaches 1 / (slowest stage) instead of 1 / (sum of the stages).

    from segedge.video import Pipeline, run_stream

    with Pipeline("exports/b0-384x512", "cam.mp4", outputs=["out.mp4"], view="overlay") as p:
        stats = p.run()                                  # blocks; returns the final stats (dict)

    for r in run_stream(seg, 0, max_frames=100):         # iterator: Result(index, frame, labels, view, latency_ms, …)
        use(r.labels)

    p = Pipeline(seg, "rtsp://cam/stream", on_result=callback, on_stats=print)
    p.start(); ...; p.stop(); p.wait()                   # from a thread of your own

Drop policies: `latest` (default for live sources) keeps one frame between capture and pre-processing and
replaces it with every newer frame; pre-processing takes a frame only when inference has room for it, so latency
never grows: a frame waits at most one inference; replaced frames are counted as dropped. `all` (default for
files) blocks capture when the queues are full, so every frame is processed.

A model the pipeline opens itself runs ONNX Runtime with spinning off (PIPELINE_SPINNING): its idle intra-op
threads sleep instead of spin-waiting, leaving the cores to capture, pre- and post-processing. B0 `ort-int8`, 2
threads, 2 cores: pipelined 0.81–0.85× the inference ceiling with spinning, 0.95–0.99× without
(benchmarks/results/video-pipeline/). It also gets a performance hint (`infer_mode`, see `performance_hint`):
under policy `all` OpenVINO compiles for throughput (several streams) and the inference stage keeps
`backend.parallel_requests` frames in flight, passing them on in frame order; under `latest`, one frame at a time.
Every queue is bounded (`queue_size`), so memory is bounded whatever the rates. `stop()` drains: capture stops and
the frames already queued are processed and written; `stop(drain=False)` drops them (counted). Either way the
outputs are closed properly (a video is playable). Only numpy, OpenCV and the standard library here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import SegedgeError, first_line
from ..runtime.palette import overlay as _overlay
from ..testhooks import pause_point
from .sinks import Sink, open_sink
from .sources import Frame, Source, SourceOptions, open_source
from .stats import PipelineStats
from .views import Renderer, check_view

POLICIES = ("auto", "latest", "all")
INFER_MODES = ("auto", "latency", "throughput")
MAX_FAILURES_IN_A_ROW = 25
PIPELINE_SPINNING = False  # ONNX Runtime intra-op threads sleep when idle: the other stages share the cores
_EOS = object()

logger = logging.getLogger("segedge.video")


class BoundedQueue:
    """A FIFO of at most `bound` items between two stages (one producer, one consumer).

    `latest=True` makes it a mailbox of one: `put` replaces the waiting item (returned, to be counted as dropped)
    instead of blocking. `close()` ends the stream after the items already in it; `abort()` ends it now and returns
    the items that were waiting. `peak` is the most items it ever held.
    """

    def __init__(self, name: str, bound: int, latest: bool = False) -> None:
        if bound < 1:
            raise SegedgeError(f"queue size must be ≥ 1, got {bound}")
        self.name, self.bound, self.latest = name, (1 if latest else bound), latest
        self._items: list[Any] = []
        self._cv = threading.Condition()
        self._closed = False
        self._aborted = False
        self.peak = 0

    def put(self, item: Any) -> tuple[bool, Any]:
        """(accepted, replaced item or None). Blocks while full (not in latest mode); not accepted once aborted."""
        with self._cv:
            replaced = None
            if self.latest and self._items and not self._aborted:
                replaced = self._items.pop(0)
            while len(self._items) >= self.bound and not self._aborted:
                self._cv.wait(0.1)
            if self._aborted or self._closed:
                return False, replaced
            self._items.append(item)
            self.peak = max(self.peak, len(self._items))
            self._cv.notify_all()
            return True, replaced

    def wait_for_room(self) -> bool:
        """Block until `put` would not block (False once closed or aborted): lets a stage take its input only when
        its output has room, so under the latest policy it always takes the freshest frame."""
        with self._cv:
            while len(self._items) >= self.bound and not self._aborted and not self._closed:
                self._cv.wait(0.1)
            return not (self._aborted or self._closed)

    def get(self) -> Any:
        """The next item, or _EOS once closed and empty (or aborted)."""
        with self._cv:
            while not self._items and not self._closed and not self._aborted:
                self._cv.wait(0.1)
            if self._aborted or not self._items:
                return _EOS
            item = self._items.pop(0)
            self._cv.notify_all()
            return item

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def abort(self) -> list[Any]:
        with self._cv:
            self._aborted = True
            left, self._items = self._items, []
            self._cv.notify_all()
            return left

    def ready(self) -> bool:
        """Whether `get` would return at once (an item is waiting, or the stream has ended)."""
        with self._cv:
            return bool(self._items) or self._closed or self._aborted

    def __len__(self) -> int:
        with self._cv:
            return len(self._items)


@dataclass
class Result:
    """One processed frame."""

    index: int  # the frame's position in the source's stream
    name: str | None  # image sources: the input file's name
    frame: np.ndarray  # the BGR frame as read (after the source's resize / flip)
    labels: np.ndarray  # H×W uint8 class indices at the frame's size
    t_capture: float  # perf_counter time of capture
    latency_ms: float  # capture → labels ready
    timings: dict[str, float]  # this frame's milliseconds per stage (decode, pre, infer, post, …)
    view: np.ndarray | None = None  # the rendered view (overlay / mask / side image, or the labels), when rendered
    palette: np.ndarray | None = field(default=None, repr=False)
    _overlay: np.ndarray | None = field(default=None, repr=False)

    @property
    def overlay(self) -> np.ndarray:
        """The frame with class colours blended in (alpha 0.5), computed on first use."""
        if self._overlay is None:
            self._overlay = _overlay(self.frame, self.labels, self.palette, 0.5)
        return self._overlay


def _check_infer_mode(mode: str) -> str:
    if mode not in INFER_MODES:
        raise SegedgeError(f"unknown inference mode '{mode}': choose latency (one frame at a time), throughput "
                           "(several frames in flight where the runtime allows) or auto (throughput for files, "
                           "latency for live sources)")
    return mode


def performance_hint(infer_mode: str, drop_policy: str, live: bool) -> str:
    """The runtime hint for a model a pipeline opens: `infer_mode` unless auto; then throughput when every frame
    counts (policy all: files), latency when the newest frame does (latest: live sources)."""
    if _check_infer_mode(infer_mode) != "auto":
        return infer_mode
    policy = _check_policy(drop_policy)
    policy = policy if policy != "auto" else ("latest" if live else "all")
    return "throughput" if policy == "all" else "latency"


def _check_policy(policy: str) -> str:
    p = str(policy).lower()
    if p not in POLICIES:
        raise SegedgeError(f"unknown drop policy '{policy}': choose latest (drop stale frames, live sources), all "
                           "(every frame, files) or auto (latest for live sources, all otherwise)")
    return p


class Pipeline:
    """Frames from `source` through `model` into `outputs`, in four threads (see the module docstring).

    model: a Segmenter (left open), or a path Segmenter.load opens (closed with the pipeline; `target`, `threads`,
    `postprocess` and `infer_mode` — auto | latency | throughput — apply). source: a URI / path / camera index
    for `open_source` (`source_options` or the width/height/fps/loop/flip keywords apply) or a Source.
    outputs: URIs / paths for `open_sink`, or Sinks.
    on_result(Result) runs for every frame on the post-processing thread, on_stats(dict) about every
    `stats_interval` seconds; an exception in either stops the pipeline and is raised by run() / wait().
    Construction checks the input and outputs before loading the model, so mistakes fail fast. A Source object
    passed in is closed with the pipeline; a Segmenter passed in is not.
    """

    def __init__(self, model: Any, source: Any, outputs: Sequence[Any] | Any = (), *, view: str = "overlay",
                 alpha: float = 0.5, legend: bool = False, info: bool = False, drop_policy: str = "auto",
                 max_frames: int | None = None, queue_size: int = 4, target: str | None = None,
                 threads: int | None = None, postprocess: str = "fast",
                 on_result: Callable[[Result], Any] | None = None,
                 on_stats: Callable[[dict[str, Any]], Any] | None = None, stats_interval: float = 1.0,
                 source_options: SourceOptions | None = None, fps_out: float | None = None,
                 fourcc: str | None = None, render: bool | None = None, infer_mode: str = "auto",
                 log: Callable[[str], None] | None = None, **source_kwargs: Any) -> None:
        self.view = check_view(view)
        self.policy_asked = _check_policy(drop_policy)
        self.infer_mode = _check_infer_mode(infer_mode)
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                       or max_frames < 1):
            raise SegedgeError(f"max_frames must be a whole number ≥ 1 (or None for all), got {max_frames!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or not 1 <= queue_size <= 256:
            raise SegedgeError(f"queue_size must be a whole number from 1 to 256, got {queue_size!r}")
        if not stats_interval > 0:
            raise SegedgeError(f"stats_interval must be above 0 seconds, got {stats_interval!r}")
        self.max_frames, self.queue_size = max_frames, queue_size
        self.on_result, self.on_stats, self.stats_interval = on_result, on_stats, float(stats_interval)
        self.log = log or logger.info
        self._owned_model = False
        self.source: Source | None = None
        self.sinks: list[Sink] = []
        try:
            if isinstance(source, Source):
                if source_kwargs or source_options:
                    raise SegedgeError("source options (width, fps, …) apply to a URI; a Source object carries its own")
                self.source = source
            else:
                self.source = open_source(source, source_options, log=self.log, **source_kwargs)
            outs = [outputs] if isinstance(outputs, (str, os.PathLike, Sink)) else list(outputs or ())
            self.sinks = [open_sink(o, self.view, fps_out, fourcc) for o in outs]
            for s in self.sinks:
                s.check()
            if hasattr(model, "prepare") and hasattr(model, "backend"):
                self.seg = model
            else:
                from ..runtime import Segmenter

                self.seg = Segmenter.load(model, target=target, threads=threads, postprocess=postprocess,
                                          spinning=PIPELINE_SPINNING, 
                                          performance_hint=performance_hint(infer_mode, drop_policy,
                                                                            self.source.live))
                self._owned_model = True
            self.infer_parallel = max(1, int(getattr(self.seg.backend, "parallel_requests", 1)))
            self.renderer = Renderer(self.seg.palette, self.seg.class_names, self.view, alpha, legend, info)
        except BaseException:
            if self.source is not None and not isinstance(source, Source):
                self.source.close()
            if self._owned_model:
                self.seg.close()
            raise
        self.render = True if render is None else bool(render)  # False: Result.view stays None (labels only)
        self.policy = self.policy_asked
        self._stats = PipelineStats()
        self._stats.parallel["infer"] = self.infer_parallel
        self._threads: list[threading.Thread] = []
        self._q1: BoundedQueue | None = None
        self._q_pre: BoundedQueue | None = None
        self._q2: BoundedQueue | None = None
        self._q_out: BoundedQueue | None = None
        self._stop_reading = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._failed_sink: Sink | None = None
        self._started = False
        self._closed = False
        self.status = "new"
        self.written: list[str] = []
        self.failures: list[str] = []  # the first few per-frame failures, one line each
        self._stopped_by: str | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """Lines saying what runs: model, input, outputs, view, policy (valid once started)."""
        s = self.source
        lines = [f"model: {self.seg!r}"]
        lines.append(f"input: {s.describe()}" if s else "input: -")
        for k in self.sinks:
            lines.append(f"output: {k.describe()}")
        if not self.sinks:
            lines.append("output: none (results only)")
        bound = "1 frame, stale frames dropped" if self.policy == "latest" else f"{self.queue_size} frames"
        extra = f", max {self.max_frames} frames" if self.max_frames else ""
        lines.append(f"view: {self.view}; drop policy: {self.policy} (queue {bound}){extra}")
        if self.infer_parallel > 1:
            lines.append(f"inference: {self.infer_parallel} frames in flight (throughput mode)")
        return lines

    def start(self) -> "Pipeline":
        """Open the source and start the threads; returns at once (see wait / stop / iteration)."""
        if self._started:
            raise SegedgeError("this Pipeline was already started; make a new one to run again")
        if self._closed:
            raise SegedgeError("this Pipeline is closed; make a new one")
        src = self.source
        assert src is not None
        src.open()  # may raise (one line): the pipeline is then simply not started
        self._started = True
        self.policy = self.policy_asked if self.policy_asked != "auto" else ("latest" if src.live else "all")
        latest = self.policy == "latest"
        self._q1 = BoundedQueue("capture→pre", 1 if latest else self.queue_size, latest=latest)
        self._q_pre = BoundedQueue("pre→infer", 1 if latest else self.queue_size)
        self._q2 = BoundedQueue("infer→post", 1 if latest else self.queue_size)
        for k in self.sinks:
            k.open(src.fps, src.live)
        for line in self.describe():
            self.log(line)
        self.status = "running"
        self._stats.start()
        self._next_stats = time.perf_counter() + self.stats_interval
        for name, fn in (("capture", self._capture), ("pre", self._pre), ("infer", self._infer),
                         ("post", self._post)):
            t = threading.Thread(target=fn, name=f"segedge-{name}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        return self

    def stop(self, drain: bool = True) -> None:
        """Stop reading; with drain, the frames already queued are still processed and written, else dropped.
        Thread-safe, and safe to call from a signal handler; returns at once (wait() for the end)."""
        self._stopped_by = self._stopped_by or "stop"
        self._stop_reading.set()
        if self.source is not None:
            self.source.interrupt()
        if not drain:
            self._hard_stop()

    def _hard_stop(self) -> None:
        for q in (self._q1, self._q_pre, self._q2):
            if q is not None:
                left = q.abort()
                if left:
                    self._stats.count("dropped", len(left))
        if self._q_out is not None:
            self._q_out.abort()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the end (None: forever) and return the final stats; raises the error that ended the run."""
        if not self._started:
            raise SegedgeError("the Pipeline was not started; call start() or run()")
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._done.wait(0.1):  # short waits: the main thread keeps handling signals
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the pipeline is still running after {timeout} s")
        for t in self._threads:
            t.join()
        if self._error is not None:
            raise self._error
        return self.stats()

    @property
    def running(self) -> bool:
        return self._started and not self._done.is_set()

    def run(self) -> dict[str, Any]:
        """start() and wait(): process the whole input; returns the final stats."""
        self.start()
        return self.wait()

    def close(self) -> None:
        """Stop (dropping queued frames), wait, release the source and the model when the pipeline loaded it."""
        if self._closed:
            return
        if self._started and not self._done.is_set():
            self.stop(drain=False)
            self._done.wait(10)
        for t in self._threads:
            t.join(10)
        self._closed = True
        if self.source is not None:
            self.source.close()
        if not self._started:
            for k in self.sinks:
                k.abort()
        if self._owned_model:
            self.seg.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Result]:
        """Start (if not started) and yield each Result in order; leaving the loop early stops the pipeline."""
        if self._started and self._q_out is None:
            raise SegedgeError("iterate over a Pipeline before starting it (or use on_result with start())")
        if not self._started:
            self._q_out = BoundedQueue("results", self.queue_size)
            self.start()
        q = self._q_out
        assert q is not None
        finished = False
        try:
            while True:
                item = q.get()
                if item is _EOS:
                    break
                yield item
            finished = True
        finally:
            if not finished:
                self.stop(drain=False)
                self._done.wait(10)
        self.wait()

    # -- stats --------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters, FPS, latency percentiles, per-stage timings, queue peaks, source events, status (a dict)."""
        snap = self._stats.snapshot()
        snap["queues"] = {q.name: {"bound": q.bound, "peak": q.peak}
                          for q in (self._q1, self._q_pre, self._q2, self._q_out) if q is not None}
        src = self.source
        snap["source_events"] = dict(src.events) if src is not None else {}
        if src is not None and src.live and snap["stages_ms"]:  # a live source's "decode" is mostly the wait for
            work = {k: v for k, v in snap["stages_ms"].items() if k != "decode"}  # the next frame: not a bottleneck
            snap["slowest_stage"] = max(work, key=lambda k: work[k]["mean"] or 0.0) if work else None
        snap.update({
            "status": self.status, "error": first_line(self._error) if self._error else None,
            "policy": self.policy, "view": self.view, "input": src.describe() if src else None,
            "outputs": list(self.written) if self._done.is_set() else [k.describe() for k in self.sinks],
            "model": repr(self.seg), "failures": list(self.failures),
        })
        return snap

    # -- stages -------------------------------------------------------------------------------------------------
    def _fail(self, exc: BaseException, hard: bool = True) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc
        self._stop_reading.set()
        if self.source is not None:
            self.source.interrupt()
        if hard:
            self._hard_stop()

    def _capture(self) -> None:
        q1, src, stats = self._q1, self.source, self._stats
        assert q1 is not None and src is not None
        try:
            while not self._stop_reading.is_set():
                if self.policy == "all" and self.max_frames and stats.counters["read"] >= self.max_frames:
                    break
                frame = src.read()
                if frame is None:
                    break
                stats.count("read")
                stats.stage("decode", frame.decode_ms)
                pause_point("video.frame_read")
                accepted, replaced = q1.put(frame)
                if replaced is not None:
                    stats.count("dropped")
                if not accepted:
                    stats.count("dropped")
                    break
        except BaseException as e:  # the source failed (lost stream, unreadable input): finish what is queued
            self._fail(e, hard=False)
        finally:
            q1.close()

    def _pre(self) -> None:
        q1, q_pre, seg, stats = self._q1, self._q_pre, self.seg, self._stats
        assert q1 is not None and q_pre is not None
        in_a_row = 0
        try:
            while q_pre.wait_for_room():  # take a frame only when inference has room: the freshest one under latest
                frame = q1.get()
                if frame is _EOS:
                    break
                try:
                    t0 = time.perf_counter()
                    batch = seg.prepare(frame.image)
                    pre_ms = (time.perf_counter() - t0) * 1e3
                except Exception as e:
                    in_a_row = self._frame_failed(frame, "pre-processing", e, in_a_row)
                    continue
                in_a_row = 0
                stats.stage("pre", pre_ms)
                accepted, _ = q_pre.put((frame, batch, {"decode": frame.decode_ms, "pre": pre_ms}))
                if not accepted:
                    stats.count("dropped")
                    break
        except BaseException as e:
            self._fail(e)
        finally:
            left = q1.abort()  # inference stopped early or failed: whatever capture still hands over is dropped
            if left:
                stats.count("dropped", len(left))
            q_pre.close()

    def _infer(self) -> None:
        """Submit prepared frames, keeping up to `backend.parallel_requests` in flight, and pass the outputs on in
        frame order. The oldest inference is collected as soon as the window is full or no frame is waiting, so a
        lone frame is never held back for the next one."""
        q_pre, q2, seg, stats = self._q_pre, self._q2, self.seg, self._stats
        assert q_pre is not None and q2 is not None
        depth = self.infer_parallel
        pending: deque[tuple[Frame, dict[str, float], float, Any]] = deque()
        taken = 0
        self._in_a_row = 0
        try:
            while True:
                if pending and (len(pending) >= depth or not q_pre.ready()):
                    if not self._collect(pending.popleft(), q2):
                        break
                    continue
                if self.max_frames and taken >= self.max_frames:
                    break
                item = q_pre.get()
                if item is _EOS:
                    break
                frame, batch, timings = item
                taken += 1
                t1 = time.perf_counter()
                try:
                    pending.append((frame, timings, t1, seg.submit(batch)))
                except Exception as e:
                    self._in_a_row = self._frame_failed(frame, "inference", e, self._in_a_row)
                if self.max_frames and taken >= self.max_frames:
                    self._stop_reading.set()
                    self.source.interrupt()  # type: ignore[union-attr]
            while pending:
                if not self._collect(pending.popleft(), q2):
                    break
        except BaseException as e:
            self._fail(e)
        finally:
            for frame, _t, _t1, job in pending:  # stopped early: wait for what still runs, drop it (counted)
                with contextlib.suppress(Exception):
                    job.wait()
                stats.count("dropped")
            left = q_pre.abort()  # max_frames reached or failed: whatever is still prepared is dropped
            if left:
                stats.count("dropped", len(left))
            q2.close()

    def _collect(self, job: tuple[Frame, dict[str, float], float, Any], q2: BoundedQueue) -> bool:
        """Wait for one submitted inference and queue its output for post-processing; False once q2 refuses."""
        frame, timings, t1, pending = job
        try:
            out = pending.wait()
            self.seg.backend.synchronize()
        except Exception as e:
            self._in_a_row = self._frame_failed(frame, "inference", e, self._in_a_row)
            return True
        self._in_a_row = 0
        timings["infer"] = (time.perf_counter() - t1) * 1e3
        self._stats.stage("infer", timings["infer"])
        accepted, _ = q2.put((frame, out[0], timings))
        if not accepted:
            self._stats.count("dropped")
        return accepted

    def _frame_failed(self, frame: Frame, stage: str, e: BaseException, in_a_row: int) -> int:
        """Count and note a frame that failed in `stage`; the new run of failures in a row, or a SegedgeError once
        MAX_FAILURES_IN_A_ROW frames in a row have failed (a broken model, not a bad frame)."""
        self._stats.count("failed")
        in_a_row += 1
        self._note_failure(frame, stage, e)
        if in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise SegedgeError(f"{stage} failed on {in_a_row} frames in a row; last: {first_line(e)}") from e
        return in_a_row

    def _note_failure(self, frame: Frame, stage: str, e: BaseException) -> None:
        if len(self.failures) < 10:
            self.failures.append(f"frame {frame.index}{f' ({frame.name})' if frame.name else ''}: {stage}: "
                                 f"{first_line(e)}")
        if len(self.failures) <= 3:
            self.log(f"warning: frame {frame.index} failed ({stage}): {first_line(e)}")

    def _post(self) -> None:
        q2, stats, seg = self._q2, self._stats, self.seg
        assert q2 is not None
        keep_going = True
        try:
            while True:
                item = q2.get()
                if item is _EOS:
                    break
                frame, out, timings = item
                try:
                    t0 = time.perf_counter()
                    labels = seg.labels_from_output(out, frame.image.shape[:2])
                    t1 = time.perf_counter()
                except Exception as e:
                    stats.count("failed")
                    self._note_failure(frame, "post-processing", e)
                    continue
                latency = (t1 - frame.t_capture) * 1e3
                stats.stage("post", (t1 - t0) * 1e3)
                stats.frame_done(latency)
                timings["post"] = (t1 - t0) * 1e3
                result = Result(frame.index, frame.name, frame.image, labels, frame.t_capture, latency, timings,
                                palette=seg.palette)
                if self.render:
                    info = f"{stats.live_fps():.1f} fps  {latency:.0f} ms" if self.renderer.info else None
                    result.view = self.renderer.render(frame.image, labels, info)
                    t2 = time.perf_counter()
                    timings["render"] = (t2 - t1) * 1e3
                    stats.stage("render", timings["render"])
                t2 = time.perf_counter()
                for k in self.sinks:
                    try:
                        if not k.write(result):
                            keep_going = False
                    except BaseException:
                        self._failed_sink = k
                        raise
                if self.sinks:
                    timings["write"] = (time.perf_counter() - t2) * 1e3
                    stats.stage("write", timings["write"])
                if not keep_going and not self._stop_reading.is_set():
                    self.log("the display was closed: stopping")
                    self.stop(drain=False)
                if self.on_result is not None:
                    self.on_result(result)
                pause_point("video.frame_written")
                if self._q_out is not None:
                    self._q_out.put(result)
                if self.on_stats is not None and time.perf_counter() >= self._next_stats:
                    self._next_stats = time.perf_counter() + self.stats_interval
                    self.on_stats(self.stats())
        except BaseException as e:
            self._fail(e)
        finally:
            self._finish()

    def _finish(self) -> None:
        """On the post thread (displays need it): close the outputs (abort the one that failed), settle status."""
        self._stats.stop()
        for k in self.sinks:
            try:
                if k is self._failed_sink:
                    k.abort()
                    continue
                line = k.close()
                if line:
                    self.written.append(line)
            except BaseException as e:  # closing failed (disk full on the final flush): nothing half-written kept
                k.abort()
                self._fail(e, hard=False)
        if self._error is not None:
            self.status = "failed"
        elif self._stopped_by is not None:
            self.status = "stopped"
        else:
            self.status = "completed"
        if self._q_out is not None:
            self._q_out.close()
        if self.on_stats is not None and self._error is None:
            try:
                self.on_stats(self.stats())
            except BaseException as e:
                self._fail(e, hard=False)
        self._done.set()


def run_stream(model: Any, source: Any, outputs: Sequence[Any] | Any = (), **options: Any) -> Iterator[Result]:
    """Iterate over a stream's Results (see Pipeline for the options); the pipeline closes when the loop ends."""
    with Pipeline(model, source, outputs, **options) as p:
        yield from p


@contextlib.contextmanager
def stop_on_signals(pipeline: Pipeline, log: Callable[[str], None] | None = None,
                    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[dict[str, Any]]:
    """While active, the first SIGINT / SIGTERM stops the pipeline with a drain (queued frames are written and the
    outputs closed), a second one stops it without. Yields a dict whose "signal" is the first signal's number.
    Only from the main thread (elsewhere it does nothing: signals belong to the host program)."""
    state: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    say = log or logger.info

    def handler(signum: int, _frame: Any) -> None:
        if state["signal"] is None:
            state["signal"] = signum
            pipeline._stopped_by = signal.Signals(signum).name
            say(f"{signal.Signals(signum).name}: stopping, finishing the queued frames (again to stop now)")
            pipeline.stop(drain=True)
        else:
            say("stopping now: queued frames dropped, outputs closed")
            pipeline.stop(drain=False)

    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    try:
        yield state
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = ["BoundedQueue", "POLICIES", "Pipeline", "Result", "run_stream", "stop_on_signals"]

