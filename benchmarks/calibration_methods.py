"""Issue 12 items 4-5: INT8 calibration methods compared, calibrated WITHOUT the dusk drive and measured on it.

For each model (demo checkpoints) it exports the FP32 ONNX once, then for each calibration variant:
- ONNX Runtime targets `ort-int8` and `qdq` (the TensorRT INT8 graph, run by ORT as an accuracy proxy): one
  `export_model(ExportOptions(targets="ort-int8,qdq", calib_method=…, calib_count=…))` per variant (method minmax |
  percentile | entropy; 32 frames; 128 frames for the best method on val; 32 frames spread across the sequences
  instead of drawn at random);
- `openvino-int8`: `nncf.quantize` with segedge's family settings (`nncf_settings` / `nncf_kwargs`: preset, model
  type, SegFormer's stage-1 sr convs float) and NNCF's default activation range estimator (mean of per-frame
  min/max), global min/max, or the mean of per-frame quantiles
  (`AdvancedQuantizationParameters(activations_range_estimator_params=…)`), subset size 32 or 128; step `islands`
  also keeps the ONNX targets' family float groups (TopFormer's `tpm.s1`) out of NNCF's scope.
Calibration frames come from CamVid train minus the dusk drive 0001TP (`segedge.data.splits`); mIoU drops vs the
FP32 ONNX are measured on CamVid val (101 frames, drive 0016E5, also in the calibration pool) and on 0001TP (62
frames, held out by sequence), with the product's own evaluation (`segedge.export.sensitivity.run_logits`,
`miou_of`, `compare_logits`). ORT and OpenVINO use 1 thread. JSON of figures only (never frames) and a README go to
benchmarks/results/calibration/:

    nohup nice -n 10 .venv/bin/python benchmarks/calibration_methods.py > bench-out/calibration.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from segedge.data.splits import CAMVID_DUSK, calibration_source_without, held_out_by_sequence, sequence_of, \
    spread_across_sequences, subset

HERE = Path(__file__).resolve().parent / "results" / "calibration"
ORT_TARGETS = {"ort-int8": "model.int8.onnx", "qdq": "model.qdq.onnx"}
NNCF_ESTIMATORS = ("default", "minmax", "quantile")
SETS = ("val", f"dusk_{CAMVID_DUSK}")


# -- evaluation sets and scoring --------------------------------------------------------------------------------------

def eval_sets(camvid: Path, make_input: Callable[[np.ndarray], np.ndarray], limit: int | None = None
              ) -> dict[str, Any]:
    """{'val': CamVid val, 'dusk_0001TP': the dusk drive's train frames} as LabelledSets (no calibration frame can
    be among the latter: every variant calibrates without that drive)."""
    from segedge.data.datasets import open_dataset
    from segedge.export.sensitivity import labelled_set

    val, train = open_dataset("camvid", camvid, "val"), open_dataset("camvid", camvid, "train")
    dusk = held_out_by_sequence(train, CAMVID_DUSK)[:limit]
    keep = range(len(val))[:limit]
    return {"val": labelled_set((val[i] for i in keep), make_input, "val", [val.samples[i].image_path.name
                                                                              for i in keep]),
            SETS[1]: labelled_set((train[i] for i in dusk), make_input, SETS[1],
                                  [train.samples[i].image_path.name for i in dusk])}


def score(logits: list[np.ndarray], frames: Any, ref: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """mIoU, drop vs FP32 in points, argmax agreement and SQNR of one variant on one set."""
    from segedge.export.sensitivity import compare_logits, miou_of

    miou = miou_of(logits, frames, num_classes)
    return {"miou": round(miou, 5), "drop_pt": round(100 * (ref["miou"] - miou), 3),
            **compare_logits(logits, ref["logits"])}


def ov_logits(model: Any, frames: Any) -> list[np.ndarray]:
    """C×h×w logits of an ov.Model for every frame (OpenVINO CPU, f32 hint so only INT8 differs, 1 thread)."""
    from segedge.runtime.backends.openvino import OpenVINOBackend

    be = OpenVINOBackend(model, threads=1, precision="f32")
    try:
        return [np.asarray(be.run_impl(x), np.float32)[0] for x in frames.inputs]
    finally:
        be.close()


# -- calibration sources ---------------------------------------------------------------------------------------------

def calibration_pool(camvid: Path, selection: str, count: int) -> tuple[Any, int]:
    """(calibration source, --calib-count) for a selection: `random` lets segedge draw `count` frames (seeded) from
    train minus 0001TP, as `--calib` would; `spread` hands it exactly `count` frames spread across the drives."""
    pool = calibration_source_without(camvid, CAMVID_DUSK)
    if selection == "random":
        return pool, count
    return subset(pool, spread_across_sequences(pool, count)), count


def frames_record(frames: Any) -> dict[str, Any]:
    """What the calibration frames were (frames per drive, never the frames)."""
    per: dict[str, int] = {}
    for n in frames.names:
        per[sequence_of(n)] = per.get(sequence_of(n), 0) + 1
    return {"count": len(frames), "per_sequence": per, "sha256": frames.sha256}


# -- variants ---------------------------------------------------------------------------------------------------------

@dataclass
class Study:
    """One model's fixed inputs: the FP32 export, its contract, the labelled sets and their FP32 references."""

    model: str
    camvid: Path
    work: Path
    fp32_onnx: Path
    contract: Any
    sets: dict[str, Any]
    refs: dict[str, dict[str, Any]]

    def make_input(self, frame: np.ndarray) -> np.ndarray:
        """One BGR frame → one model input, as the runtime prepares it."""
        from segedge.export.pipeline import _make_input

        c = self.contract
        return _make_input(frame, c.input.size, False, "RGB", c.input.mean, c.input.std)

    def scores(self, logits_of: Callable[[Any], list[np.ndarray]]) -> dict[str, Any]:
        """{set: score} of one quantized model given as a function of a LabelledSet → logits."""
        n = self.contract.num_classes
        return {s: score(logits_of(self.sets[s]), self.sets[s], self.refs[s], n) for s in SETS}


