"""segedge's TensorRT Q/DQ placement (old and new) side by side with NVIDIA ModelOpt's ONNX PTQ.

For each export folder (its FP32 model.onnx and calibration table) it builds five graphs and compares them:
- `fp32`: the FP32 ONNX;
- `segedge-old`: flavour TENSORRT_ORT_PLACEMENT (onnxruntime's own placement: inputs and outputs of every quantized
  op, the placement segedge shipped before);
- `segedge-new`: flavour TENSORRT (NVIDIA's placement recommendations, `qdq_rules.check_placement`; Softmax outputs
  on their definitional range [0, 1]);
- `segedge-new-calibrated-softmax`: the same with the calibrated Softmax-output ranges (the ablation that showed why
  ModelOpt was ahead on B0: it quantizes Softmax outputs on [0, 1], see `quantize.unit_softmax_ranges`);
- `modelopt`: `modelopt.onnx.quantization.quantize` (int8, its default placement, fp32 high precision so only the
  Q/DQ differ) on the same FP32 model, calibrated on the same frames (the table's CamVid train frames, or another
  draw with --calib-seed, saved as an .npy tensor in --work) with the same method (--method: minmax = ModelOpt's
  "max", symmetric min/max; entropy = both sides' entropy calibrators).
ModelOpt pulls onnxruntime-gpu and pins onnx, so it lives in its own venv (--modelopt-python); this script runs
itself there (`... qdq_placement.py modelopt ...`), passing file paths only.
Figures: Q/DQ node counts, which op types read quantized inputs / write quantized outputs, both rule sets, and
proxy mIoU through ONNX Runtime CPU (fake-quant, --threads, exact post-processing) on CamVid val and on the dusk
drive 0001TP (its train frames minus the calibration frames), with a paired frame bootstrap of the mIoU difference
segedge-new − modelopt (its sd here: 0.02-0.03 pt on val, 0.04-0.18 on the dusk drive). JSON figures only (never
frames) go to --out, one file per model (`<model>.json`; `<model>.<method>.json` / `<model>.seed<N>.json` for other
methods and draws):

    python benchmarks/qdq_placement.py --exports exports/demo-b0,exports/demo-topformer-t \\
        --data ../shared/datasets/camvid --modelopt-python <modelopt-venv>/bin/python --work bench-out/qdq-placement
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

MODELOPT_METHOD = {"minmax": "max", "entropy": "entropy"}
BOOTSTRAP_SEED = 0


# -- runs inside the ModelOpt venv (imports nothing from segedge) ---------------------------------------------------

def modelopt_main(argv: list[str]) -> None:
    """Quantize one FP32 ONNX with ModelOpt's int8 PTQ on CPU from an .npy calibration tensor."""
    ap = argparse.ArgumentParser(prog="qdq_placement.py modelopt")
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--calib", required=True, help=".npy, N×C×H×W float32 model inputs")
    ap.add_argument("--method", required=True, choices=sorted(MODELOPT_METHOD.values()))
    ap.add_argument("--output", required=True)
    a = ap.parse_args(argv)
    import numpy as np
    from modelopt.onnx.quantization import quantize

    t = time.perf_counter()
    quantize(a.onnx, quantize_mode="int8", calibration_data=np.load(a.calib), calibration_method=a.method,
             calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=a.output, log_level="WARNING")
    import modelopt

    print(json.dumps({"seconds": time.perf_counter() - t, "modelopt": modelopt.__version__}))


# -- the comparison (main venv) ---------------------------------------------------------------------------------------

