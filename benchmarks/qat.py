"""Figures of issue 12 item 3: INT8 mIoU drop vs FP32 with PTQ (today's default export) and with QAT
(`segedge train --qat`), on CamVid val and on the held-out dusk drive 0001TP.

For each model, from its demo checkpoint: one PTQ export (`--target ort-int8`, which writes qdq too; 32 CamVid train
frames, MinMax, as the demo exports); then per target a QAT fine-tune on CamVid train WITHOUT the 0001TP frames (a
symlinked copy of the split under --work, so the dusk drive stays held out) and its export with the learned ranges.
Every INT8 model is compared with the ORIGINAL FP32 model (the drop a user sees), on all of CamVid val and on the
0001TP frames that are not PTQ calibration frames (benchmarks/int8_budget.py `dusk_set`). ORT runs with 1 thread,
torch trains with --threads. Aggregate JSON + README.md go to benchmarks/results/qat/; nothing derived from CamVid.

    nohup nice -n 10 .venv/bin/python benchmarks/qat.py > bench-out/qat.log 2>&1 &
    nohup nice -n 10 .venv/bin/python benchmarks/qat.py --no-islands --targets qdq --iters 150 > bench-out/qat-ni.log 2>&1 &
    .venv/bin/python benchmarks/qat.py --readme-only   # README.md from the JSON (hand-written notes are kept)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results" / "qat"
HELD_OUT = "0001TP"
NOTES = "<!-- notes: hand-written below, kept by --readme-only -->"


def split_without(camvid: Path, work: Path, prefix: str = HELD_OUT) -> Path:
    """A CamVid-layout folder of symlinks: train/trainannot without the `prefix` drive, val/valannot as they are."""
    root = work / f"camvid-no{prefix}"
    for split in ("train", "trainannot"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for f in sorted((camvid / split).iterdir()):
            link = root / split / f.name
            if not f.name.startswith(prefix) and not link.exists():
                link.symlink_to(f.resolve())
    for split in ("val", "valannot"):
        if not (root / split).exists():
            (root / split).symlink_to((camvid / split).resolve())
    return root


def ptq_export(model: str, weights: Path, camvid: Path, out: Path, targets: str) -> Path:
    """`segedge export --target T --calib CAMVID/train` (32 frames, MinMax): today's default INT8 export."""
    from segedge.export import ExportOptions, export_model

    if not (out / "manifest.json").exists():
        export_model(ExportOptions(model, weights=weights, targets=targets, calib=camvid / "train", calib_count=32,
                                   verify_frames=1, out=out), progress=lambda m: print("  export:", m, flush=True))
    return out


def qat_train(model: str, weights: Path, data: Path, out: Path, target: str, a: argparse.Namespace) -> dict:
    """`segedge train --qat`: returns the run summary (wall time included)."""
    from segedge.training.trainer import TrainConfig, Trainer

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    cfg = TrainConfig(model=model, data=str(data), out=str(out), input_size=(384, 512), iters=a.iters,
                      batch_size=a.batch_size, lr=a.lr, warmup_iters=20, val_every=a.iters, val_limit=1,
                      threads=a.threads, weights=str(weights), qat=True, qat_target=target, log_every=20,
                      command=f"segedge train --qat --qat-target {target} --iters {a.iters} --batch-size "
                              f"{a.batch_size} --lr {a.lr}")
    t0 = time.time()
    summary = Trainer(cfg).run()
    summary["process_wall_s"] = round(time.time() - t0, 1)  # model load + calibration + preload + training
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate(model_files: dict[str, Path], ref_dir: Path, camvid: Path) -> dict:
    """mIoU (and argmax agreement / SQNR vs the original FP32) of each ONNX model on CamVid val and on 0001TP."""
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from int8_budget import dusk_set

    from segedge.contract import Manifest
    from segedge.data.datasets import open_dataset
    from segedge.export.pipeline import _make_input
    from segedge.export.sensitivity import compare_logits, labelled_set, miou_of, run_logits

    c = Manifest.read(ref_dir).contract
    make = lambda f: _make_input(f, c.input.size, False, "RGB", c.input.mean, c.input.std)  # noqa: E731
    table = json.loads((ref_dir / "calibration.minmax.json").read_text())
    val_ds = open_dataset("camvid", camvid, "val")
    sets = {"val": labelled_set((val_ds[i] for i in range(len(val_ds))), make, "val"),
            "dusk_0001TP": dusk_set(camvid, table["frames"], make)}
    res: dict = {}
    for set_name, frames in sets.items():
        ref = run_logits(onnx.load(str(ref_dir / "model.onnx")), frames)
        fp32 = miou_of(ref, frames, c.num_classes)
        out = {"frames": len(frames), "fp32_miou": fp32}
        for name, path in model_files.items():
            got = run_logits(onnx.load(str(path)), frames)
            miou = miou_of(got, frames, c.num_classes)
            out[name] = {"miou": miou, "drop_pt": round(100 * (fp32 - miou), 3), **compare_logits(got, ref)}
            print(f"  {set_name} {name}: mIoU {miou:.4f} drop {out[name]['drop_pt']:+.2f} pt", flush=True)
        res[set_name] = out
    return res


