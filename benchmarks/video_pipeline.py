"""Pipelined vs sequential video throughput, and latency with a live-rate source under both drop policies.

    python benchmarks/video_pipeline.py --folder exports/topformer-t-384x512 [--target onnx] [--frames 1000]

In one run, on one generated 360x480 clip (`--frames`, mp4v) and the same work per frame (decode, pre-process,
inference, post-processing, overlay render; outputs discarded):

- pure inference: the backend alone on one prepared frame, repeated → 1 / time is the ceiling of any loop; measured
  before and after every round, because a shared machine's speed drifts by 20 % within minutes;
- sequential: read → predict → overlay, one frame after the other in one thread (a plain camera loop);
- pipelined: `segedge.video.Pipeline` with policy `all` (capture, pre, infer, post+render in four threads), on the
  model opened as `segedge run` opens it for a file (`--infer-mode auto`: OpenVINO's throughput hint, several
  requests in flight; `latency`: one at a time);
- pure throughput: that model alone with its requests kept in flight (no other stage): what its streams give at best;

sequential and pipelined alternate over `--rounds` rounds so machine drift spreads over both. Then a live-rate
synthetic camera (`synthetic://`, frames time-stamped when they are "exposed", a 4-frame driver buffer) runs at
each `--live-fps` rate (default: half and 1.5x the measured pipelined throughput) with policy `latest` and `all`:
capture-to-labels latency p50/p90/p99, frames processed, dropped by the pipeline and missed by the "driver".
Without --folder the demo TopFormer-T is exported to exports/topformer-t-384x512 first (needs torch).
Writes JSON to --out (default: stdout after the table). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segedge.runtime import Segmenter
from segedge.doctor import cpu_report
from segedge.video import Pipeline, Renderer, run_stream
from segedge.video.pipeline import performance_hint
from segedge.video.sources import SyntheticSource


def make_clip(path: Path, frames: int, height: int = 360, width: int = 480, fps: float = 30.0) -> Path:
    """A generated street-like clip (the synthetic:// scene), mp4v."""
    src = SyntheticSource("synthetic://", width, height, fps=0, frames=frames)
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    with src:
        for f in src:
            wr.write(f.image)
    wr.release()
    return path


def pure_inference(seg: Segmenter, frame: np.ndarray, calls: int) -> dict[str, float]:
    batch = seg.prepare(frame)
    for _ in range(5):
        seg.infer(batch)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        seg.infer(batch)
        seg.backend.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"calls": calls, "median_ms": round(med * 1e3, 3), "mean_ms": round(statistics.fmean(times) * 1e3, 3),
            "fps_ceiling": round(1 / med, 2)}


def pure_throughput(seg: Segmenter, frame: np.ndarray, calls: int) -> dict[str, float]:
    """Frames per second with `backend.parallel_requests` inferences kept in flight on one prepared frame."""
    batch, depth = seg.prepare(frame), seg.backend.parallel_requests
    for _ in range(2 * depth):
        seg.submit(batch).wait()
    window: list[Any] = []
    t0 = time.perf_counter()
    for _ in range(calls):
        if len(window) == depth:
            window.pop(0).wait()
        window.append(seg.submit(batch))
    for job in window:
        job.wait()
    dt = time.perf_counter() - t0
    return {"calls": calls, "requests_in_flight": depth, "fps": round(calls / dt, 2)}


def sequential(seg: Segmenter, clip: Path, renderer: Renderer) -> dict[str, float]:
    cap = cv2.VideoCapture(str(clip))
    n = 0
    t0 = time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        labels = seg.predict(frame)
        renderer.render(frame, labels)
        n += 1
    dt = time.perf_counter() - t0
    cap.release()
    return {"frames": n, "seconds": round(dt, 3), "fps": round(n / dt, 2)}


def pipelined(seg: Segmenter, clip: Path, queue_size: int) -> dict[str, Any]:
    with Pipeline(seg, clip, [], view="overlay", drop_policy="all", queue_size=queue_size,
                  log=lambda _m: None) as p:
        st = p.run()
    return {"frames": st["frames"]["processed"], "seconds": st["elapsed_s"], "fps": st["fps"]["average"],
            "stages_ms": {k: v["mean"] for k, v in st["stages_ms"].items()}, "slowest_stage": st["slowest_stage"],
            "latency_ms": st["latency_ms"]}


