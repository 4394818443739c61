"""`segedge.benchmarks.timing.time_blocks`: the one rotating-block timing loop (bench, io-modes and INT8 studies)."""

from __future__ import annotations

import gc

import pytest

from segedge.benchmarks.timing import time_blocks, timing_rounds


def _logging_phase(tag: str, log: list):
    def phase(target: str, r: int):
        log.append(("prepare", tag, target, r))  # the untimed preparation of the round's call
        return lambda: log.append((tag, target, r))

    return phase


def test_blocks_lead_call_rotation_and_phases():
    log: list = []
    out = time_blocks(["a", "b", "c"], [_logging_phase("x", log), _logging_phase("y", log)], warmup=1, iters=4,
                      block=3)
    calls = [e for e in log if e[0] != "prepare"]
    # round 0 (warm-up): one call each, order abc; round 1 starts at b: an untimed lead + 3 timed calls;
    # round 2 starts at c: lead + the last timed call. Every round times phase x of all targets, then phase y.
    expect = []
    for r, (order, n) in enumerate((("abc", 1), ("bca", 4), ("cab", 2))):
        for tag in "xy":
            for t in order:
                expect += [(tag, t, r)] * n
    assert calls == expect
    # the call of a target's block is asked for once per block, just before it
    assert [e for e in log if e[0] == "prepare"] == [("prepare", tag, t, r) for r, order in enumerate(("abc", "bca",
                                                                                                       "cab"))
                                                     for tag in "xy" for t in order]
    assert len(out) == 2 and all(len(per) == 3 for per in out)
    assert all(len(d) == 4 and all(v >= 0 for v in d) for per in out for d in per)  # warm-up and leads dropped


def test_block_1_interleaves_call_by_call():
    log: list = []
    (d,) = time_blocks(["a", "b"], [_logging_phase("x", log)], warmup=2, iters=3, block=1)
    assert [e[1] for e in log if e[0] == "x"] == list("ab" "ba" "ab" "ba" "ab")  # no lead calls
    assert [len(v) for v in d] == [3, 3]
    assert timing_rounds(2, 3, 1) == 5 and timing_rounds(0, 10, 4) == 3 and timing_rounds(1, 4, 0) == 5


def test_gc_is_off_inside_rounds_and_restored_on_error():
    seen = []

    def phase(target, r):
        def call():
            seen.append(gc.isenabled())
            if r == 2:
                raise RuntimeError("boom")
        return call

    assert gc.isenabled()
    rounds: list[int] = []
    with pytest.raises(RuntimeError, match="boom"):
        time_blocks(["a"], [phase], warmup=1, iters=5, block=1, on_round=rounds.append)
    assert seen and not any(seen)
    assert rounds == [1, 2] and gc.isenabled()