def cpu_line() -> str:
    """'<model name>, <n> CPUs' from lscpu (Linux) or platform."""
    try:
        info = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                                    check=True).stdout.splitlines() if ":" in line)
        return f"{info['Model name'].strip()}, {info['CPU(s)'].strip()} CPUs"
    except (OSError, KeyError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


FILES = {"qdq": "model.qdq.onnx", "ort-int8": "model.int8.onnx"}


def run_model(model: str, a: argparse.Namespace, camvid: Path, work: Path) -> dict:
    """PTQ export, QAT per target, their exports, evaluation; returns the figures."""
    from segedge.models import default_weights

    demo = default_weights(model)
    data = split_without(camvid, work)
    print(f"{model}: PTQ export", flush=True)
    ptq = ptq_export(model, demo, camvid, work / f"{model}-ptq", ",".join(a.targets))
    files, runs = {}, {}
    for target in a.targets:
        files[f"{target}.ptq"] = ptq / FILES[target]
        print(f"{model}: QAT for {target}", flush=True)
        run = work / f"{model}-qat-{target}"
        summary = qat_train(model, demo, data, run / "run", target, a)
        qexp = ptq_export(model, run / "run" / "last.safetensors", camvid, run / "export", target)
        files[f"{target}.qat"] = qexp / FILES[target]
        files[f"{target}.qat_fp32"] = qexp / "model.onnx"
        entry = json.loads((qexp / "manifest.json").read_text())["targets"][target]
        runs[target] = {"train_seconds": summary["train_seconds"], "wall_seconds": summary["wall_seconds"],
                        "process_wall_s": summary.get("process_wall_s"), "iterations": summary["iterations"],
                        "calibration": {k: entry["calibration"][k] for k in ("method", "base_method", "qat")},
                        "qdq_rules": entry["quantization"].get("qdq_rules")}
    print(f"{model}: evaluating", flush=True)
    figs = evaluate(files, ptq, camvid)
    return {"model": model, "cpu": cpu_line(), "schedule": {"iters": a.iters, "batch_size": a.batch_size, "lr": a.lr,
            "warmup_iters": 20, "crop": "384x512", "threads": a.threads,
            "train_set": f"CamVid train without {HELD_OUT} ({HELD_OUT} held out)"}, "qat_runs": runs, "figures": figs}


def _table(res: dict) -> list[str]:
    """The README rows of one model: drop vs FP32 per target, PTQ vs QAT, on val and on 0001TP."""
    f, rows = res["figures"], []
    for target in ("qdq", "ort-int8"):
        if f"{target}.qat" not in f["val"]:
            continue
        run = res["qat_runs"][target]
        cells = []
        for s in ("val", "dusk_0001TP"):
            for kind in ("ptq", "qat"):
                cells.append(f"{f[s][f'{target}.{kind}']['drop_pt']:+.2f}")
        qfp = " / ".join(f"{100 * f[s][f'{target}.qat_fp32']['miou']:.2f}" for s in ("val", "dusk_0001TP"))
        own = " / ".join(f"{100 * (f[s][f'{target}.qat_fp32']['miou'] - f[s][f'{target}.qat']['miou']):+.2f}"
                         for s in ("val", "dusk_0001TP"))
        name = res["model"] + (" (no float islands)" if "none" in res.get("float_islands", "") else "")
        rows.append(f"| {name} | {target} | {' | '.join(cells)} | {qfp} | {own} | {run['iterations']} | "
                    f"{run['train_seconds'] / 60:.1f} ({run['process_wall_s'] / 60:.1f}) |")
    return rows


def write_readme(results: list[dict]) -> Path:
    """benchmarks/results/qat/README.md from the per-model JSON."""
    r0 = results[0]
    sch = r0["schedule"]
    lines = [
        "# QAT (`segedge train --qat`) vs PTQ: INT8 mIoU drop vs FP32", "",
        "Made by `benchmarks/qat.py` (see its docstring). Drops are in mIoU points against the ORIGINAL FP32 model "
        "(the demo checkpoint's FP32 ONNX); positive = INT8 is worse. PTQ = today's default export (32 CamVid train "
        "frames, MinMax, family float islands). QAT = fine-tuned from the demo checkpoint with fake-quant matching the "
        "target, then exported with the learned activation ranges (manifest `calibration.method = \"qat\"`).", "",
        f"QAT schedule: batch {sch['batch_size']}, crop {sch['crop']}, AdamW lr {sch['lr']}, "
        f"{sch['warmup_iters']} warm-up iterations, poly decay, BN folded and frozen, torch threads {sch['threads']}. "
        f"Training set: {sch['train_set']} — CamVid train contains the dusk drive 0001TP, so it was left out of QAT "
        "for the held-out column; val is the usual 101 CamVid val frames; 0001TP = its train frames minus the PTQ "
        "calibration frames.", "",
        f"CPU: {r0['cpu']} (shared with other jobs while this ran, so wall times are upper bounds; the lead re-runs "
        "timing on a quiet machine).", "",
        "| model | target | val PTQ | val QAT | 0001TP PTQ | 0001TP QAT | QAT FP32 mIoU % (val / 0001TP) | QAT INT8 vs "
        "its own FP32 (val / 0001TP) | QAT iters | QAT train min (process min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        lines += _table(res)
    lines += ["", "No float islands: `--no-islands` drops FAMILY_FLOAT_GROUPS (TopFormer's tpm.s1) for PTQ and QAT alike, "
              "the graph PTQ cannot hold; the FP32 reference is the same original model.", "",
              "FP32 mIoU % of the original model: " + "; ".join(
        f"{r['model']}: val {100 * r['figures']['val']['fp32_miou']:.2f}, 0001TP "
        f"{100 * r['figures']['dusk_0001TP']['fp32_miou']:.2f} ({r['figures']['dusk_0001TP']['frames']} frames)"
        for r in results if "none" not in r.get("float_islands", "")), ""]
    out = HERE / "README.md"
    old = out.read_text() if out.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else NOTES + "\n"  # hand-written findings survive a re-run
    out.write_text("\n".join(lines) + "\n" + notes)
    return out


def _results(models: list[str]) -> list[dict]:
    """The JSON figures written so far: each model's default run, then its --no-islands run when there is one."""
    paths = [HERE / f"{m}{s}.json" for m in models for s in ("", ".no-islands")]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


def main() -> None:
    """Parse the options, run each model, write its JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["topformer-t"])
    ap.add_argument("--targets", nargs="+", default=["qdq", "ort-int8"])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--camvid", default="../shared/datasets/camvid")
    ap.add_argument("--work", default="bench-out/qat")
    ap.add_argument("--readme-only", action="store_true", help="Rewrite README.md from the JSON already written.")
    ap.add_argument("--no-islands", action="store_true",
                    help="Drop the family float islands (FAMILY_FLOAT_GROUPS) in this process, for QAT and exports "
                         "alike: the graph PTQ cannot hold; figures go to <model>.no-islands.json.")
    a = ap.parse_args()
    suffix = ""
    if a.no_islands:
        import segedge.export.sensitivity as sensitivity

        sensitivity.FAMILY_FLOAT_GROUPS = {}  # read at call time by the export and by segedge.training.qat
        suffix, a.work = ".no-islands", str(Path(a.work) / "no-islands")
    if a.readme_only:
        print(write_readme(_results(a.models)))
        return
    import torch

    torch.set_num_threads(a.threads)
    HERE.mkdir(parents=True, exist_ok=True)
    for model in a.models:
        res = run_model(model, a, Path(a.camvid), Path(a.work))
        res["float_islands"] = "none (--no-islands)" if a.no_islands else "family defaults"
        (HERE / f"{model}{suffix}.json").write_text(json.dumps(res, indent=2) + "\n")
        print(f"{model}: wrote {HERE / f'{model}{suffix}.json'}", flush=True)
    if not a.no_islands:
        print(write_readme(_results(a.models)))


if __name__ == "__main__":
    main()
