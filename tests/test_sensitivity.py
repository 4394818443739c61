"""INT8 sensitivity report and the --max-miou-drop search (segedge.export.sensitivity) on real quantizations.

A tiny ONNX model (onnx.helper) where group `b` adds a huge-range constant (1e4 at one pixel of a channel its conv
ignores) before its conv: per-tensor INT8 activations then round the useful channels to zero, so `b` must stay float
and nothing else need. Labels are the FP32 argmax, so FP32 mIoU is 1 and every drop is the quantization's.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from segedge.errors import SegedgeError  # noqa: E402
from segedge.export import sensitivity as S  # noqa: E402
from segedge.export.quantize import TENSORRT, ort_cpu_flavour  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "datasets" / "camvid"
DEMO_T = ROOT / "exports" / "demo-topformer-t"


def _conv(name: str, x: str, y: str, w: np.ndarray) -> tuple[object, list[object]]:
    inits = [numpy_helper.from_array(w.astype(np.float32), f"{name}.weight"),
             numpy_helper.from_array(np.zeros(w.shape[0], np.float32), f"{name}.bias")]
    return helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [y], name=f"/{name}/Conv"), inits


def tiny_model(outliers: tuple[str, ...] = ("b",)) -> object:
    """x → [a: (+outlier) → Conv] → [b: +outlier → Conv] → [head: Conv] → logits (3 classes, 8×8)."""
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for g, cin in (("a", 3), ("b", 4)):
        if g in outliers:  # channel 0 at one pixel gets 1e4; the conv below gives that channel zero weight
            c = np.zeros((1, cin, 8, 8), np.float32)
            c[0, 0, 0, 0] = 1e4
            inits.append(numpy_helper.from_array(c, f"{g}.outlier"))
            nodes.append(helper.make_node("Add", [cur, f"{g}.outlier"], [f"/{g}/Add_output_0"], name=f"/{g}/Add"))
            cur = f"/{g}/Add_output_0"
        w = rng.normal(size=(4, cin, 1, 1))
        if g in outliers:
            w[:, 0] = 0.0
        n, i = _conv(g, cur, f"/{g}/Conv_output_0", w)
        nodes.append(n)
        inits += i
        cur = f"/{g}/Conv_output_0"
    n, i = _conv("head", cur, "logits", rng.normal(size=(3, 4, 1, 1)))
    io = [helper.make_tensor_value_info(t, TensorProto.FLOAT, [1, c, 8, 8]) for t, c in (("x", 3), ("logits", 3))]
    graph = helper.make_graph(nodes + [n], "tiny", io[:1], io[1:], inits + i)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def frames_for(model: object, n: int = 16, seed: int = 1) -> S.LabelledSet:
    """Random inputs labelled with the FP32 argmax."""
    x = [np.random.default_rng(seed + i).normal(size=(1, 3, 8, 8)).astype(np.float32) for i in range(n)]
    s = S.LabelledSet("val", x, [np.zeros((8, 8), np.uint8)] * n, [f"f{i:02d}" for i in range(n)])
    s.labels = [lg.argmax(0).astype(np.uint8) for lg in S.run_logits(model, s)]
    return s


def meter_for(tmp_path: Path, outliers: tuple[str, ...], flavour: object, sets_split: bool = True) -> S.VariantMeter:
    """A VariantMeter over the tiny model: pre-processed graph, a real MinMax table, budget / held-back sets."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from segedge.export.calibration import CalibrationTable, FrameDataReader, compute_ranges

    model = tiny_model(outliers)
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(model, str(fp32))
    pre = tmp_path / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    frames = frames_for(model)
    ranges = compute_ranges(pre, FrameDataReader(frames.inputs, "x"), "minmax", work_dir=tmp_path)
    table = CalibrationTable("minmax", ranges, len(frames), 0, "test", "iterable", "x", "g")
    sets = list(S.split_budget(frames)[:2]) if sets_split else [frames]
    return S.VariantMeter(pre, model, table, flavour, sets, 3, "test", work_dir=tmp_path,
                          latency=flavour is not TENSORRT)


