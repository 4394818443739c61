"""Figures of issue 12 (items 1-2): INT8 sensitivity reports and `--max-miou-drop 0.3` for the demo exports.

For each demo model: `export_sensitivity` for qdq and ort-int8 on the first --sens-count CamVid val frames (a copy of
the demo export folder under --work, so exports/ is untouched), then one `segedge export --target ort-int8 (+qdq)
--max-miou-drop 0.3 --val camvid --val-count N` (alternate frames: budget / held back), then the FP32 model, the
family-default INT8 models and the budgeted ones on the held-out dusk drive 0001TP (its CamVid train frames minus the
calibration frames). JSON figures only (no frames) go to benchmarks/results/int8-budget/. ORT uses 1 thread.

    nohup .venv/bin/python benchmarks/int8_budget.py > bench-out/int8-budget.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results" / "int8-budget"  # where the figures go
DEMOS = {"b0": "exports/demo-b0", "topformer-t": "exports/demo-topformer-t"}


def dusk_set(camvid: Path, table_frames: list[str], make_input):  # noqa: ANN001, ANN201
    """0001TP train frames that were not calibration frames, as a LabelledSet."""
    from segedge.data.datasets import open_dataset
    from segedge.data.splits import CAMVID_DUSK, held_out_by_sequence
    from segedge.export.sensitivity import labelled_set

    ds = open_dataset("camvid", camvid, "train")
    idx = held_out_by_sequence(ds, CAMVID_DUSK, table_frames)
    return labelled_set((ds[i] for i in idx), make_input, "dusk-0001TP", [ds.samples[i].image_path.name for i in idx])


def evaluate_dusk(out: Path, demo: Path, camvid: Path) -> dict:
    """mIoU of FP32, family-default and budgeted INT8 models on the dusk drive."""
    import onnx

    from segedge.contract import Manifest
    from segedge.export.pipeline import _make_input
    from segedge.export.sensitivity import compare_logits, miou_of, run_logits

    m = Manifest.read(out)
    c = m.contract
    table = json.loads((out / m.targets["ort-int8"].get("calibration")["table"]).read_text())
    make = lambda f: _make_input(f, c.input.size, False, "RGB", c.input.mean, c.input.std)  # noqa: E731
    frames = dusk_set(camvid, table["frames"], make)
    ref = run_logits(onnx.load(str(out / "model.onnx")), frames)
    fp32 = miou_of(ref, frames, c.num_classes)
    res = {"frames": len(frames), "fp32_miou": fp32}
    for target, file in (("ort-int8", "model.int8.onnx"), ("qdq", "model.qdq.onnx")):
        for which, folder in (("default", demo), ("budget", out)):
            got = run_logits(onnx.load(str(folder / file)), frames)
            miou = miou_of(got, frames, c.num_classes)
            res[f"{target}.{which}"] = {"miou": miou, "drop_pt": round(100 * (fp32 - miou), 3),
                                        **compare_logits(got, ref)}
    return res


def _row(model: str, target: str, fig: dict) -> str:
    b, d = fig["budget"][target], fig["dusk_0001TP"]
    lat = b.get("latency") or {}
    isl = ", ".join(i["group"] for i in b["float_islands"]) or "none"
    ms = f"{lat['default_ms']:.1f} / {lat['chosen_ms']:.1f} / {lat['fp32_ms']:.1f}" if lat else "n/a (TensorRT)"
    return (f"| {model} | {target} | {b['budget_set']['default']['drop_pt']:+.2f} → "
            f"{b['budget_set']['chosen']['drop_pt']:+.2f} | {b['held_back_set']['default']['drop_pt']:+.2f} → "
            f"{b['held_back_set']['chosen']['drop_pt']:+.2f} | {d[target + '.default']['drop_pt']:+.2f} → "
            f"{d[target + '.budget']['drop_pt']:+.2f} | {isl} | {ms} |")


def write_summary() -> None:
    """README.md here from the JSON figures."""
    lines = ["# INT8 sensitivity and `--max-miou-drop 0.3` (issue 12, items 1-2)", "",
             "Drops in mIoU points vs the FP32 ONNX through ONNX Runtime CPU (1 thread; `qdq` is the TensorRT graph "
             "run by ORT as an accuracy proxy). Budget / held-back: alternate frames of the first --val-count CamVid "
             "val frames (even → choosing, odd → reporting only). Dusk: drive 0001TP (CamVid train frames minus the "
             "calibration frames), never used for any choice. Latency: default / budgeted / FP32 ms, median of 10, "
             "measured on a shared 2-core machine (other jobs running: noisy).", "",
             "| model | target | budget set: default → budget | held back | dusk 0001TP | float islands | ms |",
             "|---|---|---|---|---|---|---|"]
    cpu = None
    for f in sorted(HERE.glob("*.budget.json")):
        fig = json.loads(f.read_text())
        cpu = fig["cpu"]
        lines += [_row(fig["model"], t, fig) for t in ("qdq", "ort-int8") if t in fig.get("budget", {})]
    lines += ["", f"CPU: {cpu['model'] if cpu else '?'} ({cpu['arch'] if cpu else '?'}, "
                  f"{cpu['cores_available'] if cpu else '?'} cores available).", "",
              "Sensitivity tables (group = model block; only = that group INT8 alone; left out = that group float, "
              "rest INT8): `<model>.sensitivity.<target>.md`, JSON and plot beside them.", "",
              "Caveat: the dusk *default* column runs the demo export's files (exports/demo-*); its B0 model.qdq.onnx "
              "predates the current NVIDIA placement (486 vs 352 Q/DQ nodes), so B0 qdq default→budget on dusk "
              "compares two placements, not two island sets (the search kept nothing float for B0).", ""]
    (HERE / "README.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--camvid", default="../shared/datasets/camvid", help="CamVid root (never copied here)")
    ap.add_argument("--work", default="bench-out/int8-budget", help="scratch folder (git-ignored)")
    ap.add_argument("--models", default="topformer-t,b0")
    ap.add_argument("--sens-count", type=int, default=48)
    ap.add_argument("--val-count", type=int, default=96)
    ap.add_argument("--budget", type=float, default=0.3)
    args = ap.parse_args()
    from segedge.doctor import cpu_report
    from segedge.export.pipeline import ExportOptions, export_model
    from segedge.export.sensitivity import export_sensitivity

    camvid, work = Path(args.camvid), Path(args.work)
    for model in args.models.split(","):
        demo = work / "exports" / Path(DEMOS[model]).name
        if not demo.is_dir():
            shutil.copytree(DEMOS[model], demo)
        fig: dict = {"model": model, "cpu": cpu_report(), "threads": 1, "sensitivity": {}}
        for target in ("qdq", "ort-int8"):
            t0 = time.perf_counter()
            rep = export_sensitivity(demo, target, camvid, args.sens_count, "block", 1, progress=print)
            for f in rep["files"]:
                shutil.copy(demo / f, HERE / f"{model}.{f}")
            fig["sensitivity"][target] = {"file": f"{model}.sensitivity.{target}.json",
                                          "wall_s": round(time.perf_counter() - t0, 1)}
            print(f"{model} {target} sensitivity done in {time.perf_counter() - t0:.0f} s", flush=True)
        out = work / f"budget-{model}"
        t0 = time.perf_counter()
        res = export_model(ExportOptions(model=model, targets="ort-int8", calib=str(camvid / "train"),
                                         val=str(camvid), val_count=args.val_count, out=out, replace=True,
                                         max_miou_drop=args.budget), progress=print)
        fig["budget_export_wall_s"] = round(time.perf_counter() - t0, 1)
        fig["budget"] = {t: res.manifest["targets"][t]["quantization"]["budget"] for t in ("ort-int8", "qdq")}
        fig["verification"] = {t: res.manifest["targets"][t]["verification"].get("val")
                               for t in ("onnx", "ort-int8", "qdq")}
        fig["dusk_0001TP"] = evaluate_dusk(out, demo, camvid)
        (HERE / f"{model}.budget.json").write_text(json.dumps(fig, indent=1, default=str))
        print(f"{model} done", flush=True)
        write_summary()


if __name__ == "__main__":
    main()
