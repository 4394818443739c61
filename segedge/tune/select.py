"""Choosing among measured CPU candidates: the fastest within the mIoU budget, the Pareto front, and why.

Pure functions over recorded figures (one dict per candidate: `name`, `p50_ms`, `drop_pt` on the budget set, and
optionally `threads` and `keeps_islands`), so the choice is deterministic and testable without timing anything.
Latency figures from one rotating-block run differ by a few per cent between repeats (this 2-core machine drifts by
more within minutes); candidates within `TIE_RATIO` of the fastest are treated as equally fast, and among them:

1. one that keeps the family's float islands wins over one that drops them: the islands were chosen on frames held
   out by sequence (a dusk drive), which a budget set from the deployment's own drive cannot see — measured on the
   demo TopFormer-T, dropping `tpm.s1` bought 4 % latency, looked 0.2 pt *better* on val and lost 1.1 pt on dusk;
2. then the smaller drop, a negative drop counting as zero (INT8 beating FP32 on a budget set is noise, not a gain);
3. then fewer threads (cores left to the rest of the pipeline), then latency, then the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import SegedgeError

TIE_RATIO = 0.05  # latencies within 5 % count as a tie (see module docstring)
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
    """Among the candidates as fast as the fastest (within TIE_RATIO): islands kept, then the smallest drop (negative
    as zero), then fewest threads, then latency (module docstring)."""
    fastest = float(within[0]["p50_ms"])
    tied = [r for r in within if float(r["p50_ms"]) <= fastest * (1 + TIE_RATIO)]
    return min(tied, key=lambda r: (not r.get("keeps_islands", True), max(float(r["drop_pt"]), 0.0),
                                    int(r.get("threads") or 0), float(r["p50_ms"]), str(r["name"])))


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
        f = within[0]
        reason = "drops the family's float islands" if not f.get("keeps_islands", True) else \
            f"drop {float(f['drop_pt']):+.2f} pt or more threads"
        parts.append(f"{f['name']} ({float(f['p50_ms']):.2f} ms) was within {TIE_RATIO:.0%} (a tie) and {reason}")
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
