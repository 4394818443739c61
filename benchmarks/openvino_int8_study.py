"""Why `openvino-int8` keeps SegFormer's stage-1 spatial-reduction convs float: mIoU with and without that choice.

For one checkpoint it exports the FP32 ONNX once, converts it to OpenVINO, and for each calibration seed quantizes it
with NNCF twice: with segedge's settings for the family (`nncf_settings`) and with the same settings minus the
ignored-scope patterns. Every model is evaluated with OpenVINO (f32 inference hint, so only INT8 differs) and
exact post-processing on the labelled frames. Accuracy only; run on an idle machine:

    python benchmarks/openvino_int8_study.py --model b0 --data ../shared/datasets/camvid \
        --out benchmarks/results/openvino-int8
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from segedge.data.datasets import open_dataset
from segedge.evaluation import evaluate_predictors
from segedge.export.calibration import load_calibration_frames
from segedge.export.pipeline import ExportOptions, export_model
from segedge.export.targets.openvino_int8 import (count_fake_quantize, kept_float_nodes, nncf_kwargs,
                                                  nncf_output_to_stderr, nncf_settings)
from segedge.io import write_json_atomic, write_text_atomic
from segedge.models import get_spec
from segedge.runtime import Segmenter
from segedge.runtime.backends.openvino import OpenVINOBackend


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="b0")
    ap.add_argument("--weights", default=None)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--seeds", default="0,1,2", help="calibration frame selection seeds")
    ap.add_argument("--calib-count", type=int, default=32)
    ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N val frames only")
    ap.add_argument("--out", type=Path, default=Path("bench-out/openvino-int8"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/openvino-int8-work"),
                    help="export folder location (kept out of --out, which may be committed)")
    a = ap.parse_args()
    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.WARNING)
    folder = a.work / f"{a.model}-export"
    export_model(ExportOptions(model=a.model, weights=a.weights, targets="onnx", out=folder))
    ref = Segmenter.load(folder, target="onnx")
    ds = open_dataset("camvid", a.data, "val")
    pairs = [ds[i] for i in range(len(ds) if a.limit is None else min(a.limit, len(ds)))]

    def miou(model: object) -> float:
        seg = Segmenter(OpenVINOBackend(model, precision="f32"), ref.info, "exact")
        res = evaluate_predictors({"m": seg.predict}, pairs, ds.num_classes, ds.class_names)
        return 100 * float(res.metrics["m"].miou)

    fp32 = ov.convert_model(str(folder / "model.onnx"))
    base = miou(fp32)
    shipped = nncf_settings(get_spec(a.model).family)
    variants = {"segedge settings": shipped, "without ignored patterns": {**shipped, "ignored_patterns": []}}
    rows = []
    for seed in (int(s) for s in a.seeds.split(",")):
        frames = load_calibration_frames(f"camvid:{a.data}:train", a.calib_count, seed=seed)
        inputs = [ref.prepare(f) for f in frames.frames]
        for name, settings in variants.items():
            with nncf_output_to_stderr():
                q = nncf.quantize(ov.convert_model(str(folder / "model.onnx")), nncf.Dataset(inputs),
                                  **nncf_kwargs(settings, len(inputs)))
            m = miou(q)
            rows.append({"seed": seed, "variant": name, "miou": m, "drop_pp": base - m,
                         "fake_quantize": count_fake_quantize(q),
                         "kept_float": kept_float_nodes(q, settings["ignored_patterns"])})
            print(f"seed {seed} {name:<26} mIoU {m:6.2f}  drop {base - m:+.2f} pp  FQ {rows[-1]['fake_quantize']}",
                  flush=True)
    result = {"model": a.model, "frames": len(pairs), "calib_count": a.calib_count, "fp32_miou": base,
              "settings": shipped, "rows": rows}
    write_json_atomic(a.out / f"{a.model}-openvino-int8-study.json", result)
    lines = [f"{a.model}: OpenVINO FP32 mIoU {base:.2f} % on {len(pairs)} CamVid val frames; NNCF on "
             f"{a.calib_count} train frames per seed", "", "| seed | variant | mIoU % | drop (pp) | FakeQuantize |",
             "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['seed']} | {r['variant']} | {r['miou']:.2f} | {r['drop_pp']:+.2f} | {r['fake_quantize']} |"
              for r in rows]
    write_text_atomic(a.out / f"{a.model}-openvino-int8-study.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
