"""OpenVINO targets (openvino, openvino-int8) and the OpenVINO runtime backend: files, manifest, parity with PyTorch
and with the ONNX Segmenter, precision hint, rt_info, staging on failure, stale companion files."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from conftest import synthetic_scene  # noqa: E402

from segedge.errors import ExportError, SegedgeError  # noqa: E402
from segedge.export import ExportOptions, export_model  # noqa: E402
from segedge.export.calibration import DEFAULT_CALIB_DIR  # noqa: E402
from segedge.io import sha256_file  # noqa: E402
from segedge.models import create_model, save_checkpoint  # noqa: E402
from segedge.runtime import Segmenter  # noqa: E402

CLASSES = ["sky", "road", "car", "tree"]
SIZES = {"b0": (64, 64), "topformer-t": (128, 128)}
N_CALIB = 4
OV_FILES = ("model.xml", "model.bin", "model.int8.xml", "model.int8.bin")


def _street(i: int = 0) -> np.ndarray:
    return cv2.imread(str(sorted(DEFAULT_CALIB_DIR.glob("*.jpg"))[i]))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ov")
    rng = np.random.default_rng(0)
    frames = tmp / "frames"
    frames.mkdir()
    for i in range(N_CALIB):
        cv2.imwrite(str(frames / f"f{i}.png"), synthetic_scene(rng, 96, 128, 4)[0])
    out = {"tmp": tmp, "frames": frames}
    for name, size in SIZES.items():
        torch.manual_seed(0)
        out[name] = save_checkpoint(create_model(name, num_classes=len(CLASSES)), tmp / f"{name}.safetensors",
                                    {"model": name, "num_classes": len(CLASSES), "class_names": CLASSES,
                                     "input_size": list(size)})
    return out


@pytest.fixture(scope="module")
def exports(setup: dict[str, Path]) -> dict[str, Path]:
    """b0 through the API with --val pairs, TopFormer-T through the CLI (--ov-precision f32, --json: NNCF's logs and
    progress bars must not leak into stdout)."""
    from typer.testing import CliRunner

    from segedge.cli import app

    rng = np.random.default_rng(1)
    val = [synthetic_scene(rng, 64, 80, 4) for _ in range(2)]
    b0 = export_model(ExportOptions("b0", weights=setup["b0"], targets="openvino,openvino-int8",
                                    input_size=SIZES["b0"], calib=setup["frames"], calib_count=N_CALIB,
                                    verify_frames=2, val=val, out=setup["tmp"] / "b0",
                                    target_options={"ov_precision": "f32"})).out_dir
    tf = setup["tmp"] / "topformer-t"
    res = CliRunner().invoke(app, ["export", "-m", "topformer-t", "--weights", str(setup["topformer-t"]),
                                   "--target", "openvino,openvino-int8", "--input-size", "128x128", "--calib",
                                   str(setup["frames"]), "--calib-count", str(N_CALIB), "--ov-precision", "f32",
                                   "--out", str(tf), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["targets"]["openvino-int8"]["calibration"]["method"] == "nncf-ptq"
    return {"b0": b0, "topformer-t": tf}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("name", list(SIZES))
def test_files_and_manifest_entries(exports: dict[str, Path], setup: dict[str, Path], name: str) -> None:
    out = exports[name]
    assert {"model.onnx", "manifest.json", *OV_FILES} <= {p.name for p in out.iterdir()}
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    targets = _manifest(out)["targets"]
    assert set(targets) == {"onnx", "openvino", "openvino-int8"}
    fp, i8 = targets["openvino"], targets["openvino-int8"]
    for e, file, precision in ((fp, "model.xml", "fp32"), (i8, "model.int8.xml", "int8")):
        assert e["file"] == file and e["precision"] == precision and e["runtime"] == "openvino"
        assert e["inference_precision_hint"] == "f32" and e["openvino_version"]
        assert e["sha256"] == sha256_file(out / file)
        bin_name = file.replace(".xml", ".bin")
        assert e["companion_files"][bin_name]["sha256"] == sha256_file(out / bin_name)
        v = e["verification"]
        assert v["reference"] == "pytorch" and v["inference_precision"] == "f32"
        assert {"max_abs_diff", "argmax_agreement", "pixels"} <= set(v)
    assert fp["compress_to_fp16"] is False
    assert fp["verification"]["max_abs_diff"] < 1e-3 and fp["verification"]["argmax_agreement"] > 0.99
    assert i8["nncf_version"] and i8["verification"]["argmax_agreement"] > 0.8  # random weights: a loose bar
    cal = i8["calibration"]
    assert cal["count"] == N_CALIB and cal["source"] == str(setup["frames"]) and cal["source_kind"] == "folder"
    q = i8["quantization"]
    assert q["fake_quantize_nodes"] > 0 and q["subset_size"] == N_CALIB
    assert q["model_type"] == ("transformer" if name == "b0" else None)
    assert q["preset"] == ("mixed" if name == "b0" else "performance")
    if name == "b0":  # the stage-1 spatial-reduction convs stay float (measured: they carry the INT8 loss)
        assert q["kept_float_nodes"] == [f"/backbone/block1.{i}/attn/sr/Conv/WithoutBiases" for i in (0, 1)]
    else:  # TopFormer's family float group tpm.s1 (stem + token-pyramid layers 1-3), as in the ONNX targets
        assert q["kept_float_nodes"] and all(n.startswith(("/backbone/tpm/stem", "/backbone/tpm/layer"))
                                             for n in q["kept_float_nodes"])
    import openvino as ov

    ops = {op.get_friendly_name(): op for op in ov.Core().read_model(str(out / "model.int8.xml")).get_ops()}
    for n in q["kept_float_nodes"]:  # no FakeQuantize on its activation input
        src = ops[n].input_value(0).get_node()
        assert src.get_type_name() != "FakeQuantize", n
    # INT8 weights really are stored as 8-bit: the .bin shrinks well below the FP32 one.
    assert (out / "model.int8.bin").stat().st_size < 0.5 * (out / "model.bin").stat().st_size


def test_val_miou_is_recorded_for_openvino_targets(exports: dict[str, Path]) -> None:
    targets = _manifest(exports["b0"])["targets"]
    for t in ("openvino", "openvino-int8"):
        val = targets[t]["verification"]["val"]
        assert val["frames"] == 2 and val["pytorch_miou"] is not None and "miou" in val
    assert targets["openvino"]["verification"]["val"]["miou"] == pytest.approx(
        targets["onnx"]["verification"]["val"]["miou"], abs=1e-6)


@pytest.mark.parametrize("name", list(SIZES))
def test_ir_matches_pytorch_and_onnx_segmenter(exports: dict[str, Path], setup: dict[str, Path], name: str) -> None:
    out, f = exports[name], _street(1)
    ref = Segmenter.load(setup[name], input_size=SIZES[name], postprocess="exact")
    onnx_seg = Segmenter.load(out, target="onnx", postprocess="exact")
    from_folder = Segmenter.load(out, target="openvino", postprocess="exact")
    from_file = Segmenter.load(out / "model.xml", postprocess="exact")
    for seg in (from_folder, from_file):
        assert seg.backend.name == "openvino" and seg.info.target == "openvino" and seg.info.precision == "fp32"
        d = seg.backend.describe()
        assert d["inference_precision_hint"] == "f32" and d["inference_precision"] == "f32"
        assert d["precision_source"] == "manifest"
    lo, lr = from_folder.logits(f), ref.logits(f)
    assert np.abs(lo - lr).max() < 1e-3
    assert (lo.argmax(0) == lr.argmax(0)).mean() > 0.99
    a, b, c = onnx_seg.predict(f), from_folder.predict(f), from_file.predict(f)
    assert b.shape == f.shape[:2] and b.dtype == np.uint8
    assert np.array_equal(b, c) and (a == b).mean() >= 0.99
    int8 = Segmenter.load(out, target="openvino-int8")
    assert int8.info.precision == "int8"
    labels = int8.predict(f)
    assert labels.shape == f.shape[:2] and labels.dtype == np.uint8 and labels.max() < len(CLASSES)
    assert (labels == onnx_seg.predict(f)).mean() > 0.8


def test_lone_xml_reads_rt_info_and_precision_threads_options(exports: dict[str, Path], tmp_path: Path) -> None:
    for f in ("model.int8.xml", "model.int8.bin"):
        shutil.copy(exports["topformer-t"] / f, tmp_path / f)
    seg = Segmenter.load(tmp_path / "model.int8.xml")  # no manifest.json next to it: the IR's rt_info describes it
    assert seg.info.source == "metadata" and seg.info.target == "openvino-int8" and seg.info.precision == "int8"
    assert seg.class_names == CLASSES and seg.input_size == SIZES["topformer-t"]
    assert seg.backend.describe()["precision_source"] == "rt_info"
    bf = Segmenter.load(tmp_path / "model.int8.xml", precision="bf16", threads=1)
    d = bf.backend.describe()
    assert d["inference_precision_hint"] == "bf16" and d["precision_source"] == "option"
    assert d["threads"] == 1 and d["num_threads"] == 1 and d["performance_hint"] == "LATENCY"
    assert bf.predict(_street()).shape == _street().shape[:2]
    with pytest.raises(SegedgeError, match="unknown OpenVINO precision"):
        Segmenter.load(tmp_path / "model.int8.xml", precision="int4")
    (tmp_path / "model.int8.bin").unlink()
    with pytest.raises(SegedgeError, match="needs its weights file model.int8.bin"):
        Segmenter.load(tmp_path / "model.int8.xml")


def test_failed_quantization_commits_nothing(setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import nncf

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("calibration exploded\nlong NNCF traceback text")

    monkeypatch.setattr(nncf, "quantize", boom)
    out = setup["tmp"] / "failed"
    with pytest.raises(ExportError) as info:
        export_model(ExportOptions("topformer-t", weights=setup["topformer-t"], targets="openvino,openvino-int8",
                                   input_size=SIZES["topformer-t"], calib=setup["frames"], calib_count=N_CALIB,
                                   verify_frames=1, out=out))
    msg = str(info.value)
    assert "calibration exploded" in msg and "\n" not in msg and "openvino-int8" in msg
    # openvino was built (staged) before openvino-int8 failed: neither may appear, nor a manifest or staging folder.
    assert not out.exists() or not any(out.iterdir())


def test_stale_or_tampered_companion_files_are_not_carried_over(exports: dict[str, Path], setup: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "tf"
    shutil.copytree(exports["topformer-t"], out)
    with open(out / "model.bin", "ab") as fh:  # model.xml untouched, its weights file changed
        fh.write(b"\0")
    res = export_model(ExportOptions("topformer-t", weights=setup["topformer-t"], targets="onnx",
                                     input_size=SIZES["topformer-t"], calib=setup["frames"], verify_frames=1, out=out))
    assert set(res.manifest["targets"]) == {"onnx", "openvino-int8"}  # same graph: the intact INT8 IR stays
    names = {p.name for p in out.iterdir()}
    assert "model.xml" not in names and "model.bin" not in names
    assert {"model.int8.xml", "model.int8.bin"} <= names


def test_missing_packages_and_bad_options_are_one_line_errors(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from segedge.cli import app
    from segedge.export.targets import resolve_targets
    from segedge.runtime.backends.openvino import OpenVINOBackend

    help_text = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "200"}).output
    assert "openvino-int8" in help_text and "--ov-precision" in help_text
    with pytest.raises(SegedgeError, match="--ov-precision"):
        export_model(ExportOptions("b0", targets="openvino", target_options={"ov_precision": "int8"},
                                   out=tmp_path / "x"))
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(SegedgeError, match=r"openvino-int8.*pip install 'segedge\[openvino\]'"):
        resolve_targets("openvino-int8")
    assert [t.name for t in resolve_targets("openvino")] == ["onnx", "openvino"]
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert "segedge[openvino]" in (OpenVINOBackend.unavailable() or "")
    with pytest.raises(SegedgeError, match=r"target 'openvino' cannot be built here"):
        resolve_targets("openvino")


def test_auto_precision_hint_is_measured_and_recorded(setup: dict[str, Path]) -> None:
    """--ov-precision auto (the default): every hint the CPU supports is checked and timed; the entry records the
    figures and the choice, and the runtime uses the chosen hint."""
    from segedge.tune.candidates import openvino_hints
    from segedge.tune.hints import pick_hint

    out = export_model(ExportOptions("topformer-t", weights=setup["topformer-t"], targets="openvino",
                                     input_size=SIZES["topformer-t"], calib=setup["frames"], verify_frames=1,
                                     out=setup["tmp"] / "auto")).out_dir
    e = _manifest(out)["targets"]["openvino"]
    choice = e["precision_choice"]
    assert choice["mode"] == "auto" and e["inference_precision_hint"] == choice["chosen"]
    assert e["verification"]["inference_precision_hint"] == choice["chosen"]
    hints = openvino_hints()
    if len(hints) > 1:  # a hint probed at over 2× f32 is dropped before its check (recorded with its probe)
        assert set(choice["candidates"]) | set(choice.get("dropped", {})) == set(hints)
        assert pick_hint(choice["candidates"])[0] == choice["chosen"]  # the recorded figures give the recorded choice
    else:
        assert choice["chosen"] == "f32"
    d = Segmenter.load(out, target="openvino").backend.describe()
    assert d["inference_precision_hint"] == choice["chosen"] and d["precision_source"] == "manifest"


def test_a_hint_far_slower_than_f32_is_dropped_before_its_check(setup: dict[str, Path],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Dispatch only (the probe's real path runs in the test above): a hint whose probe is over 2× f32's is neither
    checked nor timed, and the choice says why."""
    import segedge.tune.measure as measure
    from segedge.tune.candidates import openvino_hints

    hints = openvino_hints()
    if len(hints) < 2:
        pytest.skip("the CPU plugin reports only f32 here: nothing to drop")
    slow = hints[-1]
    calls = iter(range(100))
    # probes run in hint order (f32 first): f32 1 ms, the last hint 10 ms, any other 1.5 ms
    fake = {h: 10.0 if h == slow else 1.0 if h == "f32" else 1.5 for h in hints}
    monkeypatch.setattr(measure, "probe_call", lambda run, calls_=3: fake[hints[next(calls)]])
    out = export_model(ExportOptions("topformer-t", weights=setup["topformer-t"], targets="openvino",
                                     input_size=SIZES["topformer-t"], calib=setup["frames"], verify_frames=1,
                                     out=setup["tmp"] / "auto-drop")).out_dir
    choice = _manifest(out)["targets"]["openvino"]["precision_choice"]
    assert list(choice["dropped"]) == [slow] and "probe 10.0 ms > 2× the fastest FP32-exact probe (f32, 1.0 ms)" in \
        choice["dropped"][slow]
    assert slow not in choice["candidates"] and "f32" in choice["candidates"] and choice["chosen"] != slow


