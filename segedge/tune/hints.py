"""`--ov-precision auto` (the default of the openvino targets): OpenVINO's inference precision hint chosen by
measurement, not fixed.

bf16 (or f16 on ARM) is up to 1.8× faster than f32 on CPUs that have it, and OpenVINO picks it by default there, but
it moves the logits; f32 is exact. Every hint the CPU plugin supports is checked against PyTorch (and on `--val` when
given) and timed on this machine; the fastest whose accuracy is within budget wins, and f32 wins ties (within
select.TIE_RATIO), so a hint that buys nothing measurable never costs accuracy.

Within budget: with labelled frames, the mIoU drop against PyTorch is at most the budget (`--max-miou-drop`, 0.3 pt by
default); without them, its argmax agreement with PyTorch is at most AGREEMENT_SLACK below f32's.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .select import DEFAULT_BUDGET_PP, TIE_RATIO

AGREEMENT_SLACK = 0.005  # 0.5 % of pixels: bf16 B0 agrees with f32 on ~99.8 % of them (CamVid frames)
HINT_ITERS = 10


def figures(verification: dict[str, Any], p50_ms: float) -> dict[str, Any]:
    """The figures a hint is judged by: latency, argmax agreement and, with --val, the mIoU drop in points."""
    out = {"p50_ms": round(p50_ms, 4), "argmax_agreement": verification.get("argmax_agreement")}
    val = verification.get("val") or {}
    if val.get("miou") is not None and val.get("pytorch_miou") is not None:
        out["drop_pt"] = round(100.0 * (float(val["pytorch_miou"]) - float(val["miou"])), 4)
    return out


def pick_hint(figs: dict[str, dict[str, Any]], budget_pp: float = DEFAULT_BUDGET_PP) -> tuple[str, str]:
    """(hint, why): the fastest hint within budget (module docstring); f32 must be among `figs`."""
    ref = figs["f32"]

    def within(h: str) -> bool:
        f = figs[h]
        if h == "f32":
            return True
        if f.get("drop_pt") is not None:
            return float(f["drop_pt"]) <= budget_pp + 1e-9
        return float(f["argmax_agreement"]) >= float(ref["argmax_agreement"]) - AGREEMENT_SLACK

    ok = sorted((h for h in figs if within(h)), key=lambda h: float(figs[h]["p50_ms"]))
    best = ok[0]
    if best != "f32" and float(ref["p50_ms"]) <= float(figs[best]["p50_ms"]) * (1 + TIE_RATIO):
        best = "f32"
    out = [h for h in figs if h not in ok]
    why = (f"{best}: {float(figs[best]['p50_ms']):.2f} ms vs f32 {float(ref['p50_ms']):.2f} ms on this CPU"
           + (" (a tie or faster: f32 is exact)" if best == "f32" and len(figs) > 1 else "")
           + (f"; over budget: {', '.join(out)}" if out else ""))
    return best, why


def time_runs(runs: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray, iters: int = HINT_ITERS
              ) -> dict[str, float]:
    """p50 ms of each run function on `x`, timed in one rotating-block run."""
    from ..benchmarks.stats import latency_stats, ns_to_ms
    from ..benchmarks.timing import time_blocks

    names: Sequence[str] = list(runs)
    d = time_blocks(list(range(len(names))), [lambda i, r: (lambda: runs[names[i]](x))], 1, iters, 5)
    return {n: latency_stats(ns_to_ms(v))["p50_ms"] for n, v in zip(names, d[0])}


__all__ = ["AGREEMENT_SLACK", "figures", "pick_hint", "time_runs"]
