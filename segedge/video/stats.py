"""Counters, per-stage timings and capture-to-labels latency of a running pipeline, in bounded memory.

Every figure is kept as a `Reservoir`: count, mean, min and max exactly, percentiles from a uniform random sample
of at most `size` values (Vitter's algorithm R), so an hour-long camera run uses the same memory as a short clip.
FPS is both the average over the run and a live rate over the last few seconds.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any

import numpy as np

STAGES = ("decode", "pre", "infer", "post", "render", "write")
COUNTERS = ("read", "processed", "dropped", "failed")


class Reservoir:
    """Running count / mean / min / max, and percentiles from a bounded uniform sample."""

    def __init__(self, size: int = 4096, seed: int = 0) -> None:
        self.size = size
        self.n = 0
        self.total = 0.0
        self.lo = float("inf")
        self.hi = float("-inf")
        self._sample: list[float] = []
        self._rng = random.Random(seed)

    def add(self, x: float) -> None:
        self.n += 1
        self.total += x
        self.lo = min(self.lo, x)
        self.hi = max(self.hi, x)
        if len(self._sample) < self.size:
            self._sample.append(x)
        else:
            j = self._rng.randrange(self.n)
            if j < self.size:
                self._sample[j] = x

    def summary(self, digits: int = 3) -> dict[str, Any]:
        """{"n", "mean", "p50", "p90", "p99", "min", "max"} (values None when empty)."""
        if not self.n:
            return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "min": None, "max": None}
        p50, p90, p99 = np.percentile(np.asarray(self._sample), [50, 90, 99])
        r = lambda v: round(float(v), digits)  # noqa: E731
        return {"n": self.n, "mean": r(self.total / self.n), "p50": r(p50), "p90": r(p90), "p99": r(p99),
                "min": r(self.lo), "max": r(self.hi)}


class PipelineStats:
    """Thread-safe figures of one pipeline run; `snapshot()` is the JSON-ready view (also what --stats writes)."""

    def __init__(self, reservoir: int = 4096, window_s: float = 3.0) -> None:
        self._lock = threading.Lock()
        self.counters = {k: 0 for k in COUNTERS}
        self.stages = {k: Reservoir(reservoir, seed=i) for i, k in enumerate(STAGES)}
        self.latency = Reservoir(reservoir, seed=99)
        self._done: deque[float] = deque()  # completion times within the live window
        self._window = window_s
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.queue_peaks: dict[str, int] = {}
        self.queue_bounds: dict[str, int] = {}
        self.parallel: dict[str, int] = {}  # stages running several frames at once (inference in throughput mode)

    def start(self) -> None:
        self.t_start = time.perf_counter()

    def stop(self) -> None:
        if self.t_end is None:
            self.t_end = time.perf_counter()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def stage(self, name: str, ms: float) -> None:
        with self._lock:
            self.stages[name].add(ms)

    def frame_done(self, latency_ms: float) -> None:
        """A frame's labels are ready: count it, record its capture-to-labels latency, feed the live rate."""
        now = time.perf_counter()
        with self._lock:
            self.counters["processed"] += 1
            self.latency.add(latency_ms)
            self._done.append(now)
            while self._done and now - self._done[0] > self._window:
                self._done.popleft()

    def elapsed(self) -> float:
        if self.t_start is None:
            return 0.0
        return (self.t_end or time.perf_counter()) - self.t_start

    def live_fps(self) -> float:
        """Frames completed per second over the last few seconds."""
        now = time.perf_counter()
        with self._lock:
            while self._done and now - self._done[0] > self._window:
                self._done.popleft()
            n = len(self._done)
            if n < 2:
                return 0.0
            span = max(now - self._done[0], 1e-9)
        return n / span

    def snapshot(self) -> dict[str, Any]:
        """Counters, FPS, latency percentiles and per-stage timings (milliseconds) so far."""
        with self._lock:
            counters = dict(self.counters)
            stages = {k: v.summary() for k, v in self.stages.items() if v.n}
            latency = self.latency.summary()
        elapsed = self.elapsed()
        # a stage with n frames in flight passes one frame per mean/n milliseconds: that is what limits throughput
        slowest = max(stages.items(), key=lambda kv: (kv[1]["mean"] or 0.0) / self.parallel.get(kv[0], 1))[0] \
            if stages else None
        return {
            "frames": counters,
            "elapsed_s": round(elapsed, 3),
            "fps": {"average": round(counters["processed"] / elapsed, 3) if elapsed > 0 else None,
                    "live": round(self.live_fps(), 3)},
            "latency_ms": latency,
            "stages_ms": stages,
            "slowest_stage": slowest,
            "parallel": dict(self.parallel),
            "queues": {k: {"bound": self.queue_bounds.get(k), "peak": v} for k, v in self.queue_peaks.items()},
        }


def format_line(snap: dict[str, Any]) -> str:
    """One line for logs: frames, FPS, latency percentiles."""
    f, lat = snap["frames"], snap["latency_ms"]
    fps = snap["fps"]["live"] or snap["fps"]["average"] or 0.0
    line = f"{f['processed']} frames, {fps:.1f} fps"
    if lat["n"]:
        line += f", latency p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} / p99 {lat['p99']:.0f} ms"
    extra = [f"{f[k]} {k}" for k in ("dropped", "failed") if f.get(k)]
    return line + (f" ({', '.join(extra)})" if extra else "")


def rich_table(snap: dict[str, Any], title: str | None = None) -> Any:
    """A rich renderable of a snapshot: counters and FPS, then latency and each stage's mean / p50 / p90 / p99."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    f = snap["frames"]
    src = {k: v for k, v in (snap.get("source_events") or {}).items() if v}
    counts = "frames: " + ", ".join(f"{k} {v}" for k, v in f.items())
    if src:
        counts += "; input: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in src.items())
    fps = snap["fps"]
    rate = f"fps: {fps['average'] or 0:.1f} average"
    if snap.get("status") in (None, "running"):
        rate += f", {fps['live']:.1f} over the last seconds"
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("ms")
    for c in ("mean", "p50", "p90", "p99"):
        t.add_column(c, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    lat = snap["latency_ms"]
    t.add_row("latency (capture → labels)", fmt(lat["mean"]), fmt(lat["p50"]), fmt(lat["p90"]), fmt(lat["p99"]))
    for name, st in snap["stages_ms"].items():
        mark = " (slowest)" if name == snap.get("slowest_stage") else ""
        t.add_row(f"  {name}{mark}", fmt(st["mean"]), fmt(st["p50"]), fmt(st["p90"]), fmt(st["p99"]))
    parts = [Text(title, style="bold")] if title else []
    return Group(*parts, Text(counts), Text(rate), t)


__all__ = ["COUNTERS", "PipelineStats", "Reservoir", "STAGES", "format_line", "rich_table"]