def calibration_run(folder: Path, data: Path, method: str, seed: int | None,
                    work: Path) -> tuple[Any, Path, list[str]]:
    """(segedge table, .npy of model inputs for ModelOpt, frame names) for one calibration draw: the export's own
    frames (its minmax table's count and seed, checked against its sha256) or a draw with another `seed`; the
    export's table when it fits, else one computed into `work` (the export folder is never written)."""
    import json as _json

    import numpy as np

    from segedge.errors import SegedgeError
    from segedge.export.calibration import CalibrationTable, get_calibration_table, load_calibration_frames, table_path
    from segedge.runtime import Segmenter

    base = CalibrationTable.load(table_path(folder, "minmax"))
    seed = base.seed if seed is None else seed
    frames = load_calibration_frames(data / "train", base.count, seed)
    if seed == base.seed and frames.sha256 != base.source_sha256:
        raise SegedgeError(f"the calibration frames drawn from {data / 'train'} are not the ones {folder}'s table "
                           "was computed on; pass the CamVid folder the export used as --data")
    seg = Segmenter.load(folder, target="onnx")
    inputs = [seg.prepare(f) for f in frames.frames]
    path = work / f"{folder.name}.calib.npy"
    np.save(path, np.concatenate(inputs).astype(np.float32))
    graph_sha = _json.loads((folder / "manifest.json").read_text())["graph_sha256"]
    own = table_path(folder, method)
    if own.is_file() and CalibrationTable.load(own).matches(method, len(frames), frames.sha256, graph_sha):
        return CalibrationTable.load(own), path, frames.names
    import onnx

    input_name = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.input[0].name
    table, _ = get_calibration_table(work, folder / "model.onnx", graph_sha, frames, seg.prepare, input_name, method,
                                     seed, save_to=work, work_dir=work)
    return table, path, frames.names


