"""What camera-ready I/O and the two post-processing paths cost and change, measured side by side.

For one model at one input size this compares, on the same labelled frames and in one run:

- `float/fast`:  float NCHW export; NumPy/OpenCV pre-processing; argmax at the output stride, nearest upsample;
- `float/exact`: the same export; bilinear upsample of the logits to the frame size, then argmax;
- `raw`:         `--io raw` export (uint8 NHWC frame in, argmax in the graph, uint8 labels at the output stride
                 out); the runtime only resizes the frame and nearest-upsamples the labels;
- `raw/upsample`: `--io raw --upsample` (labels at the input size come out of the graph).

End-to-end latency is frame in memory → labels at the frame's size (what a video loop pays per frame), timed
in rotating blocks so machine drift spreads over all variants. mIoU and agreement with `float/exact` are computed
on the same frames. Run it with `python benchmarks/io_modes.py --help` (or `benchmarks/io_modes.sh`).
Timing and accuracy go through segedge's own loops: `segedge.benchmarks.timing.time_blocks` (what `segedge bench`
times with) and `segedge.evaluation.evaluate_predictors`.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from segedge.benchmarks.stats import latency_stats, ns_to_ms
from segedge.benchmarks.targets import portable_path
from segedge.benchmarks.timing import time_blocks
from segedge.errors import SegedgeError
from segedge.evaluation import evaluate_predictors
from segedge.io import write_json_atomic, write_text_atomic

VARIANTS = ("float/fast", "float/exact", "raw", "raw/upsample")


BLOCK = 10  # calls of one variant in a row (after an untimed one), as `segedge bench` times


def time_variants(fns: dict[str, Callable[[np.ndarray], Any]], frames: Sequence[np.ndarray], iters: int,
                  warmup: int, block: int = BLOCK) -> dict[str, dict[str, float]]:
    """Latency stats per function, timed in rotating blocks by `time_blocks` (as `segedge bench` times): round r
    runs every function on frame r, `block` times in a row after an untimed call, the first function rotating
    from round to round; `warmup` untimed rounds first, then `iters` timed calls per function."""
    names = list(fns)
    (durations,) = time_blocks(names, [lambda n, r: partial(fns[n], frames[r % len(frames)])], warmup, iters,
                               block)
    return {n: latency_stats(ns_to_ms(d)) for n, d in zip(names, durations)}


def accuracy(predictors: dict[str, Callable[[np.ndarray], np.ndarray]], pairs: Sequence[tuple[np.ndarray, np.ndarray]],
             num_classes: int, class_names: list[str], reference: str) -> dict[str, dict[str, Any]]:
    """mIoU, pixel accuracy and agreement with the `reference` predictor for each predictor on the same pairs."""
    res = evaluate_predictors(predictors, pairs, num_classes, class_names,
                              references={n: reference for n in predictors})
    return {n: {"miou": float(m.miou), "pixel_acc": float(m.pixel_acc), "agreement_vs_exact": res.agreement[n],
                "frames": res.frames} for n, m in res.metrics.items()}


def run(model: str, weights: str | None, data: Path, dataset: str, split: str, input_size: tuple[int, int] | None,
        target: str, calib: str | None, limit: int | None, iters: int, warmup: int, threads: int | None,
        out: Path, exports: Path) -> dict[str, Any]:
    """Export the float and raw variants (reusing existing folders), then measure latency and accuracy."""
    from segedge.benchmarks.machine import machine_info
    from segedge.data.datasets import open_dataset
    from segedge.export.pipeline import ExportOptions, export_model
    from segedge.runtime import Segmenter

    ds = open_dataset(dataset, data, split)
    n = len(ds) if limit is None else min(limit, len(ds))
    pairs = [ds[i] for i in range(n)]
    if not pairs:
        raise SegedgeError(f"no labelled frames in {data} ({split}); check --data and --split")
    segs: dict[str, Segmenter] = {}
    folders: dict[str, str] = {}
    for io, upsample in (("float", False), ("raw", False), ("raw", True)):
        size_tag = f"{input_size[0]}x{input_size[1]}" if input_size else "default"
        folder = exports / f"{model}-{size_tag}-{io}{'-up' if upsample else ''}"
        opts = ExportOptions(model=model, weights=weights, targets=target, input_size=input_size, calib=calib,
                             io=io, upsample=upsample, out=folder)
        res = export_model(opts)
        folders[io + ("/upsample" if upsample else "")] = portable_path(res.out_dir)
        if io == "float":
            base = Segmenter.load(res.out_dir, target=target, threads=threads, postprocess="fast")
            segs["float/fast"] = base
            segs["float/exact"] = Segmenter(base.backend, base.info, "exact")
        else:
            segs["raw/upsample" if upsample else "raw"] = Segmenter.load(res.out_dir, target=target, threads=threads)
    predictors = {k: s.predict for k, s in segs.items()}
    frames = [f for f, _ in pairs]
    lat = time_variants(predictors, frames, iters, warmup)
    acc = accuracy(predictors, pairs, ds.num_classes, ds.class_names, reference="float/exact")
    info = segs["float/fast"].info
    # Post-processing alone, on the same logits: what fast vs exact costs once inference is done.
    from segedge.runtime.postprocess import to_labels

    outs = [(np.asarray(segs["float/fast"].logits(f)), f.shape[:2]) for f in frames[:8]]
    post = time_variants({m: (lambda o, m=m: to_labels(o[0], o[1], m)) for m in ("fast", "exact")}, outs, iters,
                         warmup)
    results = {
        "format": "segedge-io-modes/1", "model": model, "target": target,
        "input_size": list(info.input_size), "frame_size": list(frames[0].shape[:2]),
        "dataset": {"name": dataset, "root": portable_path(data), "split": split, "frames": n},
        "timing": {"iters": iters, "warmup": warmup, "threads": threads,
                   "order": f"rotating blocks of {BLOCK} (an untimed call opening each), one frame per round",
                   "what": "frame in memory -> labels at frame size (pre-process + inference + post-process)"},
        "exports": folders,
        "variants": {k: {"latency": lat[k], **acc[k]} for k in predictors},
        "postprocess_only": {m: post[m] for m in post},
        "machine": machine_info(threads),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "io_modes.json", results)
    write_text_atomic(out / "io_modes.md", to_markdown(results))
    return results


def to_markdown(results: dict[str, Any]) -> str:
    """A Markdown table of the comparison, ratios against float/fast."""
    v = results["variants"]
    base = v["float/fast"]["latency"]["p50_ms"]
    lines = [f"{results['model']} `{results['target']}` at {results['input_size'][0]}x{results['input_size'][1]}, "
             f"frames {results['frame_size'][0]}x{results['frame_size'][1]}, {results['dataset']['frames']} "
             f"{results['dataset']['name']} {results['dataset']['split']} frames",
             "",
             "| variant | end-to-end p50 ms | mean ms | vs float/fast | mIoU % | agreement vs float/exact |",
             "|---|---:|---:|---:|---:|---:|"]
    for k, r in v.items():
        lat = r["latency"]
        lines.append(f"| {k} | {lat['p50_ms']:.2f} | {lat['mean_ms']:.2f} | {lat['p50_ms'] / base:.2f}x | "
                     f"{100 * r['miou']:.2f} | {100 * r['agreement_vs_exact']:.2f} % |")
    if "postprocess_only" in results:
        p = results["postprocess_only"]
        lines += ["", f"Post-processing alone (logits → labels at the frame size), p50: fast {p['fast']['p50_ms']:.2f} ms, "
                      f"exact {p['exact']['p50_ms']:.2f} ms."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: python benchmarks/io_modes.py --model b0 --data CAMVID."""
    from segedge.models import parse_size

    ap = argparse.ArgumentParser(prog="python benchmarks/io_modes.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--weights", default=None, help="checkpoint (default: the embedded demo weights)")
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--split", default="val")
    ap.add_argument("--input-size", default=None)
    ap.add_argument("--target", default="onnx", help="export target timed in every variant (onnx, ort-int8, ...)")
    ap.add_argument("--calib", default=None, help="calibration source for INT8 targets")
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N frames")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out/io-modes"))
    ap.add_argument("--exports", type=Path, default=Path("exports/io-modes"))
    a = ap.parse_args(argv)
    try:
        res = run(a.model, a.weights, a.data, a.dataset, a.split, parse_size(a.input_size) if a.input_size else None,
                  a.target, a.calib, a.limit, a.iters, a.warmup, a.threads, a.out, a.exports)
    except SegedgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(to_markdown(res))
    print(f"wrote {a.out / 'io_modes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
