"""CoreML targets (fp16, int8, w8a8): conversion of both demo models, MIL inspection of the saved packages, metadata
round trip, the std-folding equivalence, W8A8 calibration and its float islands, the compressed weights read back,
bad input as one line, and macOS prediction (`mac`).
An .mlpackage is a folder: the export pipeline and the runtime's file checks hash and size it as one artifact
(`segedge.io.sha256_path`), so a package survives re-exports and loads with verify on.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from conftest import slow_except

from segedge.contract import Manifest, ModelContract
from segedge.errors import ExportError, SegedgeError
from segedge.export import ExportOptions, export_model
from segedge.toolkits.coreml import TOOLKIT, check_compute_units, check_deployment_target, check_palettize

pytestmark = pytest.mark.skipif(TOOLKIT.unavailable() is not None, reason="coremltools is not installed")
REPO = Path(__file__).resolve().parent.parent
SIZE = (128, 128)
ON_MAC = sys.platform == "darwin"


def _export(out: Path, model: str, targets: str, **kw: Any) -> Manifest:
    export_model(ExportOptions(model, targets=targets, input_size=SIZE, verify_frames=2, out=out, **kw))
    return Manifest.read(out)


@pytest.fixture(scope="module")
def tt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """TopFormer-T, float io: coreml-fp16 + coreml-int8."""
    out = tmp_path_factory.mktemp("coreml") / "tt"
    return out, _export(out, "topformer-t", "coreml-fp16,coreml-int8")


@pytest.fixture(scope="module")
def b0_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """B0, raw io (BGR frames in, labels out): coreml-fp16 + coreml-int8 with 6-bit palettes."""
    out = tmp_path_factory.mktemp("coreml") / "b0"
    return out, _export(out, "b0", "coreml-fp16,coreml-int8", io="raw", target_options={"palettize": 6})


def _check_export(out: Path, man: Manifest, compressed_op: str) -> None:
    from segedge.export.coreml_convert import package_size, path_sha256
    from segedge.export.coreml_inspect import check_package, inspect_package

    c = man.contract
    fp16, int8 = man.targets["coreml-fp16"], man.targets["coreml-int8"]
    for entry, op in ((fp16, None), (int8, compressed_op)):
        pkg = out / entry.file
        assert pkg.is_dir() and (pkg / "Manifest.json").is_file()
        assert entry.get("package")["size_bytes"] == package_size(pkg)
        assert entry.sha256 == entry.get("package")["sha256"] == path_sha256(pkg)
        report = inspect_package(pkg, "iOS17")  # the saved package, read back from disk
        assert report["ops_newer_than_target"] == [] and report["contract_in_metadata"]
        assert report["inputs"] == [{"name": "image", "kind": "image", "shape": list(SIZE),
                                     "type": c.input.color_order}]
        assert ("conv" in report["op_histogram"]) and report["op_histogram"].get("cast", 0) <= 2
        if op is None:
            assert report["constexpr_ops"] == {}
        else:  # every compressed tensor is one constexpr op, and each was read back into the proxy
            assert report["constexpr_ops"] == {op: entry.quantization["compressed_tensors"]}
        v = entry.verification
        assert v["proxy"].startswith("PyTorch proxy") and v["argmax_agreement"] > 0.9
        assert entry.get("inspection")["op_count"] == report["op_count"]
    assert int8.get("package")["size_bytes"] < 0.7 * fp16.get("package")["size_bytes"]
    # the FP16 proxy is closer to FP32 than the compressed-weight proxy
    assert 0 < fp16.verification["max_abs_diff"] < int8.verification["max_abs_diff"]
    with pytest.raises(ExportError, match="should hold FP16 weights"):
        check_package(inspect_package(out / int8.file, "iOS17"), None, {"name": c.output.name})


def test_topformer_fp16_and_int8(tt: tuple[Path, Manifest]) -> None:
    out, man = tt
    _check_export(out, man, "constexpr_affine_dequantize")
    entry = man.targets["coreml-fp16"]
    assert entry.get("inspection")["outputs"] == [{"name": "logits", "kind": "tensor", "type": "float32",
                                                   "shape": [1, man.contract.num_classes, 16, 16]}]
    assert entry.get("coreml")["input"]["color_layout"] == "RGB" and entry.get("coreml")["shapes"] == "fixed"
    assert man.targets["coreml-int8"].quantization["weights"] == "int8"


@pytest.mark.slow
def test_b0_raw_io_palettized(b0_raw: tuple[Path, Manifest]) -> None:
    out, man = b0_raw
    _check_export(out, man, "constexpr_lut_to_dense")
    int8 = man.targets["coreml-int8"]
    assert int8.file == "model.pal6.mlpackage" and int8.precision == "pal6"
    assert int8.get("inspection")["outputs"][0] == {"name": "labels", "kind": "tensor", "type": "int32",
                                                    "shape": [1, 32, 32]}
    assert int8.get("inspection")["inputs"][0]["type"] == "BGR"
    assert int8.verification["label_output_agreement"] > 0.9


def test_metadata_round_trip(tt: tuple[Path, Manifest]) -> None:
    from segedge.runtime.backends.coreml import read_package_metadata

    out, man = tt
    for target in ("coreml-fp16", "coreml-int8"):
        meta = read_package_metadata(out / man.targets[target].file)
        assert meta["target"] == target and meta["file"] == man.targets[target].file
        back = ModelContract.from_dict(meta)
        assert set(back.extra) == {"coreml"}  # the package's own block rides along as an unknown key
        back.extra = {}
        assert back.to_dict() == man.contract.to_dict()
        assert meta["coreml"]["input"] == man.targets[target].get("coreml")["input"]
        assert meta["verification"]["proxy"] == man.targets[target].verification["proxy"]


def test_inspection_refuses_a_target_too_old(tt: tuple[Path, Manifest]) -> None:
    from segedge.export.coreml_inspect import check_package, inspect_package

    out, man = tt
    report = inspect_package(out / man.targets["coreml-int8"].file, "iOS15")
    assert "constexpr_affine_dequantize" in report["ops_newer_than_target"]
    with pytest.raises(ExportError, match="iOS15 cannot run"):
        check_package(report, "constexpr_affine_dequantize", {})


# -- coreml-w8a8 -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tt_w8a8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """TopFormer-T, float io: coreml-fp16 + coreml-w8a8 (calibrated on the packaged frames)."""
    out = tmp_path_factory.mktemp("coreml") / "tt-w8a8"
    return out, _export(out, "topformer-t", "coreml-fp16,coreml-w8a8")


@pytest.fixture(scope="module")
def b0_w8a8_raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """B0, raw io (BGR frames in, labels out): coreml-w8a8 alone."""
    out = tmp_path_factory.mktemp("coreml") / "b0-w8a8"
    return out, _export(out, "b0", "coreml-w8a8", io="raw")


def _check_w8a8(out: Path, man: Manifest) -> dict[str, Any]:
    """The saved W8A8 package holds quantize/dequantize ops and int8 weights; the entry says how it was made."""
    from segedge.export.coreml_inspect import check_package, inspect_package

    entry = man.targets["coreml-w8a8"]
    report = inspect_package(out / entry.file, "iOS17")
    q = report["activation_quant_ops"]
    assert q["quantize"] > 20 and q["dequantize"] >= q["quantize"]
    assert report["constexpr_ops"].get("constexpr_affine_dequantize", 0) > 20  # int8 weights
    assert report["ops_newer_than_target"] == [] and report["contract_in_metadata"]
    assert entry.precision == "w8a8" and entry.get("inspection")["activation_quant_ops"] == q
    quant, calib = entry.quantization, entry.calibration
    assert quant["observer"] == "min_max" and quant["quantized_layers"] > 20
    assert {"module": "model.decode_head." + ("conv_seg" if man.contract.family == "topformer" else "linear_pred"),
            "reason": "final classifier conv"} in quant["kept_float"]
    assert calib["frames"] >= 2 and len(calib["sha256"]) == 64
    assert entry.verification["proxy"].startswith("PyTorch proxy") and entry.verification["argmax_agreement"] > 0.85
    # quantize ops arrived with iOS 17: inspection for iOS 16 names them, and the check refuses the package
    old = inspect_package(out / entry.file, "iOS16")
    assert {"quantize", "dequantize"} <= set(old["ops_newer_than_target"])
    with pytest.raises(ExportError, match="iOS16 cannot run"):
        check_package(old, "constexpr_affine_dequantize", {}, activations=True)
    with pytest.raises(ExportError, match="should compute on float activations"):
        check_package(report, "constexpr_affine_dequantize", {})
    return report


@pytest.mark.slow
def test_topformer_w8a8(tt_w8a8: tuple[Path, Manifest]) -> None:
    from segedge.export.coreml_inspect import check_package, inspect_package
    from segedge.runtime.backends.coreml import read_package_metadata

    out, man = tt_w8a8
    report = _check_w8a8(out, man)
    fp16, w8a8 = man.targets["coreml-fp16"], man.targets["coreml-w8a8"]
    assert report["outputs"] == [{"name": "logits", "kind": "tensor", "type": "float32",
                                  "shape": [1, man.contract.num_classes, 16, 16]}]
    kept = {k["module"] for k in w8a8.quantization["kept_float"]}
    assert "model.backbone.tpm.stem.0.c" in kept and "model.backbone.tpm.layer3.conv.4.c" in kept  # tpm.s1
    assert not any(k.startswith("model.backbone.tpm.layer4.") for k in kept)
    assert w8a8.get("package")["size_bytes"] < 0.7 * fp16.get("package")["size_bytes"]
    assert 0 < fp16.verification["max_abs_diff"] < w8a8.verification["max_abs_diff"]
    with pytest.raises(ExportError, match="should quantize its activations"):
        check_package(inspect_package(out / fp16.file, "iOS17"), None, {}, activations=True)
    meta = read_package_metadata(out / w8a8.file)
    assert meta["target"] == "coreml-w8a8" and meta["calibration"] == w8a8.calibration


@pytest.mark.slow
def test_b0_w8a8_raw_io(b0_w8a8_raw: tuple[Path, Manifest]) -> None:
    out, man = b0_w8a8_raw
    report = _check_w8a8(out, man)
    assert report["outputs"] == [{"name": "labels", "kind": "tensor", "type": "int32", "shape": [1, 32, 32]}]
    assert report["inputs"][0]["type"] == "BGR"
    entry = man.targets["coreml-w8a8"]
    assert sum(k["reason"] == "LayerNorm" for k in entry.quantization["kept_float"]) == 30  # B0: 8 blocks × 2 + 14
    assert entry.verification["label_output_agreement"] > 0.85


def _tt_w8a8_inputs() -> tuple[Any, list[torch.Tensor], dict[str, str]]:
    """(TopFormer-T's converted module, three 64×64 image-space inputs, its float modules)."""
    from segedge.export.coreml_convert import prepare_module, to_image_space
    from segedge.export.coreml_w8a8 import float_modules

    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    pm, image, _ = prepare_module(_tt_model(), (123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB",
                                  labels=False, upsample=False, example=x[:1])
    return pm, [to_image_space(x[i:i + 1], image) for i in range(3)], float_modules(pm, "topformer", "topformer-t")


def test_w8a8_calibration_keeps_the_islands_float() -> None:
    """Calibration alone (no conversion): ranges come from the frames, kept modules stay float convs, and nothing
    inside the float block tpm.s1 reads a quantized activation (only the quantized conv after it does)."""
    from torch.ao.nn.quantized.reference import Conv2d as QConv2d

    from segedge.export.coreml_w8a8 import calibrate, image_batches

    pm, images, keep = _tt_w8a8_inputs()
    assert keep["model.decode_head.conv_seg"] == "final classifier conv"
    assert keep["model.backbone.tpm.stem.0.c"] == "family default float group tpm.s1"
    blocks = [n for n, why in keep.items() if why.endswith("activations included)")]
    assert blocks == ["model.backbone.tpm.stem"] + [f"model.backbone.tpm.layer{i}" for i in (1, 2, 3)]
    qmodel, summary = calibrate(pm, image_batches(images, 2), keep)
    mods = dict(qmodel.named_modules())
    assert all(type(mods[n]) is torch.nn.Conv2d for n in keep if n not in blocks)
    assert sum(isinstance(m, QConv2d) for m in mods.values()) == summary["quantized_layers"] > 20
    assert summary["activations"].startswith("uint8, affine")
    dequantized = {u.target for n in qmodel.graph.nodes if n.op == "call_method" and n.target == "dequantize"
                   for u in n.users if u.op == "call_module"}
    assert "model.backbone.tpm.layer4.conv.0.c" in dequantized  # the block's output, where a quantized conv reads it
    assert not [t for t in dequantized if t.startswith(tuple(b + "." for b in blocks))]
    with torch.no_grad():
        ref, got = pm.logits(images[0]), qmodel(images[0])
        loud = qmodel(images[0] * 8)  # far outside the calibrated ranges: clipped, so far from the float model
    assert 0 < float((got - ref).abs().max()) < 0.5 * float(ref.abs().max())
    assert float((got.argmax(1) == ref.argmax(1)).float().mean()) > 0.8
    with torch.no_grad():
        assert float((loud - pm.logits(images[0] * 8)).abs().max()) > float((got - ref).abs().max())
    assert not any(getattr(m, "export_mode", False) for m in pm.modules())  # the caller's module is untouched


def test_w8a8_refuses_a_leaky_float_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming only a block's convolutions float (the old config) lets coremltools quantize the activations between
    them: calibration refuses it in one line instead of exporting a silently quantized island."""
    from segedge.export import coreml_w8a8
    from segedge.export.coreml_w8a8 import calibrate, image_batches

    pm, images, keep = _tt_w8a8_inputs()
    config = coreml_w8a8._config
    monkeypatch.setattr(coreml_w8a8, "_config", lambda names, scheme: config(
        [n for n in names if not keep[n].endswith("activations included)")], scheme))
    with pytest.raises(ExportError, match=r"quantized modules meant to stay float \(model\.backbone\.tpm\.") as e:
        calibrate(pm, image_batches(images, 2), keep)
    assert "\n" not in str(e.value)


def test_w8a8_scheme_follows_the_family() -> None:
    """TopFormer calibrates affine activations, SegFormer symmetric ones (measured per family); a bad scheme is one
    line."""
    from segedge.export.coreml_convert import PackageModule
    from segedge.export.coreml_w8a8 import calibrate, scheme_for
    from segedge.models import create_model

    pm, images, keep = _tt_w8a8_inputs()
    b0 = PackageModule(create_model("b0", num_classes=4), "RGB", labels=False, upsample=False)
    assert (scheme_for(pm), scheme_for(b0)) == ("affine", "symmetric")
    with pytest.raises(ExportError, match="unknown W8A8 quantization scheme 'asym'; use one of affine, symmetric"):
        calibrate(pm, images, keep, scheme="asym")


@pytest.mark.slow
def test_w8a8_target_too_old_is_one_line(tmp_path: Path) -> None:
    proc = _cli(["export", "--model", "topformer-t", "--input-size", "128x128", "--target", "coreml-w8a8",
                 "--coreml-target", "iOS16", "--out", str(tmp_path / "x")])
    _one_line_failure(proc, "coreml-w8a8", "iOS17", "--coreml-target")
    assert not (tmp_path / "x").exists()


# -- the module that is converted -------------------------------------------------------------------------------
def _tt_model() -> torch.nn.Module:
    from segedge.models import create_model, default_weights

    return create_model("topformer-t", weights=default_weights("topformer-t")).eval()


@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_std_folding_is_exact(color: str) -> None:
    """ImageType's scalar scale + per-channel bias with the std folded into the stem == (p - mean) / std."""
    from segedge.export.coreml_convert import image_input, pixels_to_image_space, prepare_module
    from segedge.runtime.backends.coreml import input_pixels

    model = _tt_model()
    mean, std = (120.0, 110.0, 100.0), (20.0, 60.0, 90.0)  # far-apart stds: the fold is not close to 1
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    norm = ((rgb.astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    x = torch.from_numpy(np.ascontiguousarray(norm))
    pm, image, fold_diff = prepare_module(model, mean, std, color, labels=False, upsample=False, example=x)
    pixels = input_pixels(norm, False, mean, std, color)  # what the image input receives, in its layout
    assert np.array_equal(pixels, rgb[..., ::-1] if color == "BGR" else rgb)
    with torch.no_grad():
        ref = model(x)
        got = pm.logits(pixels_to_image_space(pixels, image))
        unfolded = model(pixels_to_image_space(rgb, image_input(mean, std, "RGB")))  # std not folded
    assert float((got - ref).abs().max()) < 1e-4 * float(ref.abs().max()) and fold_diff < 1e-3
    assert float((unfolded - ref).abs().max()) > 0.1  # the fold is what makes it exact
    assert image.scale == pytest.approx(1 / np.mean(std))


def test_batchnorm_folding_keeps_outputs() -> None:
    from segedge.export.coreml_convert import fold_batchnorm

    model = _tt_model()
    x = torch.randn(1, 3, 64, 64)
    import copy

    folded = copy.deepcopy(model)
    n = fold_batchnorm(folded)
    assert n > 20 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_fp16_rounding_rounds_every_op_output() -> None:
    from segedge.export.coreml_convert import fp16_rounding

    a = torch.tensor([1.0 + 2 ** -12])  # not representable in FP16 (10 mantissa bits)
    with fp16_rounding():
        b = a * 1.0
    assert float(b) == 1.0 and float(a * 1.0) != 1.0


# -- bad input -----------------------------------------------------------------------------------------------------
def test_option_parsing() -> None:
    assert check_deployment_target("macos14") == "iOS17" and check_deployment_target("ios16") == "iOS16"
    assert check_palettize(None) is None and check_palettize("4") == 4
    assert check_compute_units("cpu+ne") == "CPU_AND_NE" and check_compute_units("cpu") == "CPU_ONLY"
    for bad, fn in (("iOS14", check_deployment_target), ("5", check_palettize), ("x", check_palettize),
                    ("gpu-only", check_compute_units)):
        with pytest.raises(SegedgeError):
            fn(bad)


def _cli(args: list[str], prelude: str = "") -> subprocess.CompletedProcess:
    code = (prelude + "\nimport runpy, sys\n" + f"sys.argv = ['segedge', *{args!r}]\n"
            + "runpy.run_module('segedge', run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def _one_line_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, no traceback, the error is the last stderr line (progress lines come before it)."""
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    for n in needles:
        assert n in last, err


BLOCK_COREMLTOOLS = textwrap.dedent("""
    import sys
    class _NoCoreML:
        def find_spec(self, name, path=None, target=None):
            if name == "coremltools" or name.startswith("coremltools."):
                raise ModuleNotFoundError("No module named 'coremltools' (blocked by the test)", name="coremltools")
            return None
    sys.meta_path.insert(0, _NoCoreML())
""")


@pytest.mark.parametrize("target", slow_except(["coreml-fp16", "coreml-w8a8"], keep={"coreml-w8a8"}))
def test_coremltools_missing_is_one_line(tmp_path: Path, target: str) -> None:
    proc = _cli(["export", "--model", "topformer-t", "--target", target, "--input-size", "128x128",
                 "--out", str(tmp_path / "x")], BLOCK_COREMLTOOLS)
    _one_line_failure(proc, target, "pip install 'segedge[coreml]'")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,needle", slow_except([
    (["--target", "coreml-int8", "--palettize", "5"], "--palettize takes 4, 6 or 8"),
    (["--target", "coreml-fp16", "--palettize", "6"], "--palettize applies to --target coreml-int8 only"),
    (["--target", "coreml-fp16", "--coreml-target", "iOS14"], "unknown CoreML deployment target"),
], keep={"palettize-value"}, ids=["palettize-value", "palettize-without-int8", "deployment-target"]))
def test_bad_options_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = _cli(["export", "--model", "topformer-t", "--input-size", "128x128", "--out", str(tmp_path / "x"), *args])
    _one_line_failure(proc, needle)


@pytest.mark.slow
def test_deployment_target_too_old_is_one_line(tmp_path: Path) -> None:
    proc = _cli(["export", "--model", "topformer-t", "--input-size", "128x128", "--target", "coreml-int8",
                 "--coreml-target", "iOS15", "--out", str(tmp_path / "x")])
    _one_line_failure(proc, "iOS16", "--coreml-target")
    assert not (tmp_path / "x").exists()


def test_dynamic_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="fixed shapes"):
        _export(tmp_path / "x", "topformer-t", "coreml-fp16", dynamic_batch=True)


# -- the runtime -------------------------------------------------------------------------------------------------
@pytest.mark.skipif(ON_MAC, reason="checks the message a non-macOS host gives")
def test_backend_says_prediction_needs_macos(tt: tuple[Path, Manifest], tmp_path: Path) -> None:
    from segedge.runtime import Segmenter

    out, man = tt
    lone = tmp_path / "lone.mlpackage"  # outside its export folder: the contract comes from the package alone
    shutil.copytree(out / man.targets["coreml-fp16"].file, lone)
    with pytest.raises(SegedgeError, match="needs macOS") as e:
        Segmenter.load(lone)
    assert "\n" not in str(e.value)
    # in its export folder, the package passes the manifest's size and sha256 checks (a folder artifact) first
    with pytest.raises(SegedgeError, match="needs macOS"):
        Segmenter.load(out, target="coreml-fp16", verify="full")
    entry = man.targets["coreml-fp16"]
    assert entry.size_bytes == entry.get("package")["size_bytes"] > 100_000


def test_a_changed_package_fails_the_manifest_check(tt: tuple[Path, Manifest], tmp_path: Path) -> None:
    from segedge.runtime import Segmenter

    out, man = tt
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    pkg = copy / man.targets["coreml-int8"].file
    weights = max((f for f in pkg.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte flipped inside the weights
    weights.write_bytes(bytes(data))
    with pytest.raises(SegedgeError, match="does not match the sha256"):
        Segmenter.load(copy, target="coreml-int8", verify="full")


@pytest.mark.mac
@pytest.mark.skipif(not ON_MAC, reason="CoreML prediction needs macOS (mac marker)")
@pytest.mark.parametrize("units", ["all", "cpu_and_ne", "cpu_only"])
def test_prediction_matches_pytorch_on_mac(tt: tuple[Path, Manifest], units: str) -> None:
    import cv2

    from segedge.runtime import Segmenter

    out, man = tt
    frame = cv2.imread(str(REPO / "segedge" / "assets" / "frames" / "street_00.jpg"))
    ref = Segmenter.load(out / "model.onnx").predict(frame)  # FP32 ONNX, checked against PyTorch at export
    for target in ("coreml-fp16", "coreml-int8"):
        seg = Segmenter.load(out / man.targets[target].file, compute_units=units)
        assert seg.info.contract.to_dict() == man.contract.to_dict()
        assert (seg.predict(frame) == ref).mean() > 0.9
        seg.close()


def test_a_re_export_keeps_the_packages(tt: tuple[Path, Manifest], tmp_path: Path) -> None:
    out, man = tt
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = _export(copy, "topformer-t", "onnx")  # same graph: the folder artifacts are still valid
    assert {"coreml-fp16", "coreml-int8"} <= set(again.targets)
    for t in ("coreml-fp16", "coreml-int8"):
        assert again.targets[t].sha256 == man.targets[t].sha256 and (copy / again.targets[t].file).is_dir()
