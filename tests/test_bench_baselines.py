"""`segedge bench --baselines`: library defaults (ORT quantize_static, OpenVINO, NNCF) measured beside the targets.

One run on a tiny random B0 and a tiny CamVid-layout dataset (as tests/test_bench_cli.py), its reports, a run with
two libraries reported missing, the calibration frames the baselines reuse, and the one-line errors.
"""

from __future__ import annotations

import csv
import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import segedge.benchmarks.runner as runner
import segedge.toolkits as toolkits
from segedge.benchmarks.baselines import BASELINES, calibration_inputs, export_calibration_frames, skipped_baselines
from segedge.benchmarks.schema import check_results
from segedge.errors import DataError
from test_bench_cli import _bench, _one_line_error, work  # noqa: F401 - `work` is the shared module fixture

TARGETS = ("torch", "onnx", "ort-int8")
AVAILABLE = [n for n, s in BASELINES.items() if s.unavailable() is None]
# B0 is exported in its inference form (folded decoder), so every baseline is also built on the graph as trained
TRAINED = [f"{n} (as trained)" for n in AVAILABLE]
BASE_ROWS = [*AVAILABLE, *TRAINED]
PROVENANCE_KEYS = {"name", "library", "version", "call", "runtime", "arguments", "defaults", "threads",
                   "calibration_frames", "calibration_count"}


def _spy_rounds(monkeypatch) -> list[list[str]]:
    """Record the targets of every `time_blocks` call (the real function still runs)."""
    calls: list[list[str]] = []
    real = runner.time_blocks

    def spy(entries, *args, **kwargs):
        calls.append([e.target for e in entries])
        return real(entries, *args, **kwargs)

    monkeypatch.setattr(runner, "time_blocks", spy)
    return calls


@pytest.fixture(scope="module")
def run(work):  # noqa: F811 - the fixture imported above
    """torch, onnx, ort-int8 and the baselines at 64×96, INT8 calibrated on 2 train frames; memory probes off."""
    with pytest.MonkeyPatch.context() as mp:
        calls = _spy_rounds(mp)
        code, out, err = _bench(work, "--weights", "b0.safetensors", "--targets", ",".join(TARGETS), "--calib-count",
                                "2", "--no-memory", "--baselines", "--out", "bl-out")
    assert code == 0, err
    return work, out, calls, json.loads((work / "bl-out" / "results.json").read_text())


def test_baseline_rows_carry_their_provenance(run):
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    work, out, _, res = run
    assert check_results(res) == []
    assert [r["target"] for r in res["rows"]] == [*TARGETS, *BASE_ROWS]
    info = res["settings"]["baselines"]
    assert info["requested"] == list(BASELINES) and info["measured"] == BASE_ROWS
    assert set(info["skipped"]) == set(BASELINES) - set(AVAILABLE)
    rows = {r["target"]: r for r in res["rows"]}
    for t in TARGETS:
        assert rows[t]["baseline"] is None
    for name in AVAILABLE:
        b = rows[name]["baseline"]
        assert PROVENANCE_KEYS <= set(b) and b["name"] == name and b["arguments"] == "library defaults"
        assert b["threads"] == 1 and not rows[name]["reference"] and not rows[name]["exported_now"]
        assert f"{name} (baseline)" in out  # the terminal table marks it
    for name in TRAINED:  # the same library call on the model traced as trained (what a user without segedge has)
        b = rows[name]["baseline"]
        assert b["graph"].startswith("traced as trained") and b["name"] == name.split(" ")[0]
    if "ov-defaults" in rows:  # the folded graph does less work for the same library defaults
        assert rows["ov-defaults (as trained)"]["artifact_bytes"] > rows["ov-defaults"]["artifact_bytes"]
    if "ort-defaults" in rows:
        b = rows["ort-defaults"]["baseline"]
        assert b["version"] == onnxruntime.__version__ and b["call"].startswith(
            "onnxruntime.quantization.quantize_static('model.onnx'")
        sig = inspect.signature(quantize_static).parameters
        assert b["defaults"]["quant_format"] == str(sig["quant_format"].default) == "QDQ"
        assert b["defaults"]["per_channel"] == "False"
        # A real INT8 model: QDQ stores int8 weights, so the file is far smaller than the FP32 ONNX.
        assert rows["ort-defaults"]["precision"] == "int8"
        assert rows["ort-defaults"]["artifact_bytes"] < 0.5 * rows["onnx"]["artifact_bytes"]