def run_modelopt(python: str, fp32: Path, calib: Path, method: str, out: Path) -> dict[str, Any]:
    """ModelOpt's quantization in its own venv; its timing and version."""
    cmd = [python, str(Path(__file__).resolve()), "modelopt", "--onnx", str(fp32), "--calib", str(calib),
           "--method", MODELOPT_METHOD[method], "--output", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 or not out.is_file():
        raise RuntimeError(f"ModelOpt failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def placement_summary(model: Any) -> dict[str, Any]:
    """Q/DQ count, op types reading quantized inputs / writing quantized outputs, and both rule sets."""
    from segedge.export.qdq_rules import check_placement, validate_qdq

    nodes = list(model.graph.node)
    consts = {t.name for t in model.graph.initializer}
    producer = {o: n for n in nodes for o in n.output}
    act_dq = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] not in consts
              and not (producer.get(n.input[0]) is not None and producer[n.input[0]].input[0] in consts)}
    q_in = {n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    real = [n for n in nodes if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    reads = {n.name for n in real if any(i in act_dq for i in n.input)}
    writes = {n.name for n in real if any(o in q_in for o in n.output)}
    violations = check_placement(model)
    return {
        "qdq_nodes": len(nodes) - len(real),
        "quantized_input_nodes": len(reads),
        "quantized_input_by_op": dict(Counter(n.op_type for n in real if n.name in reads).most_common()),
        "quantized_output_by_op": dict(Counter(n.op_type for n in real if n.name in writes).most_common()),
        "qdq_rules_violations": len(validate_qdq(model)),
        "placement_violations": dict(Counter(v.rule for v in violations).most_common()),
        "_reads": reads, "_writes": writes, "_ops": {n.name: n.op_type for n in real},
    }


def placement_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Nodes (matched by name) that read quantized inputs / write quantized outputs in one graph only, by op type."""
    ops = {**b["_ops"], **a["_ops"]}
    shared = set(a["_ops"]) & set(b["_ops"])
    out = {}
    for key, what in (("_reads", "inputs"), ("_writes", "outputs")):
        for side, x, y in (("only_segedge", a, b), ("only_modelopt", b, a)):
            only = sorted((x[key] - y[key]) & shared)
            out[f"{what}_{side}"] = dict(Counter(ops[n] for n in only).most_common())
    out["nodes_not_matched_by_name"] = len(set(a["_ops"]) ^ set(b["_ops"]))
    return out


def labelled_sets(data: Path, calib_names: list[str], limit: int | None) -> tuple[dict[str, list[Any]], Any]:
    """({set name: (frame, label) pairs}, the val dataset): CamVid val, and the dusk drive's train frames that
    are not calibration frames."""
    from segedge.data.datasets import open_dataset
    from segedge.data.splits import CAMVID_DUSK, held_out_by_sequence

    val = open_dataset("camvid", data, "val")
    train = open_dataset("camvid", data, "train")
    dusk = held_out_by_sequence(train, CAMVID_DUSK, calib_names)
    n = (lambda k: k if limit is None else min(limit, k))
    return {"camvid_val": [val[i] for i in range(n(len(val)))],
            f"dusk_{CAMVID_DUSK}": [train[i] for i in dusk[:n(len(dusk))]]}, val


def evaluate(graphs: dict[str, Any], folder: Path, sets: dict[str, list[Any]], ds: Any,
             threads: int, bootstrap: int) -> dict[str, dict[str, Any]]:
    """Proxy mIoU of each graph on each labelled set through ONNX Runtime CPU, frame by frame (for the bootstrap)."""
    import numpy as np

    from segedge.data.metrics import metrics_from_confusion
    from segedge.evaluation import evaluate_predictors
    from segedge.runtime import Segmenter
    from segedge.runtime.backends.ort import OnnxRuntimeBackend

    info = Segmenter.load(folder, target="onnx").info
    segs = {k: Segmenter(OnnxRuntimeBackend(m, threads=threads), info, "exact") for k, m in graphs.items()}
    predictors = {k: s.predict for k, s in segs.items()}
    out: dict[str, dict[str, Any]] = {}
    for name, pairs in sets.items():
        t = time.perf_counter()
        cms = {k: [] for k in segs}  # per-frame confusion matrices
        agree = {k: 0.0 for k in segs}
        for pair in pairs:
            ev = evaluate_predictors(predictors, [pair], ds.num_classes, references={k: "fp32" for k in segs})
            for k, m in ev.metrics.items():
                cms[k].append(m.confusion)
                agree[k] += ev.agreement[k] / len(pairs)  # CamVid frames all have the same size
        per_frame = {k: np.stack(v) for k, v in cms.items()}
        metrics = {k: metrics_from_confusion(v.sum(0), list(ds.class_names)) for k, v in per_frame.items()}
        miou = {k: float(m.miou) for k, m in metrics.items()}
        per_class = {c: None if np.isnan(x - y) else round(100 * (x - y), 3) for c, x, y in zip(  # NaN: absent class
            ds.class_names, metrics["segedge-new"].iou, metrics["modelopt"].iou)}
        out[name] = {"frames": len(pairs), "seconds": round(time.perf_counter() - t, 1),
                     "miou": miou, "drop_pp": {k: 100 * (miou["fp32"] - v) for k, v in miou.items()},
                     "argmax_agreement_vs_fp32": agree, "per_class_iou_new_minus_modelopt_pp": per_class,
                     "bootstrap_new_minus_modelopt_pp": paired_bootstrap(
                         per_frame["segedge-new"], per_frame["modelopt"], bootstrap)}
    return out


def paired_bootstrap(a: Any, b: Any, n: int) -> dict[str, float]:
    """mIoU(a) − mIoU(b) in points over `n` resamples of the frames (the same frames for both): mean, sd, 95 %
    interval and the share of resamples where a ≥ b. `a`, `b`: per-frame confusion matrices, F×C×C."""
    import numpy as np

    from segedge.data.metrics import metrics_from_confusion

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(a), (n, len(a)))
    d = np.array([100 * (metrics_from_confusion(a[i].sum(0)).miou - metrics_from_confusion(b[i].sum(0)).miou)
                  for i in idx])
    return {"observed": 100 * float(metrics_from_confusion(a.sum(0)).miou - metrics_from_confusion(b.sum(0)).miou),
            "resamples": n, "sd": float(d.std()), "ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
            "share_a_ge_b": float(np.mean(d >= 0))}


def segedge_graphs(pre: Path, table: Any, work: Path) -> tuple[dict[str, Any], dict[str, float]]:
    """segedge's graphs of one quant_pre_process'ed model (old placement, new, new with calibrated Softmax ranges)
    and how long each took."""
    import dataclasses

    import onnx

    from segedge.export.quantize import TENSORRT, TENSORRT_ORT_PLACEMENT, quantize, select_kept_float

    kept = select_kept_float(onnx.load(str(pre)))
    flavours = {"segedge-old": TENSORRT_ORT_PLACEMENT, "segedge-new": TENSORRT,
                "segedge-new-calibrated-softmax": dataclasses.replace(TENSORRT, softmax_unit_range=False)}
    graphs, seconds = {}, {}
    for key, flavour in flavours.items():
        t = time.perf_counter()
        graphs[key] = quantize(pre, table, flavour, kept, work_dir=work)
        seconds[key] = round(time.perf_counter() - t, 2)
    return graphs, seconds


def compare_export(folder: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Build the graphs of one export and measure them."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    work = a.work / folder.name / f"{a.method}-seed{a.calib_seed if a.calib_seed is not None else 'table'}"
    work.mkdir(parents=True, exist_ok=True)
    table, calib, names = calibration_run(folder, a.data, a.method, a.calib_seed, work)
    pre = work / "pre.onnx"
    quant_pre_process(str(folder / "model.onnx"), str(pre))
    ours, seconds = segedge_graphs(pre, table, work)
    graphs = {"fp32": onnx.load(str(folder / "model.onnx")), **ours}
    mo = run_modelopt(a.modelopt_python, folder / "model.onnx", calib, a.method, work / "modelopt.onnx")
    seconds["modelopt"] = round(mo["seconds"], 2)
    graphs["modelopt"] = onnx.load(str(work / "modelopt.onnx"))
    summaries = {k: placement_summary(m) for k, m in graphs.items() if k != "fp32"}
    diff = placement_diff(summaries["segedge-new"], summaries["modelopt"])
    sets, ds = labelled_sets(a.data, names, a.limit)
    accuracy = evaluate(graphs, folder, sets, ds, a.threads, a.bootstrap)
    return {
        "export": str(folder), "model": json.loads((folder / "manifest.json").read_text())["model"],
        "calibration": {"method": a.method, "modelopt_method": MODELOPT_METHOD[a.method], "frames": len(names),
                        "seed": table.seed, "frames_sha256": table.source_sha256,
                        "source": "camvid train (the export's draw unless seed differs; same frames for ModelOpt)"},
        "modelopt_version": mo["modelopt"], "quantize_seconds": seconds,
        "placement": {k: {x: y for x, y in v.items() if not x.startswith("_")} for k, v in summaries.items()},
        "placement_diff_new_vs_modelopt": diff, "accuracy": accuracy,
    }


def main() -> None:
    """Compare every export given and write one JSON per model."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exports", default="exports/demo-b0,exports/demo-topformer-t")
    ap.add_argument("--data", type=Path, required=True, help="CamVid root (train/, val/, …annot/)")
    ap.add_argument("--modelopt-python", required=True, help="python of a venv with nvidia-modelopt[onnx]")
    ap.add_argument("--work", type=Path, default=Path("bench-out/qdq-placement"),
                    help="graphs and the .npy (not committed)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/qdq-placement"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="frames per labelled set (default: all)")
    ap.add_argument("--method", choices=sorted(MODELOPT_METHOD), default="minmax",
                    help="calibration method on both sides (segedge's table / ModelOpt's calibrator)")
    ap.add_argument("--calib-seed", type=int, default=None,
                    help="draw other calibration frames (default: the export table's draw)")
    ap.add_argument("--bootstrap", type=int, default=1000, help="frame resamples for the mIoU-difference interval")
    a = ap.parse_args()
    from segedge.doctor import cpu_report
    from segedge.io import write_json_atomic

    for folder in [Path(p.strip()) for p in a.exports.split(",") if p.strip()]:
        res = compare_export(folder, a)
        res.update(cpu=cpu_report(), ort_threads=a.threads, python=sys.version.split()[0])
        suffix = ("" if a.method == "minmax" else f".{a.method}") + \
            ("" if a.calib_seed is None else f".seed{a.calib_seed}")
        write_json_atomic(a.out / f"{res['model']}{suffix}.json", res)
        print(f"{res['model']}: Q/DQ nodes " + ", ".join(f"{k} {v['qdq_nodes']}" for k, v in res["placement"].items()))
        for name, r in res["accuracy"].items():
            print(f"  {name} ({r['frames']} frames): " + "  ".join(f"{k} {100 * v:.2f}" for k, v in r["miou"].items()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "modelopt":
        modelopt_main(sys.argv[2:])
    else:
        main()
