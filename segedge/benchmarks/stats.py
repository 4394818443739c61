"""Small pure functions behind the benchmark numbers: latency statistics and mIoU drop (argmax agreement is counted
by `segedge.evaluation.Agreement`, with the accuracy loop)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

PERCENTILE_METHOD = "linear"  # numpy's default interpolation, named so the convention is explicit
STD_DDOF = 0  # population standard deviation of the measured durations


def latency_stats(durations_ms: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p90, p99, std (population), min, max in ms, and fps = 1000 / mean, over per-call durations."""
    d = np.asarray(list(durations_ms), dtype=np.float64)
    if d.size == 0:
        raise ValueError("latency_stats needs at least one duration")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ValueError("durations must be finite and non-negative")
    p50, p90, p99 = np.percentile(d, [50, 90, 99], method=PERCENTILE_METHOD)
    mean = float(d.mean())
    return {
        "n": int(d.size),
        "mean_ms": mean,
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "std_ms": float(d.std(ddof=STD_DDOF)),
        "min_ms": float(d.min()),
        "max_ms": float(d.max()),
        "fps": 1000.0 / mean if mean > 0 else math.inf,
    }


def ns_to_ms(durations_ns: Sequence[int]) -> list[float]:
    """time.perf_counter_ns differences → milliseconds."""
    return [int(v) / 1e6 for v in durations_ns]


def _finite(x: Any) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(float(x))


def miou_drop(reference_miou: float | None, target_miou: float | None) -> float | None:
    """reference − target (same units as the inputs; positive = the target is worse), None when either is missing."""
    if not (_finite(reference_miou) and _finite(target_miou)):
        return None
    return float(reference_miou) - float(target_miou)


__all__ = ["PERCENTILE_METHOD", "STD_DDOF", "latency_stats", "miou_drop", "ns_to_ms"]
