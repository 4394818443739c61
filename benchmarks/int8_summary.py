"""Issue 12's one table: every INT8 target of B0 and TopFormer-T with today's default, with `--max-miou-drop 0.3` and
with QAT, each one's mIoU drop on frames no choice ever saw, and its latency against its own runtime's FP32, all
measured in one run on this machine.

For each model (demo checkpoint, the export's inference form):

1. **default**: `segedge export --target onnx,ort-int8,qdq,openvino,openvino-int8`, calibrated on CamVid train
   *without the dusk drive 0001TP* (32 frames, MinMax), no budget;
2. **budget**: the same export with `--val CAMVID --max-miou-drop 0.3` (the search chooses on the even val frames);
3. **QAT**: `segedge train --qat --qat-target T --qat-loss distill` (150 iterations, batch 4, CamVid train without
   0001TP) for `qdq` and `ort-int8`, each exported with its learned ranges; `openvino-int8` from the `qdq` QAT weights
   (NNCF's default scheme is the same: symmetric int8 activations, per-channel int8 weights) with NNCF's own
   calibration, since OpenVINO takes no learned ranges;
4. drops vs the original model's FP32 ONNX on the odd val frames (never used for choosing) and on 0001TP (never seen
   by calibration, QAT or any choice), and on all of val for reference;
5. one rotating-block timing run (2 threads, inference alone) of every model and of the FP32 references: ONNX
   Runtime FP32 for `ort-int8`, OpenVINO FP32 with its f32 and bf16 hints for `openvino-int8`; `qdq` runs through
   ONNX Runtime as an accuracy proxy for TensorRT and its time says nothing about TensorRT.

The script prints `TIMING` before step 5: nothing else may run on the machine from then on. Finished exports and QAT
runs are reused when it is started again. JSON and a markdown table (never frames) go to benchmarks/results/int8-summary/.

    nohup .venv/bin/python benchmarks/int8_summary.py > bench-out/int8-summary.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "results" / "int8-summary"
TARGETS = ("ort-int8", "qdq", "openvino-int8")
FP32_OF = {"ort-int8": ("onnx",), "qdq": ("onnx",), "openvino-int8": ("openvino/f32", "openvino/bf16")}
sys.path.insert(0, str(Path(__file__).resolve().parent))


def export(model: str, out: Path, targets: str, data: Path, weights: Path | None = None,
           budget: float | None = None) -> tuple[Path, float]:
    """One `segedge export` (reused when its manifest exists): (folder, wall seconds)."""
    from segedge.data.splits import calibration_source_without
    from segedge.export import ExportOptions, export_model

    stamp = out / "wall_s.txt"
    if (out / "manifest.json").exists() and stamp.exists():
        return out, float(stamp.read_text())
    t0 = time.perf_counter()
    export_model(ExportOptions(model, weights=weights, targets=targets, calib=calibration_source_without(data),
                               calib_count=32, val=data if budget is not None else None, val_count=None,
                               max_miou_drop=budget, out=out, replace=True),
                 progress=lambda m: print(f"  {out.name}: {m}", flush=True))
    wall = time.perf_counter() - t0
    stamp.write_text(f"{wall:.1f}")
    return out, wall


def qat_runs(model: str, data: Path, work: Path, iters: int) -> dict[str, Any]:
    """QAT (distill) for qdq and ort-int8 and their exports; openvino-int8 from the qdq QAT weights."""
    from qat import qat_train, split_without

    from segedge.models import default_weights

    a = argparse.Namespace(iters=iters, batch_size=4, lr=None, scale_lr=None, checkpoint_every=50, threads=2)
    train_data = split_without(data, work)
    out: dict[str, Any] = {}
    for target in ("qdq", "ort-int8"):
        run = work / f"{model}-qat-{target}"
        print(f"{model}: QAT for {target}", flush=True)
        summary = qat_train(model, default_weights(model), train_data, run / "run", target, "distill", a)
        folder, wall = export(model, run / "export", target, data, weights=run / "run" / "last.safetensors")
        out[target] = {"folder": folder, "train_seconds": summary["train_seconds"],
                       "process_wall_s": summary.get("process_wall_s"), "iterations": summary["iterations"],
                       "export_s": wall}
    run = work / f"{model}-qat-qdq"
    folder, wall = export(model, run / "export-openvino-int8", "openvino-int8", data,
                          weights=run / "run" / "last.safetensors")
    out["openvino-int8"] = {**out["qdq"], "folder": folder, "export_s": wall,
                            "note": "the qdq QAT weights, NNCF calibration (OpenVINO takes no learned ranges)"}
    return out


def eval_sets(data: Path, ref: Path) -> dict[str, Any]:
    """The held-back val half (odd frames), 0001TP (no calibration frame in it) and all of val."""
    from cpu_tune import eval_sets as val_and_dusk

    from segedge.contract import read_manifest
    from segedge.export.assemble import make_input
    from segedge.export.sensitivity import split_budget

    c = read_manifest(ref)["input"]
    make = lambda f: make_input(f, (c["height"], c["width"]), False, "RGB", c["mean"], c["std"])  # noqa: E731
    sets = val_and_dusk(data, make, [])
    _, held, _ = split_budget(sets["val"])
    return {"val held back": held, "0001TP": sets["0001TP"], "val": sets["val"]}


def backends(variants: dict[str, Path], threads: int) -> dict[str, Any]:
    """One runtime backend per (variant, target) and per FP32 reference, each as it deploys (recorded hints)."""
    from segedge.runtime import Segmenter

    default = variants["default"]
    out = {"onnx": Segmenter.load(default, target="onnx", threads=threads).backend}
    for hint in ("f32", "bf16"):
        out[f"openvino/{hint}"] = Segmenter.load(default, target="openvino", threads=threads, precision=hint).backend
    for variant, folder in variants.items():
        for target in TARGETS:
            f = folder if isinstance(folder, Path) else folder.get(target)
            if f is not None:
                out[f"{target} {variant}"] = Segmenter.load(f, target=target, threads=threads).backend
    return out


def manifest_facts(folder: Path, target: str) -> dict[str, Any]:
    """What the manifest says of one INT8 target: islands, budget outcome, precision hint, calibration."""
    from segedge.contract import read_manifest

    e = read_manifest(folder)["targets"][target]
    q = e.get("quantization", {})
    b = q.get("budget") or {}
    islands = [i["group"] for i in b["float_islands"]] if b.get("float_islands") is not None else None
    return {"float_islands": islands, "precision_hint": e.get("inference_precision_hint"),
            "budget": {k: b.get(k) for k in ("max_miou_drop", "chosen", "budget_set", "held_back_set") if k in b},
            "calibration_method": (e.get("calibration") or {}).get("method")}


def run_model(model: str, data: Path, work: Path, iters: int, threads: int) -> dict[str, Any]:
    """Everything for one model; the timing is left to the caller's single run."""
    default, wall_default = export(model, work / f"{model}-default", "onnx,ort-int8,qdq,openvino,openvino-int8", data)
    budget, wall_budget = export(model, work / f"{model}-budget", "onnx,ort-int8,qdq,openvino-int8", data,
                                 budget=0.3)
    qat = qat_runs(model, data, work, iters)
    variants: dict[str, Any] = {"default": default, "budget": budget,
                                "qat": {t: q["folder"] for t, q in qat.items()}}
    facts = {v: {t: manifest_facts(f if isinstance(f, Path) else f[t], t) for t in TARGETS}
             for v, f in variants.items()}
    return {"model": model, "variants": variants, "facts": facts,
            "wall_s": {"default_export": wall_default, "budget_export": wall_budget},
            "qat": {t: {k: v for k, v in q.items() if k != "folder"} for t, q in qat.items()}}