def run_ort_variant(st: Study, v: dict[str, Any]) -> dict[str, Any]:
    """Export ort-int8 + qdq with one calibration variant and score both on every set."""
    import onnx

    from segedge.export.calibration import load_calibration_frames
    from segedge.export.pipeline import ExportOptions, export_model
    from segedge.export.sensitivity import run_logits

    source, count = calibration_pool(st.camvid, v["selection"], v["count"])
    out = st.work / f"ort-{v['name']}"
    t0 = time.perf_counter()
    seed = v.get("seed", 0)
    res = export_model(ExportOptions(model=st.model, targets="ort-int8,qdq", calib=source, calib_count=count,
                                     calib_method=v["method"], calib_seed=seed, val=None, out=out, replace=True),
                       progress=print)
    row: dict[str, Any] = {**v, "export_s": round(time.perf_counter() - t0, 1),
                           "frames": frames_record(load_calibration_frames(source, count, seed)),
                           "graph_sha256": res.manifest["targets"]["ort-int8"]["calibration"]["graph_sha256"]}
    for target, file in ORT_TARGETS.items():
        qm = onnx.load(str(out / file))
        row[target] = st.scores(lambda frames: run_logits(qm, frames))  # noqa: B023 - used at once
    return row


def nncf_advanced(estimator: str) -> Any:
    """AdvancedQuantizationParameters choosing the activation range estimator (None: NNCF's default, which is the
    mean over frames of per-frame min/max for per-tensor activations)."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if estimator == "default":
        return None
    params = {"minmax": RangeEstimatorParametersSet.MINMAX, "quantile": RangeEstimatorParametersSet.MEAN_QUANTILE}
    return AdvancedQuantizationParameters(activations_range_estimator_params=params[estimator])


def run_nncf_variant(st: Study, v: dict[str, Any]) -> dict[str, Any]:
    """openvino-int8 as segedge builds it (family settings, same frames), with one range estimator / subset size and
    optionally more node-name patterns kept float (`v["keep_float"]`)."""
    import nncf
    import openvino as ov

    from segedge.export.calibration import load_calibration_frames
    from segedge.export.targets.openvino_int8 import nncf_kwargs, nncf_output_to_stderr, nncf_settings

    source, count = calibration_pool(st.camvid, v["selection"], v["count"])
    frames = load_calibration_frames(source, count, v.get("seed", 0))
    settings = nncf_settings(str(st.contract.family))
    settings["ignored_patterns"] = list(settings["ignored_patterns"]) + list(v.get("keep_float", ()))
    kwargs = nncf_kwargs(settings, len(frames))
    adv = nncf_advanced(v["estimator"])
    if adv is not None:
        kwargs["advanced_parameters"] = adv
    t0 = time.perf_counter()
    with nncf_output_to_stderr():
        qm = nncf.quantize(ov.convert_model(str(st.fp32_onnx)),
                           nncf.Dataset([st.make_input(f) for f in frames.frames]), **kwargs)
    row = {**v, "quantize_s": round(time.perf_counter() - t0, 1), "frames": frames_record(frames)}
    row["openvino-int8"] = st.scores(lambda frames_: ov_logits(qm, frames_))
    return row


def family_islands(st: Study, n: int) -> list[str]:
    """OpenVINO node-name patterns for the nodes the ONNX INT8 targets keep float as the family's default groups
    (read from the minmax export's manifest, so no second list of names is kept here)."""
    import re

    m = json.loads((st.work / f"ort-minmax-{n}-random" / "manifest.json").read_text())
    kept = m["targets"]["ort-int8"]["quantization"].get("kept_float", [])
    return [re.escape(k["node"]) + ".*" for k in kept if "family default float group" in k.get("reason", "")]


def _mean_val_drop(row: dict[str, Any]) -> float:
    return float(np.mean([row[t]["val"]["drop_pt"] for t in ORT_TARGETS]))


def ort_plan(methods: list[str], counts: list[int], spread: bool) -> list[dict[str, Any]]:
    """The 32-frame (first count) variants: every method drawn at random, plus minmax spread across the drives."""
    n = counts[0]
    plan = [{"name": f"{m}-{n}-random", "method": m, "count": n, "selection": "random"} for m in methods]
    if spread:
        plan.append({"name": f"minmax-{n}-spread", "method": "minmax", "count": n, "selection": "spread"})
    return plan


# -- why: where the held-out frames fall in the calibrated ranges -----------------------------------------------------

def range_shift(folder: Path, fp32_onnx: Path, sets: dict[str, Any], method: str = "minmax") -> dict[str, Any]:
    """How each set's own min/max per tensor compares with the export's calibration table (tensors with a non-zero
    calibrated width): `overshoot` = how far the set's range exceeds the calibrated one (clipped), as a fraction of
    the calibrated width; `used` = set range width / calibrated width (below 1: fewer of the 256 levels used)."""
    import tempfile

    import onnx

    from segedge.export.calibration import CalibrationTable, FrameDataReader, compute_ranges, table_path
    from segedge.export.pipeline import _pre_quant

    table = CalibrationTable.load(table_path(folder, method))
    out: dict[str, Any] = {"table": f"{method}, {table.count} frames"}
    with tempfile.TemporaryDirectory(prefix="calib-ranges-", dir=folder) as td:
        pre = _pre_quant(fp32_onnx, Path(td), print)
        name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        for s in SETS:
            seen = compute_ranges(pre, FrameDataReader(sets[s].inputs, name), "minmax", work_dir=td)
            over, used, names = [], [], []
            for k, (lo, hi) in table.ranges.items():
                if k in seen and hi - lo > 0:
                    a, b = seen[k]
                    over.append(max(lo - a, b - hi, 0.0) / (hi - lo))
                    used.append((b - a) / (hi - lo))
                    names.append(k)
            over_a, used_a = np.array(over), np.array(used)
            least = [(names[i], round(used[i], 3)) for i in np.argsort(used_a)[:3]]
            out[s] = {"tensors": len(over), "clipped_over_5pct": int((over_a > 0.05).sum()),
                      "clipped_over_25pct": int((over_a > 0.25).sum()), "max_overshoot": round(float(over_a.max()), 3),
                      "used_median": round(float(np.median(used_a)), 3),
                      "used_p10": round(float(np.percentile(used_a, 10)), 3),
                      "used_below_half": int((used_a < 0.5).sum()), "least_used": least}
    return out


# -- per model --------------------------------------------------------------------------------------------------------

def fp32_study(model: str, a: argparse.Namespace) -> Study:
    """Export the FP32 ONNX and measure it on the labelled sets."""
    import onnx

    from segedge.contract import Manifest
    from segedge.export.pipeline import ExportOptions, export_model
    from segedge.export.sensitivity import miou_of, run_logits

    work = a.work / model
    out = work / "fp32"
    export_model(ExportOptions(model=model, targets="onnx", out=out, replace=True), progress=print)
    st = Study(model, a.camvid, work, out / "model.onnx", Manifest.read(out).contract, {}, {})
    st.sets = eval_sets(a.camvid, st.make_input, a.limit)
    fp32 = onnx.load(str(st.fp32_onnx))
    for s in SETS:
        logits = run_logits(fp32, st.sets[s])
        st.refs[s] = {"logits": logits, "miou": miou_of(logits, st.sets[s], st.contract.num_classes)}
    return st


def _upsert(rows: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """Replace the row of the same name, else append (a partial re-run keeps the other rows)."""
    names = [r["name"] for r in rows]
    if row["name"] in names:
        rows[names.index(row["name"])] = row
    else:
        rows.append(row)


def ort_step(st: Study, fig: dict[str, Any], a: argparse.Namespace, save: Callable[[], None]) -> None:
    """Every ORT method at the first count (and spread), then the best one on val (or all) at the other counts."""
    counts, methods = [int(x) for x in a.counts.split(",")], a.methods.split(",")
    for v in ort_plan(methods, counts, a.spread):
        _upsert(fig["ort"], run_ort_variant(st, v))
        save()
    first = [r for r in fig["ort"] if r["selection"] == "random" and r["count"] == counts[0]]
    fig["best_method_on_val"] = best = min(first, key=_mean_val_drop)["method"]  # val only: dusk stays held out
    for n in counts[1:]:
        for m in (methods if a.all_methods_at_more else [best]):
            _upsert(fig["ort"], run_ort_variant(st, {"name": f"{m}-{n}-random", "method": m, "count": n,
                                                     "selection": "random"}))
            save()


def nncf_step(st: Study, fig: dict[str, Any], a: argparse.Namespace, save: Callable[[], None]) -> None:
    """NNCF estimators at the first count, the default one at every count and spread."""
    counts = [int(x) for x in a.counts.split(",")]
    plan = [{"name": f"nncf-{e}-{n}-random", "estimator": e, "count": n, "selection": "random"}
            for e in a.estimators.split(",") for n in (counts if e == "default" else counts[:1])]
    if a.spread:
        plan.append({"name": f"nncf-default-{counts[0]}-spread", "estimator": "default", "count": counts[0],
                     "selection": "spread"})
    for v in plan:
        _upsert(fig["nncf"], run_nncf_variant(st, v))
        save()


def islands_step(st: Study, fig: dict[str, Any], a: argparse.Namespace, save: Callable[[], None]) -> None:
    """NNCF default estimator with the ONNX targets' family float groups also kept float (none for SegFormer)."""
    counts = [int(x) for x in a.counts.split(",")]
    patterns = family_islands(st, counts[0])
    fig["nncf_family_islands"] = len(patterns)
    for n in counts if patterns else []:
        _upsert(fig["nncf"], run_nncf_variant(st, {"name": f"nncf-default-{n}-random-islands", "estimator": "default",
                                                   "count": n, "selection": "random", "keep_float": patterns}))
        save()


def seeds_step(st: Study, fig: dict[str, Any], a: argparse.Namespace, save: Callable[[], None]) -> None:
    """The default calibration (ORT minmax, NNCF default) at the first count with other frame-draw seeds: how much
    of a difference between variants is just which frames were drawn."""
    n = int(a.counts.split(",")[0])
    for seed in (int(x) for x in a.seeds.split(",")):
        _upsert(fig["ort"], run_ort_variant(st, {"name": f"minmax-{n}-random-seed{seed}", "method": "minmax",
                                                 "count": n, "selection": "random", "seed": seed}))
        _upsert(fig["nncf"], run_nncf_variant(st, {"name": f"nncf-default-{n}-random-seed{seed}",
                                                   "estimator": "default", "count": n, "selection": "random",
                                                   "seed": seed}))
        save()


def ranges_step(st: Study, fig: dict[str, Any], a: argparse.Namespace, save: Callable[[], None]) -> None:
    """Where each set falls in the minmax export's calibrated ranges (why a drive loses accuracy)."""
    fig["range_shift"] = range_shift(st.work / f"ort-minmax-{a.counts.split(',')[0]}-random", st.fp32_onnx, st.sets)


STEPS = {"ort": ort_step, "nncf": nncf_step, "islands": islands_step, "seeds": seeds_step, "ranges": ranges_step}


def run_model(model: str, a: argparse.Namespace) -> dict[str, Any]:
    """The requested steps for one model, into its figures file (kept rows of steps not re-run); the JSON is rewritten
    after each variant so a long run can be followed."""
    from segedge.doctor import cpu_report

    st = fp32_study(model, a)
    path = a.out / f"{model}.json"
    fig: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {"ort": [], "nncf": []}
    fig.update({"model": model, "family": st.contract.family, "input_size": list(st.contract.input.size),
                "cpu": cpu_report(), "threads": 1, "calibration_pool": f"CamVid train minus {CAMVID_DUSK}",
                "sets": {s: {"frames": len(st.sets[s]), "fp32_miou": round(st.refs[s]["miou"], 5)} for s in SETS}})

    def save() -> None:
        path.write_text(json.dumps(fig, indent=1, default=str))

    for step in a.steps.split(","):
        STEPS[step](st, fig, a, save)
        save()
        print(f"{model} {step} done", flush=True)
    return fig


# -- README -----------------------------------------------------------------------------------------------------------

def _cell(entry: dict[str, Any]) -> str:
    return f"{entry['val']['drop_pt']:+.2f} / {entry[SETS[1]]['drop_pt']:+.2f}"


def model_table(fig: dict[str, Any]) -> list[str]:
    """Markdown table of one model: variant × target, 'val drop / dusk drop' in mIoU points."""
    s = fig["sets"]
    lines = [f"### {fig['model']} (FP32 mIoU: val {100 * s['val']['fp32_miou']:.2f} %, "
             f"dusk {CAMVID_DUSK} {100 * s[SETS[1]]['fp32_miou']:.2f} %)", "",
             "| calibration | frames | ort-int8 | qdq (TensorRT proxy) | openvino-int8 |", "|---|---|---|---|---|"]
    for r in fig["ort"]:
        lines.append(f"| ORT {_label(r, 'method')} | {r['count']} | {_cell(r['ort-int8'])} | {_cell(r['qdq'])} | |")
    for r in fig["nncf"]:
        lines.append(f"| NNCF {_label(r, 'estimator')} | {r['count']} | | | {_cell(r['openvino-int8'])} |")
    return lines + [""]


def _label(row: dict[str, Any], what: str) -> str:
    """'minmax, random, seed 1, + family float groups': what sets a variant apart."""
    extra = [f"seed {row['seed']}"] if row.get("seed") else []
    extra += ["**+ family float groups**"] if row.get("keep_float") else []
    return ", ".join([row[what], row["selection"], *extra])


def write_readme(out: Path) -> None:
    """README.md in `out` from its JSON figures plus the hand-written findings in its notes.md."""
    notes = (out / "notes.md").read_text() if (out / "notes.md").is_file() else ""
    figs = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    cpu = figs[0]["cpu"] if figs else {}
    lines = ["# INT8 calibration methods, calibrated without the dusk drive (issue 12, items 4-5)", "",
             "Cells: mIoU drop in points vs the FP32 ONNX, **CamVid val (101 frames) / dusk drive 0001TP (62 frames, "
             "held out by sequence)**; negative = better than FP32. Every variant calibrates on CamVid train minus "
             "0001TP (305 frames of drives 0006R0 and 0016E5; val is drive 0016E5 too). `random`: segedge's seeded "
             "draw (seed 0 unless a seed is named); `spread`: the same number of frames shared between the drives and"
             " evenly spaced in each (`segedge.data.splits.spread_across_sequences`). ORT: `--calib-method` "
             "(onnxruntime calibrators, percentile = 99.999 %). NNCF: default = mean of per-frame min/max, minmax = "
             "global min/max, quantile = mean of per-frame 1e-4 quantiles. Family float islands as exported by "
             "default for ORT; NNCF rows use `nncf_settings` alone (openvino-int8 as it was when measured: TopFormer "
             "quantized whole) unless marked `+ family float groups` (NNCF also keeps the ONNX targets' float groups "
             "out of its scope). "
             "ORT and OpenVINO at 1 thread; `qdq` runs in ORT as the TensorRT accuracy proxy. Figures: `<model>.json`"
             " (also `range_shift`: the held-out frames' own ranges against the calibrated ones). Reproduce: "
             "`benchmarks/calibration_methods.py --all-methods-at-more` (~50 min on 2 shared cores).", "",
             f"CPU: {cpu.get('model', '?')} ({cpu.get('arch', '?')}, {cpu.get('cores_available', '?')} cores "
             "available, shared with other jobs: accuracy figures only, no latency).", ""]
    for fig in figs:
        lines += model_table(fig)
    lines += [notes.strip(), ""] if notes else []
    (out / "README.md").write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--camvid", type=Path, default=Path("../shared/datasets/camvid"), help="never copied here")
    ap.add_argument("--work", type=Path, default=Path("bench-out/calibration"), help="scratch exports (git-ignored)")
    ap.add_argument("--models", default="topformer-t,b0")
    ap.add_argument("--methods", default="minmax,percentile,entropy")
    ap.add_argument("--counts", default="32,128", help="first: every method; the others: the best method on val")
    ap.add_argument("--all-methods-at-more", action="store_true", help="every method at every count")
    ap.add_argument("--estimators", default=",".join(NNCF_ESTIMATORS))
    ap.add_argument("--seeds", default="1,2", help="extra frame-draw seeds of the default calibrations (step seeds)")
    ap.add_argument("--no-spread", dest="spread", action="store_false")
    ap.add_argument("--limit", type=int, default=None, help="first N frames of each set (smoke runs only)")
    ap.add_argument("--out", type=Path, default=HERE, help="where the JSON figures and README go")
    ap.add_argument("--steps", default=",".join(STEPS),
                    help="ort, nncf, islands (NNCF with the family float groups), seeds (the defaults with other "
                    "frame draws), ranges (where the held-out frames fall in the calibrated ranges); a subset "
                    "updates the JSON")
    ap.add_argument("--readme-only", action="store_true", help="rewrite README.md from the JSON here")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if not a.readme_only:
        for model in a.models.split(","):
            t0 = time.perf_counter()
            run_model(model, a)
            print(f"{model} done in {time.perf_counter() - t0:.0f} s", flush=True)
            write_readme(a.out)
    write_readme(a.out)


if __name__ == "__main__":
    main()