def test_openvino_defaults_are_what_openvino_picks(run):
    if "ov-defaults" not in AVAILABLE:
        pytest.skip(f"ov-defaults skipped here: {BASELINES['ov-defaults'].unavailable()}")
    import openvino as ov

    work, _, _, res = run
    rows = {r["target"]: r for r in res["rows"]}
    onnx_file = work / rows["onnx"]["artifact"]
    assert rows["ov-defaults"]["artifact"] == rows["onnx"]["artifact"]  # OpenVINO reads the FP32 ONNX itself
    compiled = ov.Core().compile_model(str(onnx_file), "CPU")  # no config at all: the library's choice
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT")
    chosen = chosen.get_type_name() if hasattr(chosen, "get_type_name") else str(chosen)
    assert rows["ov-defaults"]["precision"] == chosen
    assert rows["ov-defaults"]["backend"]["inference_precision"] == chosen
    assert rows["ov-defaults"]["backend"]["config"] == {"INFERENCE_NUM_THREADS": 1}
    assert rows["ov-defaults"]["baseline"]["calibration_frames"] is None  # nothing calibrated
    if "nncf-defaults" in rows:
        b = rows["nncf-defaults"]["baseline"]
        assert b["defaults"]["subset_size"] == "300" and b["defaults"]["preset"] == "None"
        assert rows["nncf-defaults"]["precision"] == "int8" and b["calibration_count"] == 2


def test_baselines_are_timed_in_the_same_rounds(run):
    _, _, calls, res = run
    assert calls == [[*TARGETS, *BASE_ROWS]]  # one time_blocks run holds targets and baselines alike
    for r in res["rows"]:
        for kind in ("inference", "end_to_end"):
            lat = r["latency"][kind]
            assert lat["n"] == res["settings"]["iters"] == 3 and 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["max_ms"]


def test_baseline_miou_and_drop(run):
    from segedge.data.datasets import open_dataset
    from segedge.evaluation import evaluate
    from segedge.runtime import Segmenter

    work, _, _, res = run
    rows = {r["target"]: r for r in res["rows"]}
    ref = rows["torch"]["accuracy"]["miou"]
    for name in BASE_ROWS:
        acc = rows[name]["accuracy"]
        assert acc["miou"] is not None and acc["frames"] == 3
        assert acc["miou_drop"] == pytest.approx(ref - acc["miou"], abs=2e-6)
        assert 0.5 < acc["argmax_agreement"] <= 1.0  # the same model, quantized or in another runtime
    if "ov-defaults" not in AVAILABLE:
        return
    # Independent check: OpenVINO with no config on the export's ONNX, through segedge's own evaluate().
    import openvino as ov

    seg = Segmenter.load(work / "exports" / "b0-64x96", target="onnx", postprocess="exact")
    compiled = ov.Core().compile_model(str(work / rows["onnx"]["artifact"]), "CPU", {"INFERENCE_NUM_THREADS": 1})

    def predict(frame: np.ndarray) -> np.ndarray:
        out = compiled(seg.prepare(frame))[0]
        return seg.labels_from_output(np.asarray(out)[0], frame.shape[:2])

    m = evaluate(predict, open_dataset("camvid", work / "data", "val"))
    assert rows["ov-defaults"]["accuracy"]["miou"] == pytest.approx(m.miou, abs=1e-6)


