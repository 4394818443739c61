"""Which ONNX Runtime INT8 flavour to ship as `ort-int8`: accuracy and speed of the candidates, side by side.

For one checkpoint it exports the FP32 ONNX once (calibration table cached in the folder), quantizes the same
pre-processed graph with each candidate flavour and calibration method, and measures on the labelled frames:
mIoU (exact post-processing) and its drop vs FP32 ONNX, and inference latency (batch 1, rotating blocks as
`segedge bench` times them, ratio vs FP32). Run on an idle machine:

    python benchmarks/int8_flavours.py --model b0 --data ../shared/datasets/camvid --out benchmarks/results/int8
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from functools import partial
from pathlib import Path

import onnx

from segedge.benchmarks.stats import latency_stats, ns_to_ms
from segedge.benchmarks.timing import time_blocks
from segedge.data.datasets import open_dataset
from segedge.evaluation import evaluate_predictors
from segedge.export.calibration import CalibrationTable, table_path
from segedge.export.pipeline import ExportOptions, export_model
from segedge.export.quantize import ORT_CPU, ORT_CPU_CONV, quantize, select_kept_float
from segedge.io import write_json_atomic
from segedge.runtime import Segmenter
from segedge.runtime.backends.ort import OnnxRuntimeBackend

BLOCK = 10
CANDIDATES = {
    "u8s8-per-tensor": ORT_CPU,
    "u8s8-per-channel": dataclasses.replace(ORT_CPU, name="ort-u8s8-pc", per_channel=True),
    "u8s8-conv-scope": ORT_CPU_CONV,
    "u8s8-conv-scope-per-channel": dataclasses.replace(ORT_CPU_CONV, name="ort-u8s8-conv-pc", per_channel=True),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--methods", default="minmax,percentile")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--iters", type=int, default=40, help="timed rounds (0: accuracy only)")
    ap.add_argument("--no-accuracy", action="store_true", help="latency only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out/int8"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/int8-work"),
                    help="export folder location (kept out of --out, which may be committed)")
    a = ap.parse_args()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    ds = open_dataset("camvid", a.data, "val")
    pairs = [ds[i] for i in range(len(ds) if a.limit is None else min(a.limit, len(ds)))]
    folder = a.work / f"{a.model}-export"
    models: dict[str, object] = {}
    for method in a.methods.split(","):
        export_model(ExportOptions(model=a.model, weights=a.weights, targets="onnx,ort-int8", calib_method=method,
                                   calib=f"camvid:{a.data}:train", calib_count=a.calib_count, out=folder))
        if "fp32" not in models:
            models["fp32"] = onnx.load(str(folder / "model.onnx"))
        table = CalibrationTable.load(table_path(folder, method))
        with tempfile.TemporaryDirectory() as td:
            pre = Path(td) / "pre.onnx"
            quant_pre_process(str(folder / "model.onnx"), str(pre))
            graph = onnx.load(str(pre))
            for name, flav in CANDIDATES.items():
                models[f"{name}/{method}"] = quantize(pre, table, flav, select_kept_float(graph, flavour=flav))
    info = Segmenter.load(folder, target="onnx").info
    segs = {k: Segmenter(OnnxRuntimeBackend(m, threads=a.threads), info, "exact") for k, m in models.items()}
    # accuracy
    if a.no_accuracy:
        miou = {k: float("nan") for k in segs}
    else:
        acc = evaluate_predictors({k: s.predict for k, s in segs.items()}, pairs, ds.num_classes, ds.class_names)
        miou = {k: float(m.miou) for k, m in acc.metrics.items()}
    # latency: inference only, batch 1, rotating blocks of BLOCK back-to-back calls (an untimed call opens each
    # block), as `segedge bench` times: the steady state of a loop running one model
    x = segs["fp32"].prepare(pairs[0][0])
    names = list(segs)
    (durations,) = time_blocks(names, [lambda k, r: partial(segs[k].backend.run, x)], 5 if a.iters else 0, a.iters,
                               BLOCK)
    dur = dict(zip(names, durations))
    lat = {k: latency_stats(ns_to_ms(v)) if v else {"p50_ms": float("nan")} for k, v in dur.items()}
    base = lat["fp32"]["p50_ms"]
    rows = {k: {"miou": miou[k], "drop_pp": 100 * (miou["fp32"] - miou[k]), "p50_ms": lat[k]["p50_ms"],
                "ratio_vs_fp32": lat[k]["p50_ms"] / base} for k in names}
    tag = "accuracy" if not a.iters else ("latency" if a.no_accuracy else "all")
    write_json_atomic(a.out / f"{a.model}-int8-flavours-{tag}.json", {"model": a.model, "frames": len(pairs), "rows": rows})
    print(f"{a.model}: {len(pairs)} frames, threads {a.threads}")
    for k, r in rows.items():
        print(f"  {k:<32} mIoU {100 * r['miou']:6.2f}  drop {r['drop_pp']:+.2f} pp  p50 {r['p50_ms']:7.2f} ms  "
              f"x{r['ratio_vs_fp32']:.2f}")


if __name__ == "__main__":
    main()
