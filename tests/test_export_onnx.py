"""FP32 ONNX export: parity with PyTorch, opsets, dynamic shapes, raw io, manifest, failures that leave nothing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from segedge.errors import CheckpointError, ExportError, SegedgeError
from segedge.export import ExportOptions, default_out_dir, export_model
from segedge.export import verify as verify_mod
from segedge.export.calibration import DEFAULT_CALIB_DIR
from segedge.contract import read_onnx_metadata

MODEL_KEYS = ("format", "segedge_version", "model", "family", "weights", "num_classes", "class_names", "input",
              "output", "opset", "exporter", "graph_sha256", "tool_versions", "created")
from segedge.io import sha256_file
from segedge.models import create_model, save_checkpoint
from segedge.runtime.preprocess import preprocess, to_raw_input

CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]
SIZE = (128, 128)


def _checkpoint(tmp: Path, name: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model(name, num_classes=len(CAMVID))
    return save_checkpoint(model, tmp / f"{name}.safetensors",
                           {"model": name, "num_classes": len(CAMVID), "class_names": CAMVID, "input_size": list(SIZE)})


def _frames(n: int = 3) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in sorted(DEFAULT_CALIB_DIR.glob("*.jpg"))[:n]]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _torch_logits(ckpt: Path, name: str, x: np.ndarray) -> np.ndarray:
    model = create_model(name, weights=ckpt).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _assert_parity(got: np.ndarray, ref: np.ndarray) -> None:
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-3 + 1e-4 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ckpt")
    return {n: _checkpoint(tmp, n) for n in ("b0", "topformer-t")}


@pytest.fixture(scope="module")
def b0_export(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A static b0 FP32 export made through the CLI (its printed report is returned too)."""
    from typer.testing import CliRunner

    from segedge.cli import app

    out = tmp_path_factory.mktemp("exp") / "b0"
    res = CliRunner().invoke(app, ["export", "--model", "b0", "--weights", str(ckpts["b0"]), "--target", "onnx",
                                   "--input-size", "128x128", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_b0_round_trip_matches_pytorch(b0_export: tuple[Path, str], ckpts: dict[str, Path]) -> None:
    out, report = b0_export
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")), full_check=True)
    sess = _session(out / "model.onnx")
    for f in _frames():
        x = preprocess(f, SIZE, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
        _assert_parity(sess.run(None, {"input": x})[0], _torch_logits(ckpts["b0"], "b0", x))
    assert "max|Δ|" in report and "argmax agree" in report and "model.onnx" in report


def test_topformer_round_trip_with_default_weights(ckpts: dict[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import segedge.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "default_weights", lambda name: ckpts["topformer-t"])
    res = export_model(ExportOptions("topformer-t", targets="onnx", input_size="128x128", out=tmp_path / "tf"))
    assert any("embedded demo checkpoint" in n for n in res.notes)
    assert res.manifest["weights"]["embedded"] is True
    sess = _session(res.artifacts["onnx"])
    x = preprocess(_frames(1)[0], SIZE, res.manifest["input"]["mean"], res.manifest["input"]["std"])
    got = sess.run(None, {"input": x})[0]
    assert got.shape == (1, len(CAMVID), 16, 16)  # TopFormer: logits at 1/8
    _assert_parity(got, _torch_logits(ckpts["topformer-t"], "topformer-t", x))


def test_missing_default_weights_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import segedge.export.pipeline as pipeline

    monkeypatch.setattr(pipeline, "default_weights", lambda name: None)
    with pytest.raises(CheckpointError, match="pass --weights"):
        export_model(ExportOptions("b0", out=tmp_path / "x"))


def test_opset16_decomposes_layernorm_and_17_keeps_the_op(b0_export: tuple[Path, str], ckpts: dict[str, Path],
                                                           tmp_path: Path) -> None:
    m17 = onnx.load(str(b0_export[0] / "model.onnx"))
    res = export_model(ExportOptions("b0", weights=ckpts["b0"], input_size=SIZE, opset=16, out=tmp_path / "o16"))
    m16 = onnx.load(str(res.artifacts["onnx"]))
    ops17, ops16 = {n.op_type for n in m17.graph.node}, {n.op_type for n in m16.graph.node}
    assert "LayerNormalization" in ops17 and "LayerNormalization" not in ops16
    assert {"ReduceMean", "Sqrt", "Pow"} <= ops16
    assert res.manifest["opset"] == 16 and res.manifest["targets"]["onnx"]["opset"] == 16
    assert [i.version for i in m16.opset_import if i.domain in ("", "ai.onnx")] == [16]
    x = preprocess(_frames(1)[0], SIZE, res.manifest["input"]["mean"], res.manifest["input"]["std"])
    _assert_parity(_session(res.artifacts["onnx"]).run(None, {"input": x})[0], _torch_logits(ckpts["b0"], "b0", x))


def test_dynamic_b0_runs_batches_and_sizes(ckpts: dict[str, Path], tmp_path: Path) -> None:
    res = export_model(ExportOptions("b0", weights=ckpts["b0"], input_size=SIZE, dynamic=True, out=tmp_path / "dyn"))
    assert res.manifest["input"]["dynamic"] == {"batch": True, "height": True, "width": True}
    sess = _session(res.artifacts["onnx"])
    f = _frames(2)
    mean, std = res.manifest["input"]["mean"], res.manifest["input"]["std"]
    for size in (SIZE, (160, 224)):
        for batch in (1, 2):
            x = np.concatenate([preprocess(f[i], size, mean, std) for i in range(batch)])
            got = sess.run(None, {"input": x})[0]
            assert got.shape == (batch, len(CAMVID), size[0] // 4, size[1] // 4)
            _assert_parity(got, _torch_logits(ckpts["b0"], "b0", x))


def test_topformer_dynamic_hw_is_refused_but_dynamic_batch_works(ckpts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--dynamic-batch"):
        export_model(ExportOptions("topformer-t", weights=ckpts["topformer-t"], input_size=SIZE, dynamic=True,
                                   out=tmp_path / "no"))
    assert not (tmp_path / "no").exists()
    res = export_model(ExportOptions("topformer-t", weights=ckpts["topformer-t"], input_size=SIZE,
                                     dynamic_batch=True, out=tmp_path / "db"))
    x = np.concatenate([preprocess(f, SIZE, res.manifest["input"]["mean"], res.manifest["input"]["std"])
                        for f in _frames(3)])
    _assert_parity(_session(res.artifacts["onnx"]).run(None, {"input": x})[0],
                   _torch_logits(ckpts["topformer-t"], "topformer-t", x))


def test_raw_io_bakes_preprocessing_and_argmax(ckpts: dict[str, Path], tmp_path: Path) -> None:
    res = export_model(ExportOptions("b0", weights=ckpts["b0"], input_size=SIZE, io="raw", upsample=True,
                                     out=tmp_path / "raw"))
    inp, outp = res.manifest["input"], res.manifest["output"]
    assert (inp["layout"], inp["dtype"], inp["color_order"], inp["io"]) == ("NHWC", "uint8", "BGR", "raw")
    assert (outp["kind"], outp["stride"], outp["size"]) == ("labels", 1, list(SIZE))
    assert default_out_dir("b0", SIZE, io="raw").name == "b0-128x128-raw"
    sess = _session(res.artifacts["onnx"])
    model = create_model("b0", weights=ckpts["b0"]).eval()
    for f in _frames(2):
        labels = sess.run(None, {"frames": to_raw_input(f, SIZE)})[0]
        assert labels.dtype == np.uint8 and labels.shape == (1,) + SIZE
        x = torch.from_numpy(preprocess(f, SIZE, inp["mean"], inp["std"]))
        with torch.no_grad():
            ref = torch.nn.functional.interpolate(model(x), size=SIZE, mode="bilinear", align_corners=False)
        assert (labels == ref.argmax(1).numpy()).mean() >= 0.999


def test_manifest_keys_hashes_and_metadata_props(b0_export: tuple[Path, str], ckpts: dict[str, Path]) -> None:
    out = b0_export[0]
    man = json.loads((out / "manifest.json").read_text())
    assert set(MODEL_KEYS) <= set(man)
    assert man["model"] == "b0" and man["family"] == "segformer" and man["num_classes"] == len(CAMVID)
    assert man["class_names"] == CAMVID and man["opset"] == 17
    assert man["weights"]["sha256"] == sha256_file(ckpts["b0"]) and man["weights"]["format"] == "segedge"
    assert {"height", "width", "layout", "color_order", "mean", "std", "io", "dtype"} <= set(man["input"])
    assert (man["output"]["kind"], man["output"]["stride"], man["output"]["size"]) == ("logits", 4, [32, 32])
    entry = man["targets"]["onnx"]
    assert entry["file"] == "model.onnx" and entry["precision"] == "fp32"
    assert entry["sha256"] == sha256_file(out / "model.onnx")
    v = entry["verification"]
    assert v["max_abs_diff"] < 1e-3 and v["argmax_agreement"] >= 0.999 and v["pixels"] > 0
    meta = read_onnx_metadata(out / "model.onnx")
    for k in MODEL_KEYS:
        assert meta[k] == man[k], k
    assert meta["target"] == "onnx" and meta["precision"] == "fp32" and meta["verification"] == v


def test_tolerance_failure_leaves_no_artifact(ckpts: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(verify_mod.TOLERANCE, "atol", 0.0)
    monkeypatch.setitem(verify_mod.TOLERANCE, "rtol", 0.0)
    out = tmp_path / "tol"
    with pytest.raises(ExportError, match="does not match PyTorch") as e:
        export_model(ExportOptions("topformer-t", weights=ckpts["topformer-t"], input_size=SIZE, verify_frames=1,
                                   out=out))
    assert "\n" not in str(e.value)
    assert not out.exists()  # no model.onnx, no manifest.json, no staging leftovers, not even the empty folder


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_export_leaves_nothing_that_looks_valid(ckpts: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    import segedge.export.quantize as quantize_mod

    calls = []

    def explode(*a: object, **k: object) -> None:
        calls.append(sorted(p.name for p in Path(k["work_dir"]).parent.iterdir()))
        raise exc

    monkeypatch.setattr(quantize_mod, "quantize", explode)  # after model.onnx is staged and calibration ran
    out = tmp_path / "int"
    with pytest.raises(type(exc)):
        export_model(ExportOptions("topformer-t", weights=ckpts["topformer-t"], targets="onnx,ort-int8",
                                   input_size=SIZE, calib_count=2, verify_frames=1, out=out))
    # proof the export got past calibration and staged model.onnx before failing
    assert {"calibration.minmax.json", "model.onnx"} <= set(calls[0])
    assert not out.exists()  # nothing that looks like an export, not even the folder
    assert [p.name for p in tmp_path.iterdir()] == []  # and no staging folder beside it


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(model="b0", input_size="100x100"), SegedgeError, "multiples of 32"),
    (dict(model="topformer-t", input_size="96x128"), SegedgeError, "multiples of 64"),
    (dict(model="b0", input_size="abc"), SegedgeError, "cannot parse input size"),
    (dict(model="b0", targets="onnx,tensorrt-magic"), SegedgeError, "unknown export target"),
    (dict(model="b0", targets="ort-int8", calib_method="kl"), SegedgeError, "calibration method"),
    (dict(model="b0", opset=11), ExportError, "opset 11"),
    (dict(model="b0", upsample=True), SegedgeError, "--upsample applies to --io raw"),
    (dict(model="b0", io="yuv"), SegedgeError, "--io must be"),
    (dict(model="b0", targets="ort-int8", target_options={"ort_scope": "everything"}), SegedgeError,
     "--ort-scope must be one of"),
    (dict(model="b0", targets="onnx", target_options={"ort_scope": "conv"}), SegedgeError,
     "--ort-scope applies to --target ort-int8 only"),
])
def test_bad_options_are_one_line_errors(ckpts: dict[str, Path], tmp_path: Path, kwargs: dict, err: type,
                                         match: str) -> None:
    kwargs = {"weights": ckpts[kwargs["model"]], "out": tmp_path / "o", **kwargs}
    with pytest.raises(err, match=match) as e:
        export_model(ExportOptions(**kwargs))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "o" / "model.onnx").exists()


def test_unwritable_output_folder(ckpts: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")  # works as root too, unlike chmod
    with pytest.raises(ExportError, match="cannot write beside output folder"):
        export_model(ExportOptions("b0", weights=ckpts["b0"], input_size=SIZE, out=blocker / "sub"))


@pytest.mark.parametrize("args, match", [
    (["--input-size", "96x128", "--model", "topformer-t"], "multiples of 64"),
    (["--input-size", "384x", "--model", "b0"], "cannot parse input size"),
    (["--model", "b0", "--target", "ort-int8", "--calib", "{empty}"], "is empty"),
    (["--model", "b0", "--out", "{file}/sub"], "cannot write beside output folder"),
    (["--model", "b0", "--opset", "9"], "opset 9"),
])
def test_cli_errors_are_one_line_and_nonzero(ckpts: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                             args: list[str], match: str) -> None:
    from segedge.cli import main

    monkeypatch.chdir(tmp_path)  # the default exports/ folder must land here, never in the repository
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    args = [a.format(empty=tmp_path / "empty", file=tmp_path / "file") for a in args]
    model = args[args.index("--model") + 1]
    with pytest.raises(SystemExit) as e:
        main(["export", "--weights", str(ckpts[model]), "--input-size", "128x128", *args])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and match in err[-1]
    assert not any("Traceback" in line for line in err)
    # exactly one error line; anything before it is the export's own progress log (console.log lines)
    assert sum(line.startswith("error:") for line in err) == 1
    others = [ln for ln in err[:-1] if ln.strip()]
    assert all(any(w in ln for w in ("loading", "reading", "exporting", "checking", "building", "pre-processing",
                                      "computing", "quantizing", "writing")) for ln in others), others
    assert not (tmp_path / "exports").exists() or not any((tmp_path / "exports").rglob("*.onnx"))


def test_folded_and_as_trained_graphs_both_match_pytorch(b0_export: tuple[Path, str], ckpts: dict[str, Path],
                                                         tmp_path: Path) -> None:
    from collections import Counter

    from segedge.contract import Manifest
    from segedge.export.pipeline import recorded_fold

    out, _ = b0_export  # exported with the default: the inference form
    plain = export_model(ExportOptions("b0", weights=ckpts["b0"], targets="onnx", input_size=SIZE, fold=False,
                                       out=tmp_path / "plain")).out_dir
    folded_m, plain_m = Manifest.read(out), Manifest.read(plain)
    assert folded_m.contract.graph_form == {"form": "inference", "folded": ["decode_head"]}
    assert plain_m.contract.graph_form == {"form": "as-trained", "folded": []}
    assert folded_m.contract.graph_sha256 != plain_m.contract.graph_sha256
    ops = {k: Counter(n.op_type for n in onnx.load(str(d / "model.onnx")).graph.node) for k, d in
           (("folded", out), ("plain", plain))}
    assert ops["plain"]["Concat"] > ops["folded"].get("Concat", 0)  # the decoder's 4·dim concat is gone
    for d in (out, plain):
        sess = _session(d / "model.onnx")
        for f in _frames(2):
            x = preprocess(f, SIZE, (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
            _assert_parity(sess.run(None, {"input": x})[0], _torch_logits(ckpts["b0"], "b0", x))
    # re-exports keep a folder's graph: an older manifest (no graph_form) was traced as trained
    assert recorded_fold(folded_m.contract) and not recorded_fold(plain_m.contract)
    folded_m.contract.graph_form = None
    assert not recorded_fold(folded_m.contract) and recorded_fold(None)