@pytest.mark.parametrize("flavour", [TENSORRT, ort_cpu_flavour("topformer")], ids=["qdq", "ort-int8"])
def test_search_keeps_the_sensitive_group_float(tmp_path: Path, flavour: object) -> None:
    meter = meter_for(tmp_path, ("b",), flavour)
    assert set(meter.groups) == {"a", "b"}
    default = meter.measure((), "budget")
    assert default["drop_pt"] > 20  # the outlier really breaks INT8
    res = S.budget_search(meter, 3.0)
    assert res.float_groups == ["b"]
    rec = res.record
    assert rec["budget_set"]["chosen"]["drop_pt"] <= 3.0
    assert rec["held_back_set"]["chosen"]["drop_pt"] <= 3.0 < rec["held_back_set"]["default"]["drop_pt"]
    assert rec["float_islands"][0]["group"] == "b" and rec["float_islands"][0]["leave_out_gain_pt"] > 20
    kept = {k.node for k in res.kept_float}
    assert "/b/Conv" in kept and "/a/Conv" not in kept
    q = meter.quantized(res.float_groups)  # group a is really INT8 in the chosen graph
    dq = {o for n in q.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    assert any(i in dq for n in q.graph.node if n.name == "/a/Conv" for i in n.input)
    if flavour is not TENSORRT:
        assert rec["latency"]["chosen_ms"] > 0 and rec["latency"]["cpu"]["arch"]


def test_budget_met_by_the_default_keeps_nothing_float(tmp_path: Path) -> None:
    meter = meter_for(tmp_path, (), TENSORRT)
    res = S.budget_search(meter, 5.0)
    assert res.float_groups == [] and res.record["leave_out_gains"] == []


def test_held_back_set_is_disjoint_from_the_budget_set() -> None:
    frames = S.LabelledSet("val", [np.zeros(1)] * 9, [np.zeros(1)] * 9, [f"f{i}" for i in range(9)])
    budget, held, rec = S.split_budget(frames)
    assert not set(budget.names) & set(held.names)
    assert sorted(budget.names + held.names) == frames.names
    assert rec["budget_frames"] == budget.names and rec["held_back_frames"] == held.names
    with pytest.raises(SegedgeError, match="at least 2"):
        S.split_budget(frames.subset([0], "one"))


def test_unmet_budget_is_one_line_with_best_drop_and_islands(tmp_path: Path) -> None:
    meter = meter_for(tmp_path, ("a", "b"), TENSORRT)
    with pytest.raises(SegedgeError) as ei:
        S.budget_search(meter, 0.1)
    msg = str(ei.value)
    assert "\n" not in msg and "cannot be met" in msg and "best drop reached" in msg and "kept float" in msg


def test_report_files_are_written_and_parse(tmp_path: Path) -> None:
    meter = meter_for(tmp_path, ("b",), TENSORRT, sets_split=False)
    rep = S.sensitivity(meter, "val")
    rep.update(target="qdq", group_by="block")
    assert [r["group"] for r in rep["groups"]] == ["b", "a"]  # ranked by leave-out gain
    assert rep["groups"][0]["only"]["drop_pt"] > 20 and rep["groups"][1]["only"]["drop_pt"] < 3
    assert rep["groups"][1]["only"]["sqnr_db"] > rep["groups"][0]["only"]["sqnr_db"]
    files = S.write_report(tmp_path, "qdq", rep)
    assert [f.name for f in files] == ["sensitivity.qdq.json", "sensitivity.qdq.md", "sensitivity.qdq.png"]
    assert json.loads(files[0].read_text())["groups"][0]["group"] == "b"
    assert "| 1 | b |" in files[1].read_text()
    assert files[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_op_grouping_and_bad_group_by(tmp_path: Path) -> None:
    model = tiny_model(("b",))
    nodes = S.candidate_nodes(model, ort_cpu_flavour("topformer"), [])
    assert set(S.node_groups(model, "test", "op", nodes)) == {"Conv", "Add"}
    with pytest.raises(SegedgeError, match="--group-by"):
        S.node_groups(model, "test", "layer", nodes)


@pytest.mark.slow
def test_segformer_groups_on_a_real_b0_graph(tmp_path: Path) -> None:
    """onnxsim-renamed Gemms (Gemm_3, MatMul_84) land in their module's group, never in a catch-all."""
    from segedge.export import ExportOptions, export_model

    out = tmp_path / "b0"  # a real B0 export (demo weights, small input): the graph the groups are read from
    export_model(ExportOptions("b0", targets="onnx", input_size=(128, 128), verify_frames=1, out=out))
    model = onnx.load(str(out / "model.onnx"))
    nodes = S.candidate_nodes(model, TENSORRT, S.select_kept_float(model, (), False, TENSORRT))
    groups = S.node_groups(model, "segformer", "block", nodes, "b0")
    assert {"s1.patch_embed", "s1.sr", "s1.attention", "s1.mixffn", "s4.attention", "head.mlp", "head.fuse"} <= \
        set(groups)
    assert all(re.match(r"(s\d\.(patch_embed|sr|attention|mixffn)|head\.(mlp|fuse))$", g) for g in groups)
    assert "Gemm_3" in groups["s1.attention"] and "Gemm_9" in groups["s1.mixffn"]


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from segedge.cli import main

    handler = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as ei:
            main(args)
    finally:
        signal.signal(signal.SIGTERM, handler)
    return ei.value.code, capsys.readouterr().err


@pytest.mark.parametrize("extra, needle", [
    ([], "needs labelled frames"),
    (["--val", "{tmp}"], None),
])
def test_export_budget_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                                             needle: str | None) -> None:
    args = ["export", "--model", "topformer-t", "--out", str(tmp_path / "o"), "--max-miou-drop", "0.3",
            "--target", "ort-int8" if needle else "onnx"] + [a.format(tmp=tmp_path) for a in extra]
    code, err = _cli(args, capsys)
    assert code == 2 and err.count("\n") == 1
    assert (needle or "applies to the targets") in err
    assert not (tmp_path / "o").exists()


def test_export_negative_budget_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = _cli(["export", "--model", "topformer-t", "--target", "ort-int8", "--max-miou-drop", "-1",
                      "--val", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1 and "≥ 0" in err


@pytest.mark.parametrize("args, needle", [
    (["--target", "coreml-int8"], "--target must be one of"),
    (["--target", "qdq", "--group-by", "layer"], "--group-by"),
    (["--target", "qdq"], "not an export folder"),
])
def test_sensitivity_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                               needle: str) -> None:
    code, err = _cli(["quantize", "sensitivity", str(tmp_path), "--val", str(tmp_path), *args], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err


@pytest.mark.slow
@pytest.mark.skipif(not (DEMO_T / "calibration.minmax.json").is_file() or not (CAMVID / "val").is_dir(),
                    reason="demo TopFormer-T export or CamVid not present")
def test_sensitivity_cli_on_the_demo_export(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import shutil

    folder = tmp_path / "exp"
    shutil.copytree(DEMO_T, folder)
    code, _ = _cli(["quantize", "sensitivity", str(folder), "--target", "ort-int8", "--val", str(CAMVID),
                    "--val-count", "3"], capsys)
    assert code == 0
    rep = json.loads((folder / "sensitivity.ort-int8.json").read_text())
    assert {r["group"] for r in rep["groups"]} >= {"tpm.s1", "trans.b0", "sim.1", "head"}
    assert rep["fp32"]["latency_ms"] > 0 and rep["cpu"]["arch"]
    assert (folder / "sensitivity.ort-int8.png").is_file() and (folder / "sensitivity.ort-int8.md").is_file()



def test_family_default_float_groups_apply_unless_quantize_all(tmp_path_factory: pytest.TempPathFactory) -> None:
    """TopFormer keeps its first token-pyramid stage float by default (the budget search's choice); --quantize-all
    drops the family groups with the other defaults."""
    from types import SimpleNamespace

    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from video_util import tiny_export

    from segedge.contract import Manifest
    from segedge.export.sensitivity import FAMILY_FLOAT_GROUPS, default_kept_float

    demo = tiny_export(tmp_path_factory)  # a real TopFormer-T export at 128x128
    pre = tmp_path_factory.mktemp("pre") / "pre.onnx"
    quant_pre_process(str(demo / "model.onnx"), str(pre))
    man = Manifest.read(demo)
    assert FAMILY_FLOAT_GROUPS == {"topformer": ("tpm.s1",)} and man.contract.family == "topformer"

    def ctx(quantize_all: bool) -> SimpleNamespace:
        opts = SimpleNamespace(max_miou_drop=None, keep_float=(), quantize_all=quantize_all)
        return SimpleNamespace(options=opts, manifest=man, pre_quant_model=lambda: pre)

    kept, budget = default_kept_float(ctx(False), "qdq", TENSORRT)
    family = [k for k in kept if "tpm.s1" in k.reason]
    names = {n.name for n in onnx.load(str(pre)).graph.node}
    assert budget is None and family and all(k.node in names and "/tpm/" in k.node for k in family)
    assert "Conv" in {k.op for k in family} <= {"Conv", "Add"}  # its convs and the residual Adds between them
    kept_all, _ = default_kept_float(ctx(True), "qdq", TENSORRT)
    assert not any("tpm.s1" in k.reason for k in kept_all)


@pytest.mark.slow
def test_openvino_int8_sensitivity_bypasses_fake_quantize_per_group(tmp_path: Path) -> None:
    """openvino-int8: one NNCF run; every FakeQuantize maps to a node group, a variant bypasses exactly its groups'
    ones, and the report (shared format) is written into the export folder."""
    import numpy as np
    from conftest import write_camvid_like

    from segedge.contract import Manifest
    from segedge.export import ExportOptions, export_model
    from segedge.export.sensitivity import export_sensitivity
    from segedge.export.sensitivity_openvino import bypassed

    data = write_camvid_like(tmp_path / "camvid")
    out = tmp_path / "exp"
    export_model(ExportOptions("topformer-t", targets="openvino-int8", input_size=(128, 128),
                               calib=str(data / "train"), verify_frames=1, out=out,
                               target_options={"ov_precision": "f32"}))
    rep = export_sensitivity(out, "openvino-int8", data, val_count=2)
    assert rep["flavour"] == "nncf-performance" and rep["inference_precision_hint"] == "f32"
    groups = {r["group"]: r for r in rep["groups"]}
    assert {"tpm.s1", "trans.b0", "head"} <= set(groups)
    assert all(r["leave_out"]["latency_ms"] > 0 for r in rep["groups"])
    assert {p.name for p in out.iterdir()} >= {"sensitivity.openvino-int8.json", "sensitivity.openvino-int8.png"}
    # the bypass itself: FakeQuantize ops named go away, the others stay
    import nncf
    import openvino as ov

    m = ov.convert_model(str(out / "model.onnx"))
    rng = np.random.default_rng(0)
    q = nncf.quantize(m, nncf.Dataset([rng.random((1, 3, 128, 128), np.float32) for _ in range(2)]), subset_size=2)
    fqs = [o.get_friendly_name() for o in q.get_ops() if o.get_type_name() == "FakeQuantize"]
    left = [o for o in bypassed(q, fqs[:3]).get_ops() if o.get_type_name() == "FakeQuantize"]
    assert len(left) == len(fqs) - 3
    # every FakeQuantize of the re-run (same settings as the export: tpm.s1 ignored) belongs to exactly one group
    entry = Manifest.read(out).targets["openvino-int8"]
    assert sum(r["nodes"] for r in rep["groups"]) == entry.quantization["fake_quantize_nodes"] < len(fqs)


@pytest.mark.slow
def test_coreml_w8a8_sensitivity_toggles_fake_quant_per_group(tmp_path: Path) -> None:
    """coreml-w8a8: one calibration of the PyTorch proxy; tpm.s1 (float in W8A8) is no group, the groups cover every
    enabled fake-quant, all groups off gives the float module's logits, and the report is written."""
    import numpy as np
    from conftest import write_camvid_like
    from torch.ao.quantization import FakeQuantizeBase

    from segedge.contract import Manifest
    from segedge.export import ExportOptions, export_model
    from segedge.data.datasets import open_labelled_folder
    from segedge.export.sensitivity import _input_maker, export_sensitivity, labelled_set
    from segedge.export.sensitivity_coreml import coreml_meter

    data = write_camvid_like(tmp_path / "camvid")
    out = tmp_path / "exp"
    export_model(ExportOptions("topformer-t", targets="onnx,coreml-w8a8", input_size=(128, 128),
                               calib=str(data / "train"), verify_frames=1, out=out))
    rep = export_sensitivity(out, "coreml-w8a8", data, val_count=2)
    groups = {r["group"]: r for r in rep["groups"]}
    assert "tpm.s1" not in groups and {"tpm.s2", "trans.b0", "head"} <= set(groups)
    assert rep["flavour"] == "coremltools-w8a8-affine"
    assert {p.name for p in out.iterdir()} >= {"sensitivity.coreml-w8a8.json", "sensitivity.coreml-w8a8.md",
                                               "sensitivity.coreml-w8a8.png"}
    man = Manifest.read(out)
    c = man.contract
    ds = open_labelled_folder(data, c.num_classes)
    frames = labelled_set((ds[i] for i in range(2)), _input_maker(c), "val")
    meter = coreml_meter(out, man, frames, _input_maker(c), lambda s: None)
    enabled = {n for n, m in meter.prepared.named_modules()
               if isinstance(m, FakeQuantizeBase) and bool(m.fake_quant_enabled[0])}
    assert enabled and enabled == set(meter.ops)  # every fake-quant belongs to exactly one group
    assert sum(len(v) for v in meter.groups.values()) == len(meter.ops) == sum(r["nodes"] for r in rep["groups"])
    quantized = meter.logits((), "val")
    plain = meter.logits(list(meter.groups), "val")
    ref = meter.ref["val"].logits
    assert all(np.abs(p - r).max() <= 1e-5 * max(1.0, float(np.abs(r).max())) for p, r in zip(plain, ref))
    assert max(float(np.abs(q - r).max()) for q, r in zip(quantized, ref)) > 1e-3  # the fake-quant does act
    one = next(iter(meter.groups))
    meter.logits([one], "val")
    on = {n for n, m in meter.prepared.named_modules()
          if isinstance(m, FakeQuantizeBase) and bool(m.fake_quant_enabled[0])}
    assert on == set(meter.ops) - set(meter.groups[one])
