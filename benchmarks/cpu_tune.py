"""Figures of issue 15: `--target cpu` on this CPU for the demo B0 and TopFormer-T, against the library defaults.

For each model, in one process and with nothing else running:

1. `segedge export --target onnx,ort-int8,cpu` calibrated on CamVid train *without the dusk drive 0001TP*, choosing on
   CamVid val (alternate frames: budget set / held back), the tuning wall time recorded;
2. the library-default baselines of `segedge bench --baselines` (ORT quantize_static defaults, OpenVINO defaults on
   the ONNX, NNCF quantize defaults) built on the same calibration frames, twice: on the export's FP32 ONNX (its
   inference form, e.g. SegFormer's folded decoder: the libraries given segedge's graph) and on the model traced as
   trained (`--no-fold`: what a user exporting with torch.onnx.export alone would quantize);
3. one rotating-block timing run of the chosen target (its own threads) and the baselines (library default threads);
4. the mIoU drop vs the FP32 ONNX of each on CamVid val (101 frames) and on 0001TP, held out by sequence (never seen
   by calibration or by the choice).

Aggregate JSON and a markdown table (never frames) go to benchmarks/results/cpu-tune/.

    nohup .venv/bin/python benchmarks/cpu_tune.py > bench-out/cpu-tune.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent / "results" / "cpu-tune"


def labelled(ds: Any, indices: list[int], make_input: Any, name: str) -> Any:
    """A LabelledSet of the dataset's frames at `indices`."""
    from segedge.export.sensitivity import labelled_set

    return labelled_set((ds[i] for i in indices), make_input, name,
                        [Path(ds.samples[i].image_path).name for i in indices])


def eval_sets(data: Path, make_input: Any, calib_names: list[str]) -> dict[str, Any]:
    """CamVid val, and the dusk drive 0001TP (train frames; calibration excluded that drive)."""
    from segedge.data.datasets import open_dataset
    from segedge.data.splits import CAMVID_DUSK, held_out_by_sequence

    val = open_dataset("camvid", data, "val")
    train = open_dataset("camvid", data, "train")
    dusk = held_out_by_sequence(train, CAMVID_DUSK, calib_names)
    return {"val": labelled(val, list(range(len(val))), make_input, "val"),
            CAMVID_DUSK: labelled(train, dusk, make_input, CAMVID_DUSK)}


def drops(backends: dict[str, Any], sets: dict[str, Any], fp32: Any, num_classes: int) -> dict[str, Any]:
    """mIoU drop (points) vs the FP32 ONNX of every backend on every set."""
    from segedge.export.sensitivity import miou_of
    from segedge.tune.measure import drop_figures, logits_of

    out: dict[str, Any] = {}
    for set_name, s in sets.items():
        ref = logits_of(fp32, s)
        ref_miou = miou_of(ref, s, num_classes)
        out[set_name] = {"fp32_miou": ref_miou, "frames": len(s)}
        for name, be in backends.items():
            fig = drop_figures(logits_of(be, s), ref, s, ref_miou, num_classes)
            out[set_name][name] = {k: fig[k] for k in ("miou", "drop_pt", "argmax_agreement")}
    return out


def time_rotating(items: dict[str, Any], inputs: list[Any], call: Any, iters: int, block: int) -> dict[str, Any]:
    """p50 etc. of `call(item, input)` for every item in one rotating-block run, the inputs taken in turn."""
    from segedge.benchmarks.stats import latency_stats, ns_to_ms
    from segedge.benchmarks.timing import time_blocks

    names = list(items)

    def phase(i: int, r: int) -> Any:
        item, x = items[names[i]], inputs[r % len(inputs)]
        return lambda: call(item, x)

    d = time_blocks(list(range(len(names))), [phase], 2, iters, block, settle_s=0.005)
    return {n: latency_stats(ns_to_ms(v)) for n, v in zip(names, d[0])}


def time_all(backends: dict[str, Any], inputs: list[Any], iters: int, block: int) -> dict[str, Any]:
    """Inference alone: every backend on prepared inputs."""
    return time_rotating(backends, inputs, lambda be, x: be.run(x), iters, block)


def time_e2e(segs: dict[str, Any], frames: list[Any], iters: int, block: int) -> dict[str, Any]:
    """Frame (BGR, its own size) → labels at the frame's size through each Segmenter."""
    return time_rotating(segs, frames, lambda seg, f: seg.predict(f), iters, block)


