"""CoreML targets' figures: package sizes, proxy mIoU drop vs PyTorch FP32, conversion time, op histogram.

For each model it runs `segedge export --target coreml-fp16,coreml-int8` (and `coreml-int8 --palettize N` for each
--palettize value) with --val, and writes one JSON per model to --out. The accuracy figures are PyTorch proxies of
what was converted (see segedge.export.coreml_convert), not CoreML predictions: nothing here runs a package.

    python benchmarks/coreml_targets.py --data ../shared/datasets/camvid --out benchmarks/results/coreml
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from segedge.benchmarks.machine import machine_info
from segedge.export.pipeline import ExportOptions, export_model
from segedge.io import write_json_atomic


def _figures(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The figures of one target entry."""
    v = entry["verification"]
    val = v.get("val") or {}
    out = {"file": entry["file"], "precision": entry["precision"], "package_bytes": entry["package"]["size_bytes"],
           "conversion_seconds": entry["conversion_seconds"], "proxy": v["proxy"],
           "check_max_abs_diff": v["max_abs_diff"], "check_argmax_agreement": v["argmax_agreement"],
           "inspection": entry["inspection"]}
    if val.get("miou") is not None:
        out.update({"proxy_miou": val["miou"], "pytorch_miou": val["pytorch_miou"],
                    "proxy_miou_drop_pt": round(100 * (val["pytorch_miou"] - val["miou"]), 3),
                    "val_frames": val.get("frames", val.get("count"))})
    if entry.get("quantization"):
        out["compression_seconds"] = entry["quantization"].get("compression_seconds")
        out["quantization"] = entry["quantization"]
    return out


def run_model(model: str, size: str, data: str, palettize: list[int], work: Path) -> dict[str, Any]:
    """Every CoreML target of one model: fp16 + int8 in one export, each palettisation in its own."""
    runs = [("coreml-fp16,coreml-int8", {})] + [("coreml-int8", {"palettize": bits}) for bits in palettize]
    targets: dict[str, Any] = {}
    onnx_bytes = None
    for i, (names, options) in enumerate(runs):
        start = time.perf_counter()
        res = export_model(ExportOptions(model, targets=names, input_size=size, val=data, val_count=None,
                                         out=work / f"{model}-{i}", target_options=options), progress=print)
        seconds = time.perf_counter() - start
        for name, entry in res.manifest["targets"].items():
            if name == "onnx":
                onnx_bytes = entry["size_bytes"]
                continue
            key = name if not options else f"{name}-pal{options['palettize']}"
            targets[key] = {**_figures(name, entry), "export_seconds_total": round(seconds, 1)}
    return {"model": model, "input_size": size, "fp32_onnx_bytes": onnx_bytes, "targets": targets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="b0,topformer-t")
    ap.add_argument("--input-size", default="384x512")
    ap.add_argument("--data", required=True, help="labelled CamVid folder (val split)")
    ap.add_argument("--palettize", default="6", help="comma-separated bit widths for extra coreml-int8 runs ('' none)")
    ap.add_argument("--out", default="benchmarks/results/coreml")
    args = ap.parse_args()
    bits = [int(b) for b in args.palettize.split(",") if b.strip()]
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="segedge-coreml-") as tmp:
        for model in args.models.split(","):
            res = run_model(model.strip(), args.input_size, args.data, bits, Path(tmp))
            res.update({"machine": machine_info(),
                        "not_run": "CoreML prediction (needs macOS): every accuracy figure is a PyTorch proxy"})
            write_json_atomic(out / f"{model.strip()}.json", res)
            print(f"wrote {out / (model.strip() + '.json')}")


if __name__ == "__main__":
    main()