def time_all(bes: dict[str, Any], inputs: list[Any], iters: int) -> dict[str, Any]:
    """p50 of every backend in one rotating-block run (blocks of 10, one untimed call opening each)."""
    from cpu_tune import time_all as rotating

    return rotating(bes, inputs, iters, 10)


def table(results: list[dict[str, Any]], cpu: dict[str, Any]) -> str:
    """The markdown table: per model, target and variant, drops and latency vs its runtime's FP32."""
    lines = ["# INT8 per target: default, `--max-miou-drop 0.3`, QAT (issue 12)", "",
             f"CPU: {cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores_available')} cores; ISA "
             f"{', '.join(k for k, v in cpu.get('isa', {}).items() if v)}). Made by `benchmarks/int8_summary.py`, one "
             "run, nothing else running during the timing. Drops in mIoU points vs the original model's FP32 ONNX on "
             "the held-back val half (odd frames, never used for choosing), on the dusk drive 0001TP (held out by "
             "sequence from calibration, QAT and every choice) and on all of val. Latency: inference p50, 2 threads, "
             "one rotating-block run; × FP32 = against the same runtime's FP32 (ONNX Runtime; OpenVINO with the f32 "
             "and the bf16 hint). `qdq` is the TensorRT graph run by ONNX Runtime as an accuracy proxy: its time is "
             "not TensorRT's.", "",
             "| model | target | variant | drop held-back val | drop 0001TP | drop all val | float islands | p50 ms | "
             "× FP32 |", "|---|---|---|---:|---:|---:|---|---:|---|"]
    for r in results:
        lat, acc = r["latency"], r["accuracy"]
        for target in TARGETS:
            for variant in ("default", "budget", "qat"):
                key = f"{target} {variant}"
                if key not in lat:
                    continue
                isl = r["facts"][variant][target]["float_islands"]  # None: no search ran, the family's defaults
                isl = "family default" if isl is None else ", ".join(isl) or "none"
                ratio = " / ".join(f"{lat[key]['p50_ms'] / lat[f]['p50_ms']:.2f} ({f.split('/')[-1]})"
                                   if "/" in f else f"{lat[key]['p50_ms'] / lat[f]['p50_ms']:.2f}"
                                   for f in FP32_OF[target])
                d = [f"{acc[s][key]['drop_pt']:+.2f}" for s in ("val held back", "0001TP", "val")]
                lines.append(f"| {r['model']} | {target} | {variant} | {' | '.join(d)} | {isl} | "
                             f"{lat[key]['p50_ms']:.2f} | {ratio} |")
        fp = ", ".join(f"{k} {v['p50_ms']:.2f} ms" for k, v in lat.items() if k in ("onnx", "openvino/f32",
                                                                                  "openvino/bf16"))
        q = r["qat"]
        lines.append(f"| {r['model']} | FP32 | | | | | | {fp} | |")
        lines.append(f"| {r['model']} | wall time | | | | | | default export {r['wall_s']['default_export']:.0f} s, "
                     f"budget export {r['wall_s']['budget_export']:.0f} s, QAT qdq "
                     f"{q['qdq']['train_seconds'] / 60:.1f} min, QAT ort-int8 {q['ort-int8']['train_seconds'] / 60:.1f} "
                     f"min ({q['qdq']['iterations']} iterations) | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Build, measure and write the figures for every model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/camvid"))
    ap.add_argument("--models", default="topformer-t,b0")
    ap.add_argument("--work", type=Path, default=Path("bench-out/int8-summary"))
    ap.add_argument("--qat-iters", type=int, default=150)
    ap.add_argument("--iters", type=int, default=50, help="timed calls per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE)
    a = ap.parse_args()
    from cpu_tune import drops

    from segedge.contract import read_manifest
    from segedge.doctor import cpu_report
    from segedge.runtime.backends.ort import OnnxRuntimeBackend

    a.work.mkdir(parents=True, exist_ok=True)
    results = [run_model(m, a.data, a.work, a.qat_iters, a.threads) for m in a.models.split(",")]
    for r in results:
        sets = eval_sets(a.data, r["variants"]["default"])
        bes = backends(r["variants"], a.threads)
        ref = OnnxRuntimeBackend(str(r["variants"]["default"] / "model.onnx"))
        r["accuracy"] = drops(bes, sets, ref, int(read_manifest(r["variants"]["default"])["num_classes"]))
        r["inputs"] = sets["val"].inputs[:8]
    print("TIMING: nothing else may run now", flush=True)
    for r in results:
        r["latency"] = {k: {m: round(v[m], 3) for m in ("p50_ms", "p90_ms", "mean_ms")}
                        for k, v in time_all(backends(r["variants"], a.threads), r.pop("inputs"), a.iters).items()}
    print("TIMING done", flush=True)
    cpu = cpu_report()
    a.out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r["variants"] = {k: str(v) if isinstance(v, Path) else {t: str(p) for t, p in v.items()}
                         for k, v in r["variants"].items()}
    tag = cpu_tag(cpu)
    (a.out / f"{tag}.json").write_text(json.dumps({"cpu": cpu, "results": results}, indent=1, default=str) + "\n")
    (a.out / f"{tag}.md").write_text(table(results, cpu))
    print(table(results, cpu))


def cpu_tag(cpu: dict[str, Any]) -> str:
    """A file name for this CPU class: vendor and the ISA that decides INT8 speed."""
    name = str(cpu.get("model", "cpu")).lower()
    vendor = "intel" if "intel" in name else "amd" if "amd" in name else str(cpu.get("arch", "cpu"))
    isa = cpu.get("isa", {})
    feat = "amx" if isa.get("amx_int8") else "vnni" if isa.get("avx512_vnni") else "neon" if isa.get("neon") else "base"
    return f"{vendor}-{feat}"


if __name__ == "__main__":
    main()