def reused_tuning_seconds(model: str, folder: Path) -> float:
    """The export wall time the earlier run recorded for `model` (results JSON beside --out), else the tuning
    report's own figure (the tuning step alone)."""
    prev = REUSE_FROM / "cpu-tune.json"
    if prev.is_file():
        for r in json.loads(prev.read_text()).get("results", []):
            if r.get("model") == model:
                return float(r["tuning_seconds"])
    return float(json.loads((folder / "cpu-tune.json").read_text())["tuning_seconds"])


REUSE_FROM = HERE


def run_model(model: str, data: Path, work: Path, iters: int, reuse: bool = False) -> dict[str, Any]:
    """Tune (or, with `reuse`, take the folder an earlier run tuned: its tuning time is the recorded one), build the
    baselines, time and measure everything for one model."""
    from segedge.benchmarks.baselines import BaselineContext, build_baseline, export_calibration_frames
    from segedge.contract import read_manifest
    from segedge.data.splits import calibration_source_without
    from segedge.export import ExportOptions, export_model
    from segedge.export.pipeline import _make_input
    from segedge.runtime import Segmenter
    from segedge.runtime.backends.ort import OnnxRuntimeBackend

    out = work / model
    t0 = time.perf_counter()
    if reuse and (out / "cpu-tune.json").is_file():  # a tuned folder from an earlier run of this script
        tune_s = reused_tuning_seconds(model, out)
    else:
        export_model(ExportOptions(model, targets=["onnx", "ort-int8", "cpu"], calib=calibration_source_without(data),
                                   val=data, val_count=None, out=out, replace=True), progress=print)
        tune_s = time.perf_counter() - t0
    man = read_manifest(out)
    c = man["input"]
    make = lambda f: _make_input(f, (c["height"], c["width"]), False, "RGB", c["mean"], c["std"])  # noqa: E731
    frames, why = export_calibration_frames(out, man)
    assert frames is not None, why
    inputs = [make(f) for f in frames]
    table = json.loads((out / man["targets"]["ort-int8"]["calibration"]["table"]).read_text())
    chosen = "segedge cpu (" + man["targets"]["cpu"]["tuned"]["candidate"] + ")"
    tuned = Segmenter.load(out)  # as an app opens it: for OpenVINO, frames are normalised in the graph
    backends = {chosen: Segmenter.load(out, frame_input=False).backend}
    segs = {chosen: tuned}
    plain = export_model(ExportOptions(model, targets=["onnx"], fold=False, out=work / f"{model}-as-trained",
                                       replace=True), progress=print).out_dir
    graphs = {"": out / "model.onnx"}
    if read_manifest(out).get("graph_form", {}).get("folded"):  # the as-trained graph differs: baselines on both
        graphs[" (as trained)"] = plain / "model.onnx"
    for suffix, graph in graphs.items():
        for name in ("ort-defaults", "ov-defaults", "nncf-defaults"):
            b = build_baseline(name, BaselineContext(model, graph, work / f"{model}-{name}{suffix.strip(' ()')}",
                                                     inputs, "input", "the export's calibration frames"))
            backends[name + suffix] = b.backend
            # the user's loop around a library default: segedge's NumPy pre-processing, argmax, nearest upsample
            segs[name + suffix] = Segmenter(b.backend, tuned.info)
    sets = eval_sets(data, make, table["frames"])
    fp32 = OnnxRuntimeBackend(str(out / "model.onnx"))
    acc = drops(backends, sets, fp32, int(man["num_classes"]))
    lat = time_all(backends, sets["val"].inputs[:8], iters, 10)
    from segedge.data.datasets import open_dataset

    val = open_dataset("camvid", data, "val")
    e2e = time_e2e(segs, [val[i][0] for i in range(8)], iters, 10)
    return {"model": model, "graph_form": man.get("graph_form"), "tuning_seconds": round(tune_s, 1),
            "choice": man["targets"]["cpu"]["tuned"],
            "candidates": json.loads((out / "cpu-tune.json").read_text())["rows"],
            "latency": {k: {m: round(v[m], 3) for m in ("p50_ms", "p90_ms", "mean_ms")} for k, v in lat.items()},
            "end_to_end": {k: {m: round(v[m], 3) for m in ("p50_ms", "p90_ms", "mean_ms")} for k, v in e2e.items()},
            "end_to_end_what": "Segmenter.predict: a CamVid val frame (360x480 BGR) → labels at its size (fast "
                               "post-processing); the chosen target as Segmenter.load opens it, the baselines inside "
                               "segedge's NumPy pre-processing",
            "accuracy": acc}