def test_throughput_hint_overlaps_requests_with_the_same_outputs(exports: dict[str, Path], tmp_path: Path) -> None:
    from segedge.video import run_stream

    folder = exports["b0"]
    frames = [_street(i % 4) for i in range(5)]
    with Segmenter.load(folder, target="openvino") as lat, \
            Segmenter.load(folder, target="openvino", performance_hint="throughput") as thr:
        n = thr.backend.parallel_requests
        assert lat.backend.parallel_requests == 1 and n >= 1
        assert thr.backend.describe()["parallel_requests"] == n
        batches = [thr.prepare(f) for f in frames[:n]]
        jobs = [thr.submit(b) for b in batches]
        if n > 1:  # no request left: one line, not a hang or a silently shared request
            with pytest.raises(SegedgeError, match="already in flight"):
                thr.backend.submit(batches[0])
        outs = [j.wait() for j in reversed(jobs)][::-1]  # collected in any order
        for b, o in zip(batches, outs):
            np.testing.assert_allclose(o, lat.infer(b), rtol=1e-4, atol=1e-4)
        uri = "synthetic://?width=80&height=64&fps=0&frames=6"
        a = [r.labels for r in run_stream(lat, uri, drop_policy="all")]
        b = [r.labels for r in run_stream(thr, uri, drop_policy="all")]
        assert len(a) == len(b) == 6 and np.mean([(x == y).mean() for x, y in zip(a, b)]) > 0.999
    with pytest.raises(SegedgeError, match="unknown OpenVINO performance hint 'fastest'"):
        Segmenter.load(folder, target="openvino", performance_hint="fastest")


