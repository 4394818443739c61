"""Measuring CPU candidates: accuracy drop on labelled frames, and latency on this CPU in rotating blocks.

Accuracy is measured once per (recipe, hint) — thread counts do not change what a model computes — as the mIoU drop
in points against the FP32 ONNX (run by ONNX Runtime) on the same frames, on the budget set (which the choice uses)
and on the held-back set (reported only). Latency is inference alone (pre- and post-processing are the same for every
candidate) timed with segedge.benchmarks.timing.time_blocks: every candidate runs a block of calls per round, the
first candidate rotating, so slow drift of the machine spreads over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..benchmarks.stats import latency_stats, ns_to_ms
from ..benchmarks.timing import time_blocks
from ..export.sensitivity import LabelledSet, compare_logits, miou_of
from .candidates import Built, Candidate, open_backend

DEFAULT_ITERS = 20
DEFAULT_BLOCK = 5
WARMUP_ROUNDS = 1
# A (recipe, hint) whose probe is this many times the fastest FP32-exact probe (FP32 with the f32 hint: its drop is ~0,
# so it always meets the budget) cannot win the choice; measuring its accuracy could cost minutes (an f16 hint on a CPU
# whose OpenVINO kernels fall back to a slow path ran B0 INT8 at seconds per frame on a Xeon), so it is dropped before
# that, with its probe time in the report. 2× leaves room for the probe's noise.
PRUNE_FACTOR = 2.0
PROBE_CALLS = 3


def logits_of(backend: Any, frames: LabelledSet) -> list[np.ndarray]:
    """C×h×w float32 logits of a backend for every frame of the set."""
    return [np.asarray(backend.run(x), np.float32)[0] for x in frames.inputs]


def drop_figures(logits: Sequence[np.ndarray], ref: Sequence[np.ndarray], frames: LabelledSet, ref_miou: float,
                 num_classes: int) -> dict[str, Any]:
    """mIoU, its drop in points against the reference, argmax agreement and SQNR on one set."""
    miou = miou_of(logits, frames, num_classes)
    return {"miou": miou, "drop_pt": round(100.0 * (ref_miou - miou), 4), **compare_logits(logits, ref),
            "frames": len(frames)}


def accuracy(built: Built, hint: str | None, sets: dict[str, LabelledSet], refs: dict[str, list[np.ndarray]],
             ref_miou: dict[str, float], num_classes: int, threads: int) -> dict[str, Any]:
    """Drop figures of one (recipe, hint) on every set (e.g. budget, held-back)."""
    backend = open_backend(built, hint, threads)
    try:
        return {name: drop_figures(logits_of(backend, s), refs[name], s, ref_miou[name], num_classes)
                for name, s in sets.items()}
    finally:
        backend.close()


def probe_call(run: Callable[[], Any], calls: int = PROBE_CALLS) -> float:
    """Median ms of `calls` calls after one untimed call: a coarse latency, enough to tell hopeless candidates."""
    import time

    run()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1e6


def probe(built: Built, hint: str | None, threads: int, x: np.ndarray, calls: int = PROBE_CALLS) -> float:
    """`probe_call` on a candidate opened with its hint and threads."""
    backend = open_backend(built, hint, threads)
    try:
        return probe_call(lambda: backend.run(x), calls)
    finally:
        backend.close()


def hopeless(probes: dict[str, float], exact: Sequence[str], keep: Sequence[str] = (),
             factor: float = PRUNE_FACTOR) -> dict[str, str]:
    """{variant: why} for the probed variants slower than `factor` × the fastest of the `exact` ones (FP32 numerics,
    certain to meet any budget), so that none of them could be chosen; `keep` are never dropped (none without an
    exact probe)."""
    ref = {v: probes[v] for v in exact if v in probes}
    if not ref:
        return {}
    best_name = min(ref, key=ref.get)
    best = ref[best_name]
    return {v: f"probe {ms:.1f} ms > {factor:g}× the fastest FP32-exact probe ({best_name}, {best:.1f} ms)"
            for v, ms in probes.items() if ms > factor * best and v not in keep}


@dataclass(frozen=True)
class FrameTiming:
    """What end-to-end timing needs: BGR frames as an app gets them, and the contract the runtime prepares them by."""

    frames: Sequence[np.ndarray]
    contract: Any  # segedge.contract.ModelContract

    def segmenter(self, backend: Any, name: str) -> Any:
        """A Segmenter over a candidate's backend: frame → labels exactly as the deployed runtime does it."""
        from ..runtime import ModelInfo, Segmenter

        return Segmenter(backend, ModelInfo(self.contract, target=name), "fast")


def time_candidates(cands: Sequence[Candidate], built: dict[str, Built], inputs: Sequence[np.ndarray],
                    iters: int = DEFAULT_ITERS, block: int = DEFAULT_BLOCK,
                    on_round: Callable[[int], None] | None = None, frames: FrameTiming | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Latency statistics (ms) of every candidate, all timed in one rotating-block run: inference alone on `inputs` in
    turn and, with `frames`, frame → labels as the runtime deploys it (OpenVINO normalising in the graph) under
    "end_to_end"."""
    from ..runtime.segmenter import frame_input_spec

    spec = frame_input_spec(frames.contract.to_dict()) if frames is not None else None
    backends = [open_backend(built[c.recipe.name], c.hint, c.threads, frame_input=spec) for c in cands]
    segs = [frames.segmenter(be, c.name) for be, c in zip(backends, cands)] if frames is not None else []
    try:
        def infer(i: int, r: int) -> Callable[[], Any]:
            be, x = backends[i], inputs[r % len(inputs)]
            return lambda: be.run(x)

        def e2e(i: int, r: int) -> Callable[[], Any]:
            seg, f = segs[i], frames.frames[r % len(frames.frames)]  # type: ignore[union-attr]
            return lambda: seg.predict(f)

        phases = [infer, e2e] if frames is not None else [infer]
        durations = time_blocks(list(range(len(cands))), phases, WARMUP_ROUNDS, iters, block, on_round=on_round)
    finally:
        for be in backends:
            be.close()
    out: dict[str, dict[str, Any]] = {}
    for j, c in enumerate(cands):
        out[c.name] = latency_stats(ns_to_ms(durations[0][j]))
        if frames is not None:
            out[c.name]["end_to_end"] = latency_stats(ns_to_ms(durations[1][j]))
    return out


__all__ = ["DEFAULT_BLOCK", "DEFAULT_ITERS", "FrameTiming", "PRUNE_FACTOR", "accuracy", "drop_figures", "hopeless", "logits_of",
           "probe", "probe_call", "time_candidates"]
