"""Choosing among measured CPU candidates: the fastest within the mIoU budget, the Pareto front, and why.

Pure functions over recorded figures (one dict per candidate: `name`, `p50_ms`, `drop_pt` on the budget set, and
optionally `threads`), so the choice is deterministic and testable without timing anything. Latency figures from one
rotating-block run differ by a few per cent between repeats; two candidates within `TIE_RATIO` of each other are
treated as equally fast and the one with the smaller drop (then fewer threads, then the name) wins, so measurement
noise never trades accuracy for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import SegedgeError

TIE_RATIO = 0.03  # latencies within 3 % count as a tie (repeat-to-repeat spread of one run on a quiet 2-core CPU)
DEFAULT_BUDGET_PP = 0.3


@dataclass
class Choice:
    """The chosen candidate, the ones that met the budget (fastest first) and a one-paragraph reason."""

    chosen: dict[str, Any]
    within: list[dict[str, Any]]
    why: str


def _key(row: dict[str, Any]) -> tuple[float, float, int, str]:
    return (float(row["p50_ms"]), float(row["drop_pt"]), int(row.get("threads") or 0), str(row["name"]))


def pareto_front(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the candidates no other beats on both latency and drop (fastest first)."""
    front: list[str] = []
    best_drop = float("inf")
    for r in sorted(rows, key=_key):
        if float(r["drop_pt"]) < best_drop:
            front.append(str(r["name"]))
            best_drop = float(r["drop_pt"])
    return front


def _tie_break(within: list[dict[str, Any]]) -> dict[str, Any]:
    """Among the candidates as fast as the fastest (within TIE_RATIO), the smallest drop, then fewest threads."""
    fastest = float(within[0]["p50_ms"])
    tied = [r for r in within if float(r["p50_ms"]) <= fastest * (1 + TIE_RATIO)]
    return min(tied, key=lambda r: (float(r["drop_pt"]), int(r.get("threads") or 0), float(r["p50_ms"]),
                                    str(r["name"])))


def choose(rows: Sequence[dict[str, Any]], budget_pp: float = DEFAULT_BUDGET_PP) -> Choice:
    """The fastest candidate whose budget-set drop is ≤ `budget_pp`; one line naming the best drop when none is."""
    if not rows:
        raise SegedgeError("no CPU candidate was measured: widen --cpu-candidates (or install openvino/nncf)")
    within = sorted((r for r in rows if float(r["drop_pt"]) <= budget_pp + 1e-9), key=_key)
    if not within:
        best = min(rows, key=lambda r: (float(r["drop_pt"]), float(r["p50_ms"])))
        raise SegedgeError(f"no CPU candidate meets the {budget_pp:g} pt mIoU budget: the best drop reached is "
                           f"{float(best['drop_pt']):.2f} pt ({best['name']}, {float(best['p50_ms']):.1f} ms); "
                           "raise --max-miou-drop or widen --cpu-candidates (an FP32 candidate always fits)")
    chosen = _tie_break(within)
    return Choice(chosen, within, _why(chosen, within, rows, budget_pp))


def _why(chosen: dict[str, Any], within: list[dict[str, Any]], rows: Sequence[dict[str, Any]],
         budget_pp: float) -> str:
    """The reason recorded in the manifest: what was fastest, what it beat, and what the budget ruled out."""
    ms = float(chosen["p50_ms"])
    parts = [f"fastest of {len(within)}/{len(rows)} candidates within the {budget_pp:g} pt budget on the budget set: "
             f"{chosen['name']} at {ms:.2f} ms p50, drop {float(chosen['drop_pt']):+.2f} pt"]
    if within[0]["name"] != chosen["name"]:
        parts.append(f"{within[0]['name']} ({float(within[0]['p50_ms']):.2f} ms) was within {TIE_RATIO:.0%} "
                     f"(a tie) with a larger drop ({float(within[0]['drop_pt']):+.2f} pt) or more threads")
    runner_up = next((r for r in within if r["name"] != chosen["name"]), None)
    if runner_up is not None:
        parts.append(f"next: {runner_up['name']} {float(runner_up['p50_ms']):.2f} ms "
                     f"({float(runner_up['p50_ms']) / ms:.2f}×)")
    faster_out = [r for r in rows if float(r["p50_ms"]) < ms and float(r["drop_pt"]) > budget_pp + 1e-9]
    if faster_out:
        f = min(faster_out, key=_key)
        parts.append(f"faster but over budget: {f['name']} {float(f['p50_ms']):.2f} ms, drop "
                     f"{float(f['drop_pt']):+.2f} pt")
    return "; ".join(parts)


__all__ = ["Choice", "DEFAULT_BUDGET_PP", "TIE_RATIO", "choose", "pareto_front"]
