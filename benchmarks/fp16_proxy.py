"""What FP16 costs the demo models, shown on CPU: FP32 vs the FP16 storage proxy with and without FP32 islands.

For each export folder (default: exports/demo-b0 and exports/demo-topformer-t, their FP32 model.onnx) it measures
activation ranges on the export's calibration frames (CamVid train, 32 frames, seed 0, as the demo exports drew
them), picks the FP32 islands from them (`segedge.export.fp16.fp32_islands`) and computes mIoU on CamVid val
(101 frames) and on the dusk drive 0001TP (its 62 frames in CamVid's train split) for: FP32, the FP16 proxy with
islands, the all-FP16 proxy; for graphs with LayerNorm also the TensorRT 8.5 flavour (LayerNorm decomposed at
opset 16), whose squares become FP16 tensors. It also measures how far the activation peaks on the evaluation
frames exceed those of the calibration frames (tensors whose calibration peak is ≥ 1): what `RANGE_MARGIN` must
cover. JSON of figures only, never frames:

    .venv/bin/python benchmarks/fp16_proxy.py --data ../shared/datasets/camvid --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from segedge.contract import tool_versions, utc_now
from segedge.data.datasets import open_dataset
from segedge.data.splits import CAMVID_DUSK, held_out_by_sequence, sequence_of
from segedge.doctor import cpu_report
from segedge.evaluation import evaluate_predictors
from segedge.export.calibration import load_calibration_frames
from segedge.export.fp16 import (FP16_MAX, RANGE_MARGIN, float_tensor_types, fp16_proxy, fp32_islands,
                                 island_summary, tensor_ranges)
from segedge.export.trt_flavours import flavour_for
from segedge.io import write_json_atomic
from segedge.runtime import Segmenter
from segedge.runtime.backends.ort import OnnxRuntimeBackend

REPO = Path(__file__).resolve().parents[1]
DUSK = CAMVID_DUSK


def eval_sets(root: Path, limit: int | None) -> dict[str, list[tuple[Any, int]]]:
    """{'val': …, '0001TP': …}: (dataset, sample index) pairs, read lazily frame by frame."""
    val = open_dataset("camvid", root, "val")
    train = open_dataset("camvid", root, "train")
    dusk = held_out_by_sequence(train, DUSK)  # FP16 calibrates nothing on these frames: the whole drive
    sets = {"val": [(val, i) for i in range(len(val))], DUSK: [(train, i) for i in dusk]}
    return {k: v[:limit] if limit else v for k, v in sets.items()}


def pairs(items: list[tuple[Any, int]]) -> Any:
    """(frame, label) pairs of `items`, None for an unreadable sample (counted by evaluate_predictors)."""
    for ds, i in items:
        yield ds.get(i)


def peak_growth(calib: dict[str, tuple[float, float]], seen: dict[str, tuple[float, float]],
                activations: set[str]) -> dict[str, Any]:
    """How much the evaluation frames' activation peaks exceed the calibration frames' (per tensor, |max| ratio)."""
    ratios = []
    seen = {k: v for k, v in seen.items() if k in activations}
    calib = {k: v for k, v in calib.items() if k in activations}
    for name, (lo, hi) in seen.items():
        if name in calib:
            c = max(abs(calib[name][0]), abs(calib[name][1]))
            if c >= 1.0:  # a tensor below 1 (Softmax, sigmoid gates) is nowhere near FP16's limit whatever it does
                ratios.append((max(abs(lo), abs(hi)) / c, name))
    ratios.sort()
    worst = ratios[-1] if ratios else (float("nan"), "")
    return {"tensors": len(ratios), "max_ratio": worst[0], "max_ratio_tensor": worst[1],
            "p99_ratio": float(np.percentile([r for r, _ in ratios], 99)) if ratios else float("nan"),
            "tensors_above_1.1x": sum(r > 1.1 for r, _ in ratios),
            "max_abs_calibration": max(max(abs(a), abs(b)) for a, b in calib.values()),
            "max_abs_evaluation": max(max(abs(a), abs(b)) for a, b in seen.values()),
            "fp16_threshold": FP16_MAX / RANGE_MARGIN}


def variants(model: Any, ranges_for: Callable[[Any], dict]) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """{name: ONNX graph} to evaluate, {generation: islands summary}, and the ranges of the FP32 graph itself."""
    graphs: dict[str, Any] = {"fp32": model}
    info: dict[str, Any] = {}
    gens = ["10"] + (["8.5"] if any(n.op_type == "LayerNormalization" for n in model.graph.node) else [])
    fp32_ranges: dict = {}
    for gen in gens:
        flav = flavour_for(model, gen)  # "10" is a copy of model.onnx: same tensors, same names
        ranges = ranges_for(flav)
        fp32_ranges = fp32_ranges or ranges
        islands = fp32_islands(flav, ranges)
        structural = {i["node"]: i["reason"] for i in fp32_islands(flav)}
        tag = "" if gen == "10" else " (8.5: LN decomposed)"
        graphs[f"fp16 islands{tag}"] = fp16_proxy(flav, islands)
        graphs[f"fp16 all{tag}"] = fp16_proxy(flav, None)
        info[gen] = {"islands": len(islands), "by_op": island_summary(islands),
                     "from_ranges": [i for i in islands if structural.get(i["node"]) != i["reason"]]}
    return graphs, info, fp32_ranges


def run_model(folder: Path, data: Path, sets: dict[str, list], threads: int, calib_count: int) -> dict[str, Any]:
    """Every figure for one export folder."""
    model = onnx.load(str(folder / "model.onnx"))
    ref = Segmenter.load(folder, target="onnx", threads=threads)
    frames = load_calibration_frames(data / "train", calib_count, seed=0)
    calib_inputs = [ref.prepare(f) for f in frames.frames]
    t0 = time.perf_counter()
    graphs, islands, calib_ranges = variants(model, lambda g: tensor_ranges(g, calib_inputs, threads=threads))
    t_ranges = time.perf_counter() - t0
    growth = {}
    for name, items in sets.items():  # peaks on frames the ranges were not measured on
        seen = tensor_ranges(model, [ref.prepare(ds.read_image(i)) for ds, i in items], threads=threads)
        growth[name] = peak_growth(calib_ranges, seen, set(float_tensor_types(model)))
    segs = {k: Segmenter(OnnxRuntimeBackend(g, threads=threads), ref.info, "exact") for k, g in graphs.items()}
    results: dict[str, Any] = {}
    for name, items in sets.items():
        t = time.perf_counter()
        ev = evaluate_predictors({k: s.predict for k, s in segs.items()}, pairs(items), ref.num_classes,
                                 ref.class_names, references={k: "fp32" for k in segs if k != "fp32"})
        base = float(ev.metrics["fp32"].miou)
        results[name] = {"frames": ev.frames, "seconds": round(time.perf_counter() - t, 1), "rows": {
            k: {"miou": float(m.miou), "drop_pt": 100 * (base - float(m.miou)),
                "agreement_vs_fp32": 1.0 if ev.agreement.get(k) is None else float(ev.agreement[k])}
            for k, m in ev.metrics.items()}}
    calib_dusk = sum(sequence_of(n) == DUSK for n in frames.names)
    return {"folder": folder.relative_to(REPO).as_posix() if folder.is_relative_to(REPO) else folder.name,
            "calibration": {"frames": len(frames), "source": "camvid train", "seed": 0, "sha256": frames.sha256,
                            "frames_from_0001TP": calib_dusk, "ranges_seconds": round(t_ranges, 1)},
            "islands": islands, "peak_growth": growth, "miou": results}


def print_table(name: str, r: dict[str, Any]) -> None:
    """One block per model: variants × eval sets."""
    sets = list(r["miou"])
    print(f"\n{name}: calibration {r['calibration']['frames']} frames ({r['calibration']['frames_from_0001TP']} "
          f"from 0001TP); islands " + ", ".join(f"TRT {g}: {v['islands']} {v['by_op']}" for g, v in
                                                  r["islands"].items()))
    print(f"  {'variant':<34}" + "".join(f"{s + ' mIoU':>13}{'drop pt':>9}{'agree':>10}" for s in sets))
    for k in r["miou"][sets[0]]["rows"]:
        cells = "".join(f"{100 * r['miou'][s]['rows'][k]['miou']:13.3f}{r['miou'][s]['rows'][k]['drop_pt']:+9.3f}"
                        f"{r['miou'][s]['rows'][k]['agreement_vs_fp32']:10.4%}" for s in sets)
        print(f"  {k:<34}{cells}")
    for s, g in r["peak_growth"].items():
        print(f"  peaks on {s}: max |x| {g['max_abs_evaluation']:.3g} (calibration {g['max_abs_calibration']:.3g}); "
              f"worst tensor {g['max_ratio']:.2f}x its calibration peak, p99 {g['p99_ratio']:.2f}x")


def main() -> None:
    """Parse arguments, measure every model, print the tables, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "camvid")
    ap.add_argument("--models", default="exports/demo-b0,exports/demo-topformer-t")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="frames per evaluation set (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fp16-proxy")
    a = ap.parse_args()
    sets = eval_sets(a.data, a.limit)
    report: dict[str, Any] = {"created": utc_now(), "cpu": cpu_report(), "threads": a.threads,
                              "tool_versions": tool_versions(), "range_margin": RANGE_MARGIN,
                              "frames": {k: len(v) for k, v in sets.items()}, "models": {}}
    for m in a.models.split(","):
        folder = (REPO / m) if not Path(m).is_absolute() else Path(m)
        report["models"][folder.name] = run_model(folder, a.data, sets, a.threads, a.calib_count)
        print_table(folder.name, report["models"][folder.name])
    path = write_json_atomic(a.out / ("fp16-proxy.json" if a.limit is None else f"fp16-proxy-limit{a.limit}.json"),
                             report)
    print(f"\nCPU: {report['cpu']['model']}, {a.threads} thread(s); wrote {path}")


if __name__ == "__main__":
    main()
