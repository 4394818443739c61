"""The inference form (`segedge export --fold`, the default) against the graph traced as trained, for one model.

SegFormer's decoder folds exactly (segedge.models.segformer.FoldedSegFormerHead): FP32 outputs agree to ~3e-5. What
this measures is what that buys and whether INT8 still holds:

1. `segedge export --target onnx,ort-int8,qdq,openvino,openvino-int8` twice (`--fold` / `--no-fold`), calibrated on
   CamVid train without the dusk drive 0001TP;
2. accuracy (`--phase accuracy`): each target's mIoU drop vs its own FP32 ONNX on CamVid val (101 frames) and on
   0001TP (held out by sequence), argmax agreement;
3. latency (`--phase timing`, on an otherwise idle machine): every artifact of both forms in one rotating-block run
   (inference alone, --threads), p50 and the folded / as-trained ratio per target.

Aggregate JSON and a markdown table (never frames) go to benchmarks/results/fold/<model>.{json,md}.

    python benchmarks/fold.py --model b0 --phase all
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cpu_tune import drops, eval_sets, time_all

HERE = Path(__file__).resolve().parent / "results" / "fold"
TARGETS = ("onnx", "ort-int8", "qdq", "openvino", "openvino-int8")
FORMS = {"folded": True, "as-trained": False}


def export_both(model: str, data: Path, work: Path) -> dict[str, Path]:
    """Both forms exported (kept when already there with every target)."""
    from segedge.contract import read_manifest
    from segedge.data.splits import calibration_source_without
    from segedge.export import ExportOptions, export_model

    out = {}
    for form, fold in FORMS.items():
        folder = work / f"{model}-{form}"
        have = (folder / "manifest.json").is_file() and set(TARGETS) <= set(read_manifest(folder)["targets"])
        if not have:
            export_model(ExportOptions(model, targets=list(TARGETS), calib=calibration_source_without(data),
                                       fold=fold, out=folder, replace=True), progress=print)
        out[form] = folder
    return out


def backends(folders: dict[str, Path], threads: int) -> dict[str, Any]:
    """`<form> <target>` → an open backend (qdq: the Q/DQ graph through ONNX Runtime, the TensorRT INT8 proxy)."""
    from segedge.runtime import Segmenter

    return {f"{form} {t}": Segmenter.load(folder, target=t, threads=threads).backend
            for form, folder in folders.items() for t in TARGETS}


def accuracy(model: str, folders: dict[str, Path], data: Path, threads: int) -> dict[str, Any]:
    """Drops of every target vs its own form's FP32 ONNX, on val and 0001TP."""
    from segedge.contract import read_manifest
    from segedge.export.pipeline import _make_input

    man = read_manifest(folders["folded"])
    c = man["input"]
    make = lambda f: _make_input(f, (c["height"], c["width"]), False, "RGB", c["mean"], c["std"])  # noqa: E731
    table = json.loads((folders["folded"] / man["targets"]["ort-int8"]["calibration"]["table"]).read_text())
    sets = eval_sets(data, make, table["frames"])
    bes = backends(folders, threads)
    out = {}
    for form in FORMS:
        own = {k.split(" ", 1)[1]: v for k, v in bes.items() if k.startswith(form + " ")}
        out[form] = drops(own, sets, own["onnx"], int(man["num_classes"]))
    return {"model": model, "sets": {k: len(v) for k, v in sets.items()}, "drops": out}


def timing(folders: dict[str, Path], data: Path, threads: int, iters: int) -> dict[str, Any]:
    """One rotating-block run over every artifact of both forms; p50 and folded / as-trained ratios."""
    import numpy as np

    from segedge.contract import read_manifest
    from segedge.doctor import cpu_report

    c = read_manifest(folders["folded"])["input"]
    x = np.random.default_rng(0).standard_normal((1, 3, c["height"], c["width"])).astype(np.float32)
    lat = time_all(backends(folders, threads), [x], iters, 10)
    p50 = {k: round(v["p50_ms"], 3) for k, v in lat.items()}
    ratio = {t: round(p50[f"folded {t}"] / p50[f"as-trained {t}"], 3) for t in TARGETS}
    return {"cpu": cpu_report(), "threads": threads, "iters": iters, "p50_ms": p50, "folded_vs_as_trained": ratio}


def markdown(res: dict[str, Any]) -> str:
    """The table: per target, p50 of both forms and their ratio, drops on val and 0001TP of both forms."""
    acc, tim = res.get("accuracy"), res.get("timing")
    lines = [f"# {res['model']}: inference form (`--fold`) vs as trained", ""]
    if tim:
        lines.append(f"CPU: {tim['cpu'].get('model')}, {tim['threads']} threads, one rotating-block run, p50 ms.")
    lines += ["", "| target | p50 folded | p50 as trained | ratio | drop val folded / as trained | "
              "drop 0001TP folded / as trained |", "|---|---:|---:|---:|---|---|"]
    for t in TARGETS:
        p = (f"{tim['p50_ms'][f'folded {t}']:.2f} | {tim['p50_ms'][f'as-trained {t}']:.2f} | "
             f"{tim['folded_vs_as_trained'][t]:.2f}") if tim else "- | - | -"
        d = ""
        for s in ("val", "0001TP"):
            if acc:
                f, a = acc["drops"]["folded"][s].get(t), acc["drops"]["as-trained"][s].get(t)
                d += f" {f['drop_pt']:+.2f} / {a['drop_pt']:+.2f} |" if f and a else " - |"
            else:
                d += " - |"
        lines.append(f"| {t} | {p} |{d}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Export both forms, then the phases asked for; results merge into the model's JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="b0")
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/camvid"))
    ap.add_argument("--work", type=Path, default=Path("bench-out/fold"))
    ap.add_argument("--phase", choices=("accuracy", "timing", "all"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--out", type=Path, default=HERE)
    a = ap.parse_args()
    folders = export_both(a.model, a.data, a.work)
    path = a.out / f"{a.model}.json"
    res = json.loads(path.read_text()) if path.is_file() else {"model": a.model}
    if a.phase in ("accuracy", "all"):
        res["accuracy"] = accuracy(a.model, folders, a.data, a.threads)
    if a.phase in ("timing", "all"):
        res["timing"] = timing(folders, a.data, a.threads, a.iters)
    a.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    (a.out / f"{a.model}.md").write_text(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
