"""Throughput of one shared Segmenter called from 1, 2 and 4 threads, and RSS over a soak of many calls.

    python benchmarks/runtime_threads.py --folder exports/topformer-t-384x512 --target ort-int8 --frames DIR

Every result of the threaded runs is compared with the single-thread result for the same frame (a mismatch is
counted, not hidden). Each thread count runs in rounds that rotate the order, so machine drift spreads over all of
them. Writes JSON to --out (default: stdout). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from segedge.doctor import cpu_report
from segedge.runtime import Segmenter


def _frames(folder: Path, n: int) -> list[np.ndarray]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:n]
    if not files:
        sys.exit(f"error: no images in {folder}")
    return [cv2.imread(str(p)) for p in files]


def _run_threads(seg: Segmenter, frames: list[np.ndarray], expected: list[np.ndarray], threads: int,
                 calls: int) -> tuple[float, int]:
    """(seconds for `calls` predictions spread over `threads` threads, mismatches against single-thread results)."""
    mismatches = [0]
    lock = threading.Lock()
    per = calls // threads

    def work(k: int) -> None:
        bad = 0
        for i in range(per):
            j = (k * per + i) % len(frames)
            if not np.array_equal(seg.predict(frames[j]), expected[j]):
                bad += 1
        with lock:
            mismatches[0] += bad

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return time.perf_counter() - t0, mismatches[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--frames", type=Path, required=True)
    ap.add_argument("--runtime-threads", type=int, default=None, help="intra-op threads of the runtime")
    ap.add_argument("--calls", type=int, default=120, help="predictions per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--soak", type=int, default=2000, help="calls of the soak (RSS sampled every 500)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    frames = _frames(a.frames, 24)
    seg = Segmenter.load(a.folder, target=a.target, threads=a.runtime_threads)
    expected = [seg.predict(f) for f in frames]
    counts = (1, 2, 4)
    secs: dict[int, list[float]] = {n: [] for n in counts}
    bad: dict[int, int] = {n: 0 for n in counts}
    _run_threads(seg, frames, expected, 4, 16)  # warm-up: every thread's state (OpenVINO infer requests) exists
    for r in range(a.rounds):
        for n in counts[r % 3:] + counts[:r % 3]:
            s, m = _run_threads(seg, frames, expected, n, a.calls)
            secs[n].append(s)
            bad[n] += m
    proc = psutil.Process()
    rss = []
    for i in range(a.soak):
        seg.predict(frames[i % len(frames)])
        if i % 500 == 0 or i == a.soak - 1:
            rss.append([i, proc.memory_info().rss / 1e6])
    res = {
        "cpu": cpu_report(), "folder": str(a.folder), "target": a.target, "backend": seg.backend.describe(),
        "calls_per_measurement": a.calls, "rounds": a.rounds,
        "throughput_fps": {n: a.calls / float(np.median(secs[n])) for n in counts},
        "speedup_vs_1_thread": {n: float(np.median(secs[1]) / np.median(secs[n])) for n in counts},
        "mismatches": bad, "soak_calls": a.soak, "rss_mb": rss,
        "rss_growth_after_first_sample_mb": rss[-1][1] - rss[0][1] if rss else None,
    }
    seg.close()
    text = json.dumps(res, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