def _ratios(times: dict[str, Any]) -> tuple[float, float]:
    """The fastest baseline's p50 on segedge's graph, and on the graph as trained (the same when nothing folded)."""
    base = min(v["p50_ms"] for k, v in times.items() if k.endswith("-defaults"))
    trained = [v["p50_ms"] for k, v in times.items() if k.endswith("(as trained)")]
    return base, (min(trained) if trained else base)


def table(results: list[dict[str, Any]], cpu: dict[str, Any]) -> str:
    """The README table: chosen vs baselines, p50 (inference alone and frame → labels), ratios to the fastest
    baseline, drops on val and 0001TP."""
    lines = ["# `--target cpu` against the library defaults (issue 15)", "",
             f"CPU: {cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores_available')} cores). One rotating-block "
             "timing run per model and measure, nothing else running: inference alone (the backend on a prepared "
             "input), and end to end (Segmenter.predict: a 360×480 CamVid frame → labels at its size; the chosen "
             "target as `Segmenter.load` opens it, so OpenVINO normalises the frame in the graph; each baseline "
             "inside segedge's NumPy pre-processing, as a user's loop around the library would run it). "
             "Calibration: CamVid train without "
             "the dusk drive 0001TP; choice on CamVid val (alternate frames); drops vs the FP32 ONNX on all 101 val "
             "frames and on 0001TP (held out by sequence). Baselines \"(as trained)\" quantize the graph traced "
             "without segedge's inference form (`--no-fold`); drops are against the export's FP32 ONNX (both FP32 "
             "graphs agree to ~3e-5). Ratios: × the fastest baseline on segedge's graph / as trained.", "",
             "| model | row | inference p50 ms | × fastest baseline | end to end p50 ms | × fastest baseline | "
             "drop val pt | drop 0001TP pt |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lat, e2e, a = r["latency"], r.get("end_to_end") or {}, r["accuracy"]
        base, base_t = _ratios(lat)
        ebase, ebase_t = _ratios(e2e) if e2e else (None, None)
        for name, v in lat.items():
            e = e2e.get(name)
            ecell = (f"{e['p50_ms']:.2f} | {e['p50_ms'] / ebase:.2f} / {e['p50_ms'] / ebase_t:.2f}" if e and ebase
                     else "– | –")
            lines.append(f"| {r['model']} | {name} | {v['p50_ms']:.2f} | {v['p50_ms'] / base:.2f} / "
                         f"{v['p50_ms'] / base_t:.2f} | {ecell} | {a['val'][name]['drop_pt']:+.2f} | "
                         f"{a['0001TP'][name]['drop_pt']:+.2f} |")
        lines.append(f"| {r['model']} | tuning wall time | {r['tuning_seconds']:.0f} s | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run both models and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/camvid"))
    ap.add_argument("--models", default="topformer-t,b0")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--work", type=Path, help="keep the tuned folders here (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="with --work: time the folders an earlier run tuned there")
    a = ap.parse_args()
    global REUSE_FROM
    REUSE_FROM = a.out
    from segedge.doctor import cpu_report

    if a.work:
        a.work.mkdir(parents=True, exist_ok=True)
        results = [run_model(m, a.data, a.work, a.iters, a.reuse) for m in a.models.split(",")]
    else:
        with tempfile.TemporaryDirectory(prefix="cpu-tune-", dir="bench-out") as td:
            results = [run_model(m, a.data, Path(td), a.iters) for m in a.models.split(",")]
    a.out.mkdir(parents=True, exist_ok=True)
    cpu = cpu_report()
    (a.out / "cpu-tune.json").write_text(json.dumps({"cpu": cpu, "results": results}, indent=1, default=str) + "\n")
    (a.out / "README.md").write_text(table(results, cpu))
    print(table(results, cpu))


if __name__ == "__main__":
    main()