@pytest.mark.parametrize("name", list(SIZES))
def test_frames_are_normalised_in_the_graph_with_the_same_logits(exports: dict[str, Path], name: str) -> None:
    """Segmenter.load gives OpenVINO the contract's mean/std/colour order: `prepare` only resizes (uint8 NHWC BGR) and
    the PrePostProcessor does the rest in the graph; logits match the NumPy path, and float inputs still run."""
    out, f = exports[name], _street(2)
    framed = Segmenter.load(out, target="openvino", postprocess="exact")
    plain = Segmenter.load(out, target="openvino", postprocess="exact", frame_input=False)
    assert framed.backend.accepts_frames and not plain.backend.accepts_frames
    assert framed.backend.describe()["frame_input"] is True
    x = framed.prepare(f)
    h, w = SIZES[name]
    assert x.dtype == np.uint8 and x.shape == (1, h, w, 3) and plain.prepare(f).dtype == np.float32
    np.testing.assert_array_equal(x[0], cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR))  # BGR, resized only
    lf, lp = framed.logits(f), plain.logits(f)
    assert np.abs(lf - lp).max() < 1e-4 * max(1.0, float(np.abs(lp).max()))
    assert np.array_equal(framed.predict(f), plain.predict(f))
    y = plain.prepare(f)  # a float model input on the frame-input backend runs the plain compiled model
    np.testing.assert_array_equal(framed.backend.run(y), plain.backend.run(y))
    int8 = Segmenter.load(out, target="openvino-int8")
    assert int8.backend.accepts_frames
    agree = (int8.predict(f) == Segmenter.load(out, target="openvino-int8", frame_input=False).predict(f)).mean()
    assert agree > 0.99
    with pytest.raises(SegedgeError, match="model input must be uint8 1×"):
        framed.backend.run(np.zeros((1, h + 8, w, 3), np.uint8))  # a frame at the wrong size: one line
    with pytest.raises(SegedgeError, match="frame_input must be True or False"):
        Segmenter.load(out, target="openvino", frame_input="yes")