def _window(samples: list[tuple[float, float]], lo: float, hi: float) -> dict[str, float] | None:
    """p50/p99 latency (ms) of the frames captured in [lo, hi) seconds after the first one."""
    lat = [ms for t, ms in samples if lo <= t < hi]
    if not lat:
        return None
    return {"frames": len(lat), "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2)}


def live(seg: Segmenter, fps: float, seconds: float, policy: str, queue_size: int,
         window: float = 60.0) -> dict[str, Any]:
    """A live-rate synthetic camera; latency overall and in the first and last `window` seconds (is it flat?)."""
    frames = max(10, int(round(fps * seconds)))
    uri = f"synthetic://?width=480&height=360&fps={fps:g}&frames={frames}"
    samples: list[tuple[float, float]] = []
    with Pipeline(seg, uri, [], view="overlay", drop_policy=policy, queue_size=queue_size,
                  log=lambda _m: None, on_result=lambda r: samples.append((r.t_capture, r.latency_ms))) as p:
        st = p.run()
    lat = st["latency_ms"]
    t0 = samples[0][0] if samples else 0.0
    rel = [(t - t0, ms) for t, ms in samples]
    end = rel[-1][0] if rel else 0.0
    w = min(window, end / 2) if end else window
    return {"live_fps": fps, "policy": policy, "frames_offered": frames, **st["frames"],
            "missed_by_driver": st["source_events"].get("missed", 0), "fps": st["fps"]["average"],
            "latency_ms": {k: lat[k] for k in ("p50", "p90", "p99", "max")},
            "window_s": round(w, 1), "first_window": _window(rel, 0.0, w),
            "last_window": _window(rel, end - w, end + 1.0)}


def soak(seg: Segmenter, frames: int, every: int = 500) -> dict[str, Any]:
    """`frames` frames through run_stream (synthetic source, policy all), RSS sampled every `every` frames."""
    import psutil

    proc, rss = psutil.Process(), []
    for r in run_stream(seg, f"synthetic://?width=480&height=360&frames={frames}", drop_policy="all",
                        log=lambda _m: None):
        if r.index % every == 0 or r.index == frames - 1:
            rss.append([r.index, round(proc.memory_info().rss / 1e6, 1)])
    warm = next((mb for i, mb in rss if i >= every), rss[0][1] if rss else 0.0)
    return {"frames": frames, "rss_mb": rss, "growth_after_warmup_mb": round(rss[-1][1] - warm, 1) if rss else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, help="export folder (default: the demo TopFormer-T, exported if needed)")
    ap.add_argument("--target", default=None)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of the runtime")
    ap.add_argument("--no-spin", action="store_true", help="ONNX Runtime: idle intra-op threads sleep, not spin")
    ap.add_argument("--infer-mode", default="auto", choices=("auto", "latency", "throughput"),
                    help="the pipelined runs' model: as `segedge run` opens it for a file (auto), or forced")
    ap.add_argument("--frames", type=int, default=1000, help="frames of the generated 360x480 clip")
    ap.add_argument("--rounds", type=int, default=2, help="sequential / pipelined alternations")
    ap.add_argument("--queue-size", type=int, default=4)
    ap.add_argument("--live-fps", default="auto", help="comma-separated rates, or auto (0.5x and 1.5x throughput)")
    ap.add_argument("--live-seconds", type=float, default=10.0, help="length of each live run")
    ap.add_argument("--live-window", type=float, default=60.0,
                    help="seconds compared at the start and end of live runs")
    ap.add_argument("--soak", type=int, default=0, help="frames of a run_stream soak with RSS samples (0: none)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    folder = a.folder
    if folder is None:
        from segedge.commands.run import resolve_model

        folder = resolve_model("topformer-t", a.target, lambda m: print(m, file=sys.stderr))
    spin = {"spinning": False} if a.no_spin else {}
    seg = Segmenter.load(folder, target=a.target, threads=a.threads, **spin)
    hint = performance_hint(a.infer_mode, "all", live=False)
    seg_pipe = Segmenter.load(folder, target=a.target, threads=a.threads, performance_hint=hint, **spin) \
        if hint != "latency" else seg
    renderer = Renderer(seg.palette, seg.class_names, "overlay")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", a.frames)
        first = cv2.VideoCapture(str(clip)).read()[1]
        print(f"model {seg!r}; clip {a.frames} frames 360x480; pipelined with the {hint} hint, "
              f"{seg_pipe.backend.parallel_requests} requests in flight", file=sys.stderr)
        seq, pipe, ceilings, streams = [], [], [], []
        for r in range(a.rounds):  # the ceiling is measured in every round too: this machine's speed drifts
            ceilings.append(pure_inference(seg, first, min(100, a.frames)))
            order = (("seq", "pipe") if r % 2 == 0 else ("pipe", "seq"))
            for what in order:
                if what == "seq":
                    seq.append(sequential(seg, clip, renderer))
                else:
                    pipe.append(pipelined(seg_pipe, clip, a.queue_size))
                print(f"round {r + 1} {what}: {(seq if what == 'seq' else pipe)[-1]['fps']} fps", file=sys.stderr)
            ceilings.append(pure_inference(seg, first, min(100, a.frames)))
            streams.append(pure_throughput(seg_pipe, first, min(100, a.frames)))
            print(f"round {r + 1} pure inference before / after: {ceilings[-2]['fps_ceiling']} / "
                  f"{ceilings[-1]['fps_ceiling']} fps; pure throughput "
                  f"{streams[-1]['fps']} fps", file=sys.stderr)
    seq_fps = statistics.median(x["fps"] for x in seq)
    pipe_fps = statistics.median(x["fps"] for x in pipe)
    infer = {"runs": ceilings, "fps_ceiling": round(statistics.median(c["fps_ceiling"] for c in ceilings), 2),
             "median_ms": round(statistics.median(c["median_ms"] for c in ceilings), 3)}
    # per round: pipelined FPS over the mean of the ceilings measured just before and just after it
    around = [statistics.fmean([ceilings[2 * r]["fps_ceiling"], ceilings[2 * r + 1]["fps_ceiling"]])
              for r in range(len(pipe))]
    per_round = [round(p["fps"] / c, 3) for p, c in zip(pipe, around)]
    rates = ([round(pipe_fps * 0.5, 1), round(min(240.0, pipe_fps * 1.5), 1)] if a.live_fps == "auto"
             else [float(x) for x in a.live_fps.split(",") if x.strip()])
    live_runs = []
    for fps in rates:
        for policy in ("latest", "all"):
            model = seg_pipe if performance_hint(a.infer_mode, policy, live=True) == "throughput" else seg
            live_runs.append(live(model, fps, a.live_seconds, policy, a.queue_size, a.live_window))
            lr = live_runs[-1]
            print(f"live {fps:g} fps, {policy}: latency p50 {lr['latency_ms']['p50']} / p99 "
                  f"{lr['latency_ms']['p99']} ms, processed {lr['processed']}, dropped {lr['dropped']}, "
                  f"missed {lr['missed_by_driver']}; first {lr['window_s']} s {lr['first_window']}, last "
                  f"{lr['last_window']}", file=sys.stderr)
    soaked = soak(seg, a.soak) if a.soak else None
    if soaked:
        print(f"soak {a.soak} frames: RSS {soaked['rss_mb']}, growth after warm-up {soaked['growth_after_warmup_mb']} "
              "MB", file=sys.stderr)
    seg.close()
    seg_pipe.close()
    stream_fps = statistics.median(x["fps"] for x in streams)
    result = {
        "model": repr(seg), "folder": str(folder), "threads": a.threads, "spinning": not a.no_spin,
        "clip": {"frames": a.frames, "size": [360, 480]},
        "machine": {"python": platform.python_version(), **cpu_report()},
        "pure_inference": infer,
        "sequential": {"fps_median": seq_fps, "runs": seq},
        "pipelined": {"fps_median": pipe_fps, "runs": pipe, "performance_hint": hint,
                      "requests_in_flight": streams[0]["requests_in_flight"] if streams else 1},
        "pure_throughput": {"fps_median": stream_fps, "runs": streams},
        "pipelined_vs_pure_throughput": round(pipe_fps / stream_fps, 3),
        "speedup_pipelined_vs_sequential": round(pipe_fps / seq_fps, 3),
        "pipelined_vs_inference_ceiling": round(pipe_fps / infer["fps_ceiling"], 3),
        "pipelined_vs_ceiling_per_round": per_round,
        "live": live_runs,
        "soak": soaked,
    }
    print(f"\n| loop | FPS |\n|---|---:|\n| 1 / pure inference | {infer['fps_ceiling']:.1f} |\n"
          f"| pure throughput ({hint}, {result['pipelined']['requests_in_flight']} in flight) | {stream_fps:.1f} |\n"
          f"| sequential | {seq_fps:.1f} |\n| pipelined (all) | {pipe_fps:.1f} |\n", file=sys.stderr)
    print("| live fps | policy | latency p50 | p90 | p99 ms | processed | dropped | missed |\n"
          "|---:|---|---:|---:|---:|---:|---:|---:|", file=sys.stderr)
    for lr in live_runs:
        la = lr["latency_ms"]
        print(f"| {lr['live_fps']:g} | {lr['policy']} | {la['p50']} | {la['p90']} | {la['p99']} | "
              f"{lr['processed']} | {lr['dropped']} | {lr['missed_by_driver']} |", file=sys.stderr)
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
