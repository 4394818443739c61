"""Figures of issue 12 item 3: INT8 mIoU drop vs FP32 with PTQ (today's default export) and with QAT
(`segedge train --qat`), on CamVid val and on the held-out dusk drive 0001TP.

For each model, from its demo checkpoint: one PTQ export (`--target ort-int8`, which writes qdq too; 32 CamVid train
frames, MinMax, as the demo exports); then per target and per QAT objective (--losses: labels = cross-entropy,
distill = KL to the frozen original model, mixed) a QAT fine-tune on CamVid train WITHOUT the 0001TP frames (a
symlinked copy of the split under --work, so the dusk drive stays held out) and its export with the learned ranges.
Each run checkpoints every --checkpoint-every iterations and resumes when the script is started again; finished runs
and exports are reused.
Every INT8 model is compared with the ORIGINAL FP32 model (the drop a user sees), on all of CamVid val and on the
0001TP frames that are not PTQ calibration frames (benchmarks/int8_budget.py `dusk_set`). ORT runs with 1 thread,
torch trains with --threads. Aggregate JSON + README.md go to benchmarks/results/qat/; nothing derived from CamVid.

    nohup nice -n 10 .venv/bin/python benchmarks/qat.py --iters 150 > bench-out/qat-kd-topformer.log 2>&1 &
    nohup nice -n 10 .venv/bin/python benchmarks/qat.py --models segformer-b0 --targets qdq --losses distill labels \
        --iters 150 > bench-out/qat-kd-b0.log 2>&1 &
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


def qat_train(model: str, weights: Path, data: Path, out: Path, target: str, loss: str, a: argparse.Namespace) -> dict:
    """`segedge train --qat --qat-loss LOSS` (the CLI's defaults for that loss unless --lr is given): returns the run
    summary (wall time included). Resumes an interrupted run from its last checkpoint (--val-every)."""
    from segedge.training.config import qat_defaults
    from segedge.training.trainer import TrainConfig, Trainer

    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    d = qat_defaults(loss)
    lr, scale_lr = (a.lr, None) if a.lr else (d["lr"], d["qat_scale_lr"])
    scale_lr = a.scale_lr or scale_lr
    cfg = TrainConfig(model=model, data=str(data), out=str(out), input_size=(384, 512), iters=a.iters,
                      batch_size=a.batch_size, lr=lr, qat_scale_lr=scale_lr, warmup_iters=d["warmup_iters"],
                      val_every=a.checkpoint_every, val_limit=1, threads=a.threads, weights=str(weights), qat=True,
                      qat_target=target, qat_loss=loss, log_every=20,
                      command=f"segedge train --qat --qat-target {target} --qat-loss {loss} --iters {a.iters} "
                              f"--batch-size {a.batch_size}" + (f" --lr {a.lr}" if a.lr else "")
                              + (f" --qat-scale-lr {a.scale_lr}" if a.scale_lr else ""))
    t0 = time.time()
    trainer = Trainer(cfg)
    summary = trainer.run(resume=(out / "train_state.pt").exists())
    summary["process_wall_s"] = round(time.time() - t0 + trainer.wall_before, 1)  # load + calibration + preload + train
    summary.update(loss=loss, lr=lr, scale_lr=scale_lr or lr)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate(model_files: dict[str, Path], ref_dir: Path, camvid: Path) -> dict:
    """mIoU (and argmax agreement / SQNR vs the original FP32) of each ONNX model on CamVid val and on 0001TP."""
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from int8_budget import dusk_set

    from segedge.contract import Manifest
    from segedge.data.datasets import open_dataset
    try:  # the export's own input maker (moved from pipeline._make_input to assemble.make_input)
        from segedge.export.assemble import make_input as _make_input
    except ImportError:
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


def run_name(model: str, target: str, loss: str, tag: str = "") -> str:
    """The work sub-folder of one QAT run (the labels runs kept their pre-distillation name)."""
    return f"{model}-qat-{target}" + ("" if loss == "labels" else f"-{loss}") + (f"-{tag}" if tag else "")


def run_model(model: str, a: argparse.Namespace, camvid: Path, work: Path) -> dict:
    """PTQ export, QAT per target and loss, their exports, evaluation; returns the figures."""
    from segedge.models import default_weights

    demo = default_weights(model)
    data = split_without(camvid, work)
    print(f"{model}: PTQ export", flush=True)
    ptq = ptq_export(model, demo, camvid, work / f"{model}-ptq", ",".join(a.targets))
    files, runs = {}, {}
    for target in a.targets:
        files[f"{target}.ptq"] = ptq / FILES[target]
        for loss in a.losses:
            print(f"{model}: QAT for {target}, loss {loss} {a.tag}", flush=True)
            run = work / run_name(model, target, loss, a.tag)
            summary = qat_train(model, demo, data, run / "run", target, loss, a)
            qexp = ptq_export(model, run / "run" / "last.safetensors", camvid, run / "export", target)
            name = loss + (f"-{a.tag}" if a.tag else "")
            files[f"{target}.qat-{name}"] = qexp / FILES[target]
            files[f"{target}.qat-{name}_fp32"] = qexp / "model.onnx"
            entry = json.loads((qexp / "manifest.json").read_text())["targets"][target]
            runs[f"{target}.{name}"] = {
                "target": target, "loss": loss, "variant": a.tag,  # runs before --qat-loss: labels at 5e-5
                "lr": summary.get("lr", 5e-5), "scale_lr": summary.get("scale_lr", 5e-5),
                "train_seconds": summary["train_seconds"], "wall_seconds": summary["wall_seconds"],
                "process_wall_s": summary.get("process_wall_s"), "iterations": summary["iterations"],
                "calibration": {k: entry["calibration"][k] for k in ("method", "base_method", "qat")},
                "qdq_rules": entry["quantization"].get("qdq_rules")}
    print(f"{model}: evaluating", flush=True)
    figs = evaluate(files, ptq, camvid)
    return {"model": model, "cpu": cpu_line(), "schedule": {"batch_size": a.batch_size,
            "warmup_iters": 20, "crop": "384x512", "threads": a.threads,
            "train_set": f"CamVid train without {HELD_OUT} ({HELD_OUT} held out)"}, "qat_runs": runs, "figures": figs}


def _cell(f: dict, s: str, key: str) -> str:
    return f"{f[s][key]['drop_pt']:+.2f}" if key in f[s] else "—"


def _table(res: dict) -> list[str]:
    """The README rows of one model: PTQ, then each QAT loss; drop vs the original FP32 on val and on 0001TP."""
    f, rows = res["figures"], []
    name = res["model"] + (" (no float islands)" if "none" in res.get("float_islands", "") else "")
    for target in ("qdq", "ort-int8"):
        if f"{target}.ptq" not in f["val"]:
            continue
        ptq = [f["val"][f"{target}.ptq"]["drop_pt"], f["dusk_0001TP"][f"{target}.ptq"]["drop_pt"]]
        rows.append(f"| {name} | {target} | PTQ default | {ptq[0]:+.2f} | {ptq[1]:+.2f} | — | — | "
                    f"{'yes' if max(ptq) <= 0.1 else 'no'} | — | — |")
        for key, run in res["qat_runs"].items():
            if run.get("target", key.split(".")[0]) != target:
                continue
            loss = run.get("loss", "labels") + (f"-{run['variant']}" if run.get("variant") else "")
            q = f"{target}.qat-{loss}" if f"{target}.qat-{loss}" in f["val"] else f"{target}.qat"
            drops = [f[s][q]["drop_pt"] for s in ("val", "dusk_0001TP")]
            own_fp32 = " / ".join(f"{f[s][q + '_fp32']['drop_pt']:+.2f}" for s in ("val", "dusk_0001TP"))
            vs_own = " / ".join(f"{100 * (f[s][q + '_fp32']['miou'] - f[s][q]['miou']):+.2f}"
                                for s in ("val", "dusk_0001TP"))
            proc = run.get("process_wall_s") or run["wall_seconds"]
            rows.append(f"| {name} | {target} | QAT {loss} (lr {run.get('lr', 5e-5):g}, scales "
                        f"{run.get('scale_lr', 5e-5):g}) | {drops[0]:+.2f} | {drops[1]:+.2f} | {own_fp32} | {vs_own} | "
                        f"{'yes' if max(drops) <= 0.1 else 'no'} | {run['iterations']} | "
                        f"{run['train_seconds'] / 60:.1f} ({proc / 60:.1f}) |")
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
        f"QAT schedule: batch {sch['batch_size']}, crop {sch['crop']}, AdamW, {sch['warmup_iters']} warm-up "
        "iterations, poly decay, BN folded and frozen, torch threads "
        f"{sch['threads']}; lr per row (weights, activation scales). Training set: {sch['train_set']} — CamVid train "
        "contains the dusk drive 0001TP, so it was left out of QAT for the held-out column; val is the usual 101 "
        "CamVid val frames; 0001TP = its train frames minus the PTQ calibration frames. `labels` = cross-entropy on "
        "the CamVid labels; `distill` = KL to the frozen original FP32 model (T = 1), no labels.", "",
        f"CPU: {r0['cpu']} (shared with other jobs while this ran, so wall times are upper bounds; the lead re-runs "
        "timing on a quiet machine).", "",
        "| model | target | INT8 model | val drop | 0001TP drop | its FP32 drop (val / 0001TP) | INT8 vs its own "
        "FP32 (val / 0001TP) | ≤ 0.1 pt on both | QAT iters | QAT train min (process min) |",
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
    """The JSON figures written so far for `models` first, then for any other model: each model's default run, then
    its --no-islands run when there is one (the README always shows every model measured)."""
    others = sorted({p.name.split(".")[0] for p in HERE.glob("*.json")} - set(models))
    paths = [HERE / f"{m}{s}.json" for m in [*models, *others] for s in ("", ".no-islands")]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


def main() -> None:
    """Parse the options, run each model, write its JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["topformer-t"])
    ap.add_argument("--targets", nargs="+", default=["qdq", "ort-int8"])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--losses", nargs="+", default=["labels", "distill"], choices=["labels", "distill", "mixed"])
    ap.add_argument("--lr", type=float, default=None, help="Weights and scales lr (default: the CLI's per loss).")
    ap.add_argument("--scale-lr", type=float, default=None, help="Activation-scale lr (default: the loss's).")
    ap.add_argument("--tag", default="", help="A variant name for runs with non-default --lr/--scale-lr: its run "
                    "folder and JSON keys get '-TAG', next to the default runs.")
    ap.add_argument("--checkpoint-every", type=int, default=50, help="Checkpoint (and resume) every N iterations.")
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
        out = HERE / f"{model}{suffix}.json"
        if out.exists():  # runs of earlier invocations (other targets, losses, variants) stay in the figures
            old = json.loads(out.read_text())
            res["qat_runs"] = {**old.get("qat_runs", {}), **res["qat_runs"]}
            for s, figs in old.get("figures", {}).items():
                res["figures"][s] = {**figs, **res["figures"].get(s, {})}
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(f"{model}: wrote {HERE / f'{model}{suffix}.json'}", flush=True)
    if not a.no_islands:
        print(write_readme(_results(a.models)))


if __name__ == "__main__":
    main()
