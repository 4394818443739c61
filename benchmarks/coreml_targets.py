"""CoreML targets' figures: package sizes, proxy mIoU drop vs PyTorch FP32, conversion time, op histogram.

For each model it runs `segedge export --target coreml-fp16,coreml-int8,coreml-w8a8` (and `coreml-int8
--palettize N` for each --palettize value) with --val, and writes one JSON per model to --out. coreml-w8a8
calibrates on 32 CamVid train frames (`--calib DATA/train`, the frames every other INT8 benchmark uses); the
others need none. `--targets` runs a subset and keeps the other targets' figures already in the JSON (each target
records when it was measured). The accuracy figures are PyTorch proxies of what was converted (see
segedge.export.coreml_convert / coreml_w8a8), not CoreML predictions: nothing here runs a package.

    python benchmarks/coreml_targets.py --data ../shared/datasets/camvid --out benchmarks/results/coreml
    python benchmarks/coreml_targets.py --data ../shared/datasets/camvid --targets '' --palettize '' --dusk

`--dusk` adds each target's proxy drop on CamVid's dusk drive 0001TP (its train frames minus the calibration
frames), the split held out by sequence that the INT8 budget benchmark also reports (with `--targets ''`: for the
targets already in the JSON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
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


def _options(names: str, data: str) -> dict[str, Any]:
    """Extra export options of a run: the W8A8 target calibrates on CamVid train frames."""
    return {"calib": str(Path(data) / "train")} if "coreml-w8a8" in names else {}


def run_model(model: str, size: str, data: str, targets: list[str], palettize: list[int], work: Path
              ) -> dict[str, Any]:
    """The CoreML targets of one model: `targets` in one export, each palettisation in its own."""
    runs = ([(",".join(targets), {})] if targets else []) + [("coreml-int8", {"palettize": bits}) for bits in palettize]
    figures: dict[str, Any] = {}
    onnx_bytes = None
    for i, (names, options) in enumerate(runs):
        start = time.perf_counter()
        res = export_model(ExportOptions(model, targets=names, input_size=size, val=data, val_count=None,
                                         out=work / f"{model}-{i}", target_options=options,
                                         **_options(names, data)), progress=print)
        seconds = time.perf_counter() - start
        for name, entry in res.manifest["targets"].items():
            if name == "onnx":
                onnx_bytes = entry["size_bytes"]
                continue
            key = name if not options else f"{name}-pal{options['palettize']}"
            figures[key] = {**_figures(name, entry), "export_seconds_total": round(seconds, 1),
                            "measured": dt.date.today().isoformat()}
            if entry.get("calibration"):
                figures[key]["calibration"] = entry["calibration"]
    return {"model": model, "input_size": size, "fp32_onnx_bytes": onnx_bytes, "targets": figures}


def dusk_pairs(data: str) -> tuple[list[Any], list[str]]:
    """(frame, label) pairs of the dusk drive 0001TP in CamVid train, minus the 32 calibration frames; their names."""
    from segedge.data.datasets import open_dataset
    from segedge.data.splits import CAMVID_DUSK, held_out_by_sequence
    from segedge.export.calibration import load_calibration_frames

    calib = load_calibration_frames(str(Path(data) / "train")).names
    ds = open_dataset("camvid", Path(data), "train")
    idx = held_out_by_sequence(ds, CAMVID_DUSK, calib)
    return [ds[i] for i in idx], [ds.samples[i].image_path.name for i in idx]


def run_dusk(model: str, size: str, data: str, work: Path, targets: list[str]) -> dict[str, dict[str, Any]]:
    """Each target's proxy drop on the dusk drive (frames held out from calibration), as the other INT8 benchmarks."""
    pairs, names = dusk_pairs(data)
    start = time.perf_counter()
    options = _options(",".join(targets), data)
    res = export_model(ExportOptions(model, targets=targets, input_size=size, val=pairs, val_count=None,
                                     out=work / f"{model}-dusk", **options), progress=print)
    seconds = round(time.perf_counter() - start, 1)
    out = {}
    for t in targets:
        val = res.manifest["targets"][t]["verification"]["val"]
        out[t] = {"frames": len(names), "first_frame": names[0], "last_frame": names[-1], "proxy_miou": val["miou"],
                  "pytorch_miou": val["pytorch_miou"],
                  "proxy_miou_drop_pt": round(100 * (val["pytorch_miou"] - val["miou"]), 3),
                  "export_seconds_total": seconds, "measured": dt.date.today().isoformat()}
    return out


def _merge(path: Path, res: dict[str, Any]) -> dict[str, Any]:
    """`res` with the targets of an earlier JSON at `path` that this run did not measure (same model and size)."""
    if not path.is_file():
        return res
    old = json.loads(path.read_text())
    if (old.get("model"), old.get("input_size")) != (res["model"], res["input_size"]):
        return res
    res["targets"] = {**old.get("targets", {}), **res["targets"]}
    res["fp32_onnx_bytes"] = res["fp32_onnx_bytes"] or old.get("fp32_onnx_bytes")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="b0,topformer-t")
    ap.add_argument("--input-size", default="384x512")
    ap.add_argument("--data", required=True, help="labelled CamVid folder (val split)")
    ap.add_argument("--targets", default="coreml-fp16,coreml-int8,coreml-w8a8",
                    help="targets of the main export ('' none: palettisation runs only)")
    ap.add_argument("--palettize", default="6", help="comma-separated bit widths for extra coreml-int8 runs ('' none)")
    ap.add_argument("--out", default="benchmarks/results/coreml")
    ap.add_argument("--dusk", action="store_true", help="also each target's proxy drop on CamVid drive 0001TP (train "
                    "frames that were not calibration frames)")
    args = ap.parse_args()
    bits = [int(b) for b in args.palettize.split(",") if b.strip()]
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="segedge-coreml-") as tmp:
        for model in args.models.split(","):
            targets = [t.strip() for t in args.targets.split(",") if t.strip()]
            res = _merge(out / f"{model.strip()}.json",
                         run_model(model.strip(), args.input_size, args.data, targets, bits, Path(tmp)))
            dusk_targets = [t for t in ("coreml-fp16", "coreml-int8", "coreml-w8a8") if t in res["targets"]]
            if args.dusk and dusk_targets:
                for t, fig in run_dusk(model.strip(), args.input_size, args.data, Path(tmp), dusk_targets).items():
                    res["targets"][t]["dusk_0001TP"] = fig
            res.update({"machine": machine_info(),
                        "not_run": "CoreML prediction (needs macOS): every accuracy figure is a PyTorch proxy"})
            write_json_atomic(out / f"{model.strip()}.json", res)
            print(f"wrote {out / (model.strip() + '.json')}")


if __name__ == "__main__":
    main()
