"""`segedge bench` end to end on a tiny random B0 and a tiny CamVid-layout dataset, and its one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_pairs
from segedge.benchmarks.schema import check_results
from segedge.cli import main
from segedge.data.datasets import CAMVID_CLASSES, open_dataset
from segedge.models import create_model, save_checkpoint

SIZE = (64, 96)
SWEEP = (96, 128)
TARGETS = ("torch", "onnx", "ort-int8")


def _to_camvid(lab: np.ndarray) -> np.ndarray:
    out = np.array([3, 0, 8], np.uint8)[lab]
    out[:2, :] = 11  # void → ignore
    return out


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(create_model("b0", num_classes=11), path,
                           {"model": "b0", "num_classes": 11, "input_size": list(SIZE), "class_names": CAMVID_CLASSES})


def _main(*args: str) -> tuple[int, str, str]:
    """The real entry point in-process with stdout/stderr captured; (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as ei:
        main(list(args))
    code = ei.value.code if isinstance(ei.value.code, int) else (0 if ei.value.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def _one_line_error(code: int, out: str, err: str, *needles: str) -> str:
    assert code != 0
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A working folder with data/ (CamVid layout, 64×96), b0.safetensors and other.safetensors (other weights)."""
    root = tmp_path_factory.mktemp("bench")
    write_pairs(root / "data" / "train", root / "data" / "trainannot", 6, *SIZE, seed=0, label_fn=_to_camvid)
    write_pairs(root / "data" / "val", root / "data" / "valannot", 3, *SIZE, seed=1, label_fn=_to_camvid)
    _checkpoint(root / "b0.safetensors", 0)
    _checkpoint(root / "other.safetensors", 1)
    return root


def _bench(work: Path, *args: str, path_prefix: Path | None = None) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # default export folders go to ./exports
        mp.setenv("SEGEDGE_CACHE_DIR", str(work / "cache"))
        if path_prefix is not None:
            mp.setenv("PATH", f"{path_prefix}{os.pathsep}{os.environ.get('PATH', '')}")
        return _main("bench", "--model", "b0", "--data", "data", "--warmup", "2", "--iters", "3", "--threads", "1",
                     *args)


@pytest.fixture(scope="module")
def run(work: Path):
    """One full run: torch, onnx, ort-int8 at 64×96 (exports made here, INT8 calibrated on the train split)."""
    code, out, err = _bench(work, "--weights", "b0.safetensors", "--targets", ",".join(TARGETS), "--calib-count",
                            "2", "--out", "out")
    assert code == 0, err
    return work, out, err, json.loads((work / "out" / "results.json").read_text())


FAKE_TEGRASTATS = """#!{python}
import sys, time
assert sys.argv[1:3] == ["--interval", "100"], sys.argv
i = 0
while True:
    print("RAM 2448/7772MB (lfb 2x4MB) VDD_IN %dmW/4500mW VDD_CPU_GPU_CV 823mW/823mW VDD_SOC 1236mW/1236mW"
          % (4000 + 500 * (i % 3)), flush=True)
    i += 1
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def sweep_run(work: Path):
    """The --sizes sweep and Jetson power (a stand-in tegrastats on PATH) on the reference only: no export, no
    memory probe, to keep the test file short."""
    bin_dir = work / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "tegrastats").write_text(FAKE_TEGRASTATS.format(python=sys.executable))
    (bin_dir / "tegrastats").chmod(0o755)
    code, out, err = _bench(work, "--weights", "b0.safetensors", "--targets", "torch", "--no-memory", "--sizes",
                            f"{SIZE[0]}x{SIZE[1]},{SWEEP[0]}x{SWEEP[1]}", "--power", "on", "--out", "sweep-out",
                            path_prefix=bin_dir)
    assert code == 0, err
    return work, json.loads((work / "sweep-out" / "results.json").read_text())


def test_outputs_are_complete_and_valid(run):
    work, out, err, res = run
    assert check_results(res) == []
    assert [(r["model"], r["target"]) for r in res["rows"]] == [("b0", t) for t in TARGETS]
    for t in TARGETS:
        assert re.search(rf"│ b0\s+│ {re.escape(t)}\s+│", out), out
    s = res["settings"]
    assert (s["warmup"], s["iters"], s["eval_frames"], s["dataset"]) == (2, 3, 3, "camvid")
    assert s["power"].startswith("skipped") and "tegrastats" in s["power"]  # not a Jetson
    assert "VmHWM" in s["memory"] and "fresh process" in s["memory"]
    m = res["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["threads"] == 1
    assert m["libraries"]["torch"] == torch.__version__ and "onnxruntime" in m["libraries"]
    assert "commit" in m["git"]
    for f in ("results.json", "results.csv", "results.md", "latency_vs_miou.png", "per_class_iou.png"):
        assert (work / "out" / f).is_file(), f
    assert res["sweep"] == [] and not (work / "out" / "latency_vs_size.png").exists()
    for png in ("latency_vs_miou.png", "per_class_iou.png"):
        data = (work / "out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    # paths relative to the working directory (the run's cwd is `work`), never resolved absolute ones
    blob = json.dumps(res)
    assert str(work) not in blob and os.path.realpath(work) not in blob
    assert res["models"]["b0"]["weights"] == "b0.safetensors" and res["settings"]["data"] == "data"
    assert res["settings"]["calibration"] == "camvid:data:train"
    assert res["models"]["b0"]["export_folders"] == {"64x96": os.path.join("exports", "b0-64x96")}


def test_each_row_is_measured(run):
    work, _, _, res = run
    b0 = create_model("b0", weights=str(work / "b0.safetensors"))
    n_params = sum(p.numel() for p in b0.parameters())
    for r in res["rows"]:
        assert r["params"] == n_params and r["gflops"] == pytest.approx(2 * r["gmacs"]) and r["gmacs"] > 0
        for kind in ("inference", "end_to_end"):
            lat = r["latency"][kind]
            assert lat["n"] == 3 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["max_ms"]
            assert lat["fps"] == pytest.approx(1000 / lat["mean_ms"])
        mem = r["memory"]
        assert mem["peak_rss_bytes"] >= mem["baseline_rss_bytes"] > 10_000_000
        assert mem["model_rss_bytes"] == mem["peak_rss_bytes"] - mem["baseline_rss_bytes"]
        assert Path(r["artifact"]).name and r["artifact_bytes"] > 0
    by = {r["target"]: r for r in res["rows"]}
    assert by["torch"]["artifact_bytes"] == (work / "b0.safetensors").stat().st_size
    onnx_file = work / by["onnx"]["artifact"]
    assert by["onnx"]["artifact_bytes"] == onnx_file.stat().st_size
    # SegFormer's ort-int8 stores int8 conv weights only (scope conv: its Linear layers stay float)
    assert by["ort-int8"]["artifact_bytes"] < 0.9 * by["onnx"]["artifact_bytes"]
    assert by["onnx"]["precision"] == "fp32" and by["ort-int8"]["precision"] == "int8"


def test_accuracy_and_drop_against_the_reference(run):
    work, _, _, res = run
    by = {r["target"]: r["accuracy"] for r in res["rows"]}
    ref = by["torch"]
    assert ref["miou_drop"] == 0.0 and ref["argmax_agreement"] == 1.0
    assert by["onnx"]["argmax_agreement"] > 0.999  # FP32 export: same masks up to float noise
    for t in ("onnx", "ort-int8"):
        assert by[t]["miou_drop"] == pytest.approx(ref["miou"] - by[t]["miou"], abs=2e-6)  # metrics rounded to 1e-6
        assert 0.0 <= by[t]["argmax_agreement"] <= 1.0
        assert set(by[t]["per_class_iou"]) == set(CAMVID_CLASSES)
    # Independent check of the accumulation: the lead's evaluate() over the same export and frames.
    from segedge.evaluation import evaluate
    from segedge.runtime import Segmenter

    seg = Segmenter.load(work / "exports" / "b0-64x96", target="ort-int8", postprocess="exact")
    m = evaluate(seg.predict, open_dataset("camvid", work / "data", "val"))
    assert by["ort-int8"]["miou"] == pytest.approx(m.miou, abs=1e-6)
    assert by["ort-int8"]["pixel_acc"] == pytest.approx(m.pixel_acc, abs=1e-6)


def test_csv_and_md(run):
    work, _, _, res = run
    rows = list(csv.DictReader((work / "out" / "results.csv").open()))
    assert [r["target"] for r in rows] == list(TARGETS)
    for row, r in zip(rows, res["rows"]):
        assert float(row["e2e_p90_ms"]) == pytest.approx(r["latency"]["end_to_end"]["p90_ms"])
        assert float(row["peak_rss_mb"]) == pytest.approx(r["memory"]["peak_rss_bytes"] / 1e6)
    md = (work / "out" / "results.md").read_text()
    assert sum(ln.startswith("| b0 | ") for ln in md.splitlines()) == 3
    assert "Peak RSS: peak RSS of a fresh process per target" in md


def test_sweep(sweep_run):
    work, res = sweep_run
    assert check_results(res) == []
    assert [r["target"] for r in res["rows"]] == ["torch"] and res["rows"][0]["memory"] is None
    sweep = {tuple(r["input_size"]): r for r in res["sweep"]}
    assert set(sweep) == {SIZE, SWEEP}
    # The main size is not timed twice: its sweep point is the main measurement.
    assert sweep[SIZE]["latency"] == res["rows"][0]["latency"] and sweep[SIZE]["same_run_as_main"]
    assert sweep[SWEEP]["latency"]["inference"]["n"] == 3 and not sweep[SWEEP]["same_run_as_main"]
    assert sweep[SWEEP]["gmacs"] > sweep[SIZE]["gmacs"]
    rows = list(csv.DictReader((work / "sweep-out" / "sweep.csv").open()))
    assert {(int(r["input_h"]), int(r["input_w"])) for r in rows} == {SIZE, SWEEP}
    data = (work / "sweep-out" / "latency_vs_size.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not (work / "exports" / "b0-96x128").exists()  # torch needs no export


def test_power_from_tegrastats(sweep_run):
    work, res = sweep_run
    assert res["settings"]["power"].startswith("tegrastats")
    p = res["rows"][0]["power"]
    assert p["rail"] == "VDD_IN" and p["samples"] >= 5 and p["seconds"] >= 2.0 and p["frames"] >= 10
    assert 4000 <= p["mean_mw"] <= 5000  # the stand-in cycles 4000, 4500, 5000 mW
    assert p["energy_mj_per_frame"] == pytest.approx(p["mean_mw"] * p["seconds"] / p["frames"])
    assert 4000 <= p["idle_mw"] <= 5000
    md = (work / "sweep-out" / "results.md").read_text()
    assert "Energy / frame (mJ)" in md and f"{p['energy_mj_per_frame']:.1f}" in md


def test_existing_exports_are_reused(run):
    from segedge.benchmarks.artifacts import plan_export

    work, _, _, res = run
    assert all(r["exported_now"] for r in res["rows"] if r["target"] != "torch")
    cfg = create_model("b0", weights=str(work / "b0.safetensors")).pretrained_cfg
    missing, notes = plan_export(work / "exports" / "b0-64x96", True, cfg, SIZE, ["onnx", "ort-int8"])
    assert missing == [] and notes == []  # nothing to export again


def test_default_export_folder_of_another_checkpoint_is_left_alone(run, monkeypatch):
    from segedge.benchmarks.artifacts import default_folder

    work, _, _, _ = run
    monkeypatch.chdir(work)
    mine = create_model("b0", weights=str(work / "b0.safetensors")).pretrained_cfg
    assert default_folder(mine, SIZE) == (Path("exports/b0-64x96"), None)
    other = create_model("b0", weights=str(work / "other.safetensors")).pretrained_cfg
    folder, note = default_folder(other, SIZE)
    assert folder == Path(f"exports/b0-64x96-{other['weights_sha256'][:8]}") and "left untouched" in note
    assert default_folder(mine, SWEEP) == (Path("exports/b0-96x128"), None)  # nothing there yet


def test_default_folder_from_another_segedge_version_is_re_exported(run, tmp_path):
    import shutil

    from segedge.benchmarks.artifacts import plan_export
    from segedge.contract import MANIFEST_NAME

    work, _, _, _ = run
    folder = tmp_path / "b0-64x96"
    shutil.copytree(work / "exports" / "b0-64x96", folder)
    cfg = create_model("b0", weights=str(work / "b0.safetensors")).pretrained_cfg
    assert plan_export(folder, False, cfg, SIZE, ["onnx", "ort-int8"]) == ([], [])
    man = json.loads((folder / MANIFEST_NAME).read_text())
    man["segedge_version"] = "0.0.1"
    (folder / MANIFEST_NAME).write_text(json.dumps(man))
    missing, notes = plan_export(folder, False, cfg, SIZE, ["onnx", "ort-int8"])
    assert missing == ["onnx", "ort-int8"] and "written by segedge 0.0.1" in notes[0]
    assert plan_export(folder, True, cfg, SIZE, ["onnx", "ort-int8"]) == ([], [])  # --artifacts: used as given


def test_artifacts_from_other_weights_are_refused(run):
    work, _, _, _ = run
    line = _one_line_error(*_bench(work, "--weights", "other.safetensors", "--artifacts", "exports/b0-64x96",
                                   "--out", "out2"), "exports/b0-64x96", "other weights")
    assert "re-export" in line


# ------------------------------------------------------------------------------------------- bad input
def test_unknown_target(work):
    _one_line_error(*_main("bench", "--model", "b0", "--weights", str(work / "b0.safetensors"), "--data",
                           str(work / "data"), "--targets", "torch,onnx,tensorrt-magic", "--out",
                           str(work / "o1")), "tensorrt-magic", "torch", "ort-int8")


def test_missing_data_folder(work):
    _one_line_error(*_main("bench", "--model", "b0", "--weights", str(work / "b0.safetensors"), "--data",
                           str(work / "no-such-data"), "--out", str(work / "o2")), "no-such-data", "--data")


def test_artifact_folder_of_another_model(work, tmp_path):
    other = tmp_path / "topformer-t-64x128"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({
        "format": "segedge-export/1", "model": "topformer-t", "num_classes": 11,
        "input": {"height": 64, "width": 128}, "targets": {"onnx": {"file": "model.onnx"}}}))
    _one_line_error(*_main("bench", "--model", "b0", "--weights", str(work / "b0.safetensors"), "--data",
                           str(work / "data"), "--artifacts", str(other), "--out", str(tmp_path / "o")),
                    str(other), "topformer-t", "'b0'")


@pytest.mark.parametrize("extra,needle", [
    (["--weights", "a.safetensors,b.safetensors"], "one per --model"),
    (["--sizes", "100x100"], "multiples of 32"),
    (["--sizes", "64x"], "64x"),
    (["--artifacts", "/no/such/export"], "/no/such/export"),
    (["--dataset", "pascal"], "pascal"),
    (["--power", "maybe"], "--power"),
])
def test_other_bad_input(work, tmp_path, extra, needle):
    args = ["bench", "--model", "b0", "--data", str(work / "data"), "--out", str(tmp_path / "o")]
    if "--weights" not in extra:
        args += ["--weights", str(work / "b0.safetensors")]
    _one_line_error(*_main(*args, *extra), needle)
