"""Rotating-block timing: the one timing loop behind `segedge bench`, the io-modes study and the INT8 study scripts.

`time_blocks` runs warm-up rounds, then timed rounds. In each round every target runs a block of `block`
consecutive calls, the targets in an order whose first one rotates from round to round, until each target has
`iters` timed calls:

- with block > 1 an untimed call opens every block: the first call after another model ran meets caches full of
  that model's weights and activations, which a camera loop running one model never does (B0 FP32 measured ~20 %
  slower per call when interleaved call by call on a 2-core Xeon); `block=1` interleaves call by call;
- rotating the first target spreads slow drift of the machine (thermal, other load) over all targets instead of
  favouring whichever runs first;
- a warm-up round is one untimed call per target;
- the garbage collector is off inside a round (no collector pause inside a timed call, as timeit does), and an
  optional pause before each call lets the previous runtime's worker threads go idle.

A round may time several *phases* one after the other (the bench times inference alone, then end to end, on the
same frame): each phase runs every target's block before the next phase starts.
"""

from __future__ import annotations

import gc
import math
import time
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar("T")
Call = Callable[[], Any]
# (target, round index) → the call to time. Work done here (e.g. pre-processing the round's frame) is not timed.
Phase = Callable[[T, int], Call]


def settle(seconds: float) -> None:
    """Sleep `seconds` (when > 0) before a timed call.

    ONNX Runtime and OpenMP thread pools spin-wait after a run; a short pause lets them go idle, so they do not
    compete with the target being timed.
    """
    if seconds > 0:
        time.sleep(seconds)


def timing_rounds(warmup: int, iters: int, block: int) -> int:
    """How many rounds `time_blocks` makes (for progress bars)."""
    return warmup + math.ceil(iters / max(1, int(block)))


def time_blocks(targets: Sequence[T], phases: Sequence[Phase[T]], warmup: int, iters: int, block: int = 1,
                settle_s: float = 0.0, on_round: Callable[[int], None] | None = None) -> list[list[list[int]]]:
    """Time every target in rotating blocks (see the module docstring); `durations[phase][target]` in ns.

    Round r runs the targets in the order `targets[r % k], targets[(r + 1) % k], …` (warm-up rounds included).
    For each phase and target, `phase(target, r)` is asked for the round's call just before that target's block;
    each call is timed with `time.perf_counter_ns` around the call alone. `on_round(n)` is told after each round.
    """
    k = len(targets)
    block = max(1, int(block))
    durations: list[list[list[int]]] = [[[] for _ in targets] for _ in phases]
    gc_was_enabled = gc.isenabled()
    timed = 0
    try:
        for r in range(timing_rounds(warmup, iters, block)):
            warm = r < warmup
            n = 1 if warm else min(block, iters - timed)
            lead = 0 if warm or block == 1 else 1  # the untimed call opening each block
            order = [(r + j) % k for j in range(k)]
            gc.collect()
            gc.disable()
            for phase, sinks in zip(phases, durations):
                for i in order:
                    _run_block(phase(targets[i], r), lead, n, settle_s, None if warm else sinks[i])
            if not warm:
                timed += n
            if gc_was_enabled:
                gc.enable()
            if on_round:
                on_round(r + 1)
    finally:
        if gc_was_enabled:
            gc.enable()
    return durations


def _run_block(call: Call, lead: int, n: int, settle_s: float, sink: list[int] | None) -> None:
    """`lead` untimed calls, then `n` calls whose durations go to `sink` (None: a warm-up block, nothing kept)."""
    for c in range(lead + n):
        settle(settle_s)
        t0 = time.perf_counter_ns()
        call()
        t1 = time.perf_counter_ns()
        if sink is not None and c >= lead:
            sink.append(t1 - t0)


__all__ = ["Call", "Phase", "settle", "time_blocks", "timing_rounds"]