def test_reports_mark_the_baselines(run):
    work, _, _, res = run
    rows = list(csv.DictReader((work / "bl-out" / "results.csv").open()))
    assert [r["target"] for r in rows] == [*TARGETS, *BASE_ROWS]
    assert [r["baseline"] for r in rows] == ["False"] * len(TARGETS) + ["True"] * len(BASE_ROWS)
    by = {r["target"]: r for r in rows}
    for name in AVAILABLE:
        assert by[name]["baseline_library"] == BASELINES[name].library and by[name]["baseline_version"]
        assert float(by[name]["miou_drop"]) == pytest.approx(
            next(r for r in res["rows"] if r["target"] == name)["accuracy"]["miou_drop"])
    md = (work / "bl-out" / "results.md").read_text()
    for name in AVAILABLE:
        assert f"| b0 | {name} (baseline) |" in md
        call = next(r for r in res["rows"] if r["target"] == name)["baseline"]["call"]
        assert f"`{call}`" in md
    assert "| b0 | ort-int8 | int8 |" in md  # segedge's rows are not marked
    assert "Baselines (library defaults" in md
    for png in ("latency_vs_miou.png", "per_class_iou.png"):
        data = (work / "bl-out" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_calibration_frames_are_the_exports_own(run):
    from segedge.contract import read_manifest
    from segedge.export.calibration import CalibrationTable, frames_sha256

    work, _, _, res = run
    folder = work / "exports" / "b0-64x96"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the table names the frames relative to where the export ran
        frames, why = export_calibration_frames(folder, read_manifest(folder))
    table = CalibrationTable.load(folder / "calibration.minmax.json")
    assert frames is not None and len(frames) == 2 and frames_sha256(frames) == table.source_sha256
    assert "the export's calibration frames" in why
    for name in AVAILABLE:
        b = next(r for r in res["rows"] if r["target"] == name)["baseline"]
        if BASELINES[name].calibrated:
            assert b["calibration_frames"] == why and b["calibration_count"] == 2


def test_changed_calibration_frames_are_not_reused(run, tmp_path):
    from segedge.contract import read_manifest

    work, _, _, _ = run
    src = work / "exports" / "b0-64x96"
    folder = tmp_path / "export"
    folder.mkdir()
    man = read_manifest(src)
    table = json.loads((src / "calibration.minmax.json").read_text())
    copies = []
    for i, name in enumerate(table["frames"]):  # copies of the frames, then one of them changed
        copies.append(str(shutil.copy(work / name, tmp_path / f"frame{i}.png")))
    table["frames"] = copies
    (folder / "calibration.minmax.json").write_text(json.dumps(table))
    assert export_calibration_frames(folder, man)[0] is not None
    import cv2

    img = cv2.imread(copies[0])
    cv2.imwrite(copies[0], 255 - img)
    frames, why = export_calibration_frames(folder, man)
    assert frames is None and "changed since the export" in why
    # No usable frames and only the evaluated split to fall back on: one line naming the fix.
    from segedge.benchmarks.artifacts import CalibrationSource

    with pytest.raises(DataError, match="--calib FOLDER"):
        calibration_inputs(folder, man, CalibrationSource(None, "camvid val split (no train split)", False), 2)
    fallback = calibration_inputs(folder, man, CalibrationSource(str(tmp_path), "--calib frames", True), 2)
    assert len(fallback.frames) == 2 and "changed since the export" in fallback.notes[0]


def test_a_missing_library_skips_its_baselines_with_the_reason(work, monkeypatch):  # noqa: F811
    real = toolkits._import_problem
    missing: tuple[str, ...] = ("nncf",)

    def problem(module: str, title: str, hint: str) -> str | None:
        return f"{title} is not installed; {hint}" if module in missing else real(module, title, hint)

    monkeypatch.setattr(toolkits, "_import_problem", problem)
    if "ov-defaults" in AVAILABLE:  # NNCF alone missing: only its baseline goes
        assert list(skipped_baselines()) == ["nncf-defaults"]
        assert skipped_baselines()["nncf-defaults"].startswith("NNCF is not installed")
    missing = ("openvino", "nncf")
    skipped = skipped_baselines()
    assert set(skipped) == {"ov-defaults", "nncf-defaults"} and "OpenVINO is not installed" in skipped["ov-defaults"]
    if "ort-defaults" not in AVAILABLE:
        pytest.skip("onnxruntime is missing here: no baseline left to run")
    code, out, err = _bench(work, "--weights", "b0.safetensors", "--targets", "torch,onnx", "--no-memory",
                            "--no-plots", "--baselines", "--out", "bl-missing")
    assert code == 0, err
    res = json.loads((work / "bl-missing" / "results.json").read_text())
    assert [r["target"] for r in res["rows"]] == ["torch", "onnx", "ort-defaults", "ort-defaults (as trained)"]
    assert res["settings"]["baselines"]["skipped"] == skipped
    notes = "\n".join(res["notes"])
    assert "baseline nncf-defaults skipped: OpenVINO is not installed" in notes  # it needs OpenVINO first
    md = (work / "bl-missing" / "results.md").read_text()
    assert "- ov-defaults: skipped (OpenVINO is not installed" in md


def test_baselines_need_an_export_target_to_compare(work, tmp_path):  # noqa: F811
    line = _one_line_error(*_bench(work, "--weights", "b0.safetensors", "--targets", "torch", "--baselines",
                                   "--out", str(tmp_path / "o")), "--baselines", "--targets")
    assert "onnx" in line


def test_baseline_memory_is_probed_in_a_fresh_process_with_the_library_defaults(run):
    """The memory probe reopens a baseline's file as the bench opened it (OpenVINO defaults on the FP32 ONNX here) in
    its own process and predicts a frame through the export's contract: peak RSS above the import baseline."""
    from segedge.benchmarks.memprobe import _run_one

    work, _, _, res = run
    rows = {r["target"]: r for r in res["rows"]}
    onnx_file = work / rows["onnx"]["artifact"]
    manifest = json.loads((onnx_file.parent / "manifest.json").read_text())
    frame = sorted((work / "data" / "val").iterdir())[0]
    runtime, file = ("openvino", onnx_file) if "ov-defaults" in AVAILABLE else ("onnxruntime", onnx_file)
    spec = {"target": "ov-defaults", "model": "b0", "input_size": list(rows["onnx"]["input_size"]), "threads": 1,
            "frame": str(frame), "iters": 1, "runtime_modules": [runtime],
            "baseline": {"runtime": runtime, "file": str(file)}, "contract": manifest}
    got = _run_one(spec, timeout=120)
    assert "error" not in got, got
    assert got["peak_rss_bytes"] >= got["baseline_rss_bytes"] > 0 and got["model_rss_bytes"] > 0
    assert got["pid"] > 0 and got["iters"] == 1
