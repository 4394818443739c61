"""`segedge train --qat`: fake-quant numerics against hand-computed Q/DQ, a few real QAT steps whose learned ranges are
saved, their export through the qdq target (TensorRT rules, learned scales in the graph), and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from test_cli import assert_one_line_error, run

from segedge.export import ExportOptions, export_model
from segedge.export.calibration import CalibrationTable
from segedge.export.qat_ranges import module_scope, read_qat_record
from segedge.export.qdq_rules import check_placement, validate_qdq
from segedge.models import create_model, read_checkpoint, save_checkpoint
from segedge.models.topformer import Conv2dBN
from segedge.training.qat import (ActQuant, QatModel, QatObjective, distill_loss, fake_quant_weight, fold_frozen_batchnorm,
                                  make_teacher, prepare_qat, scale_zp_from_range)
from segedge.training.trainer import TrainConfig, Trainer

SIZE = (64, 128)  # TopFormer needs multiples of 64


# -- numerics -------------------------------------------------------------------------------------------------------

def test_per_channel_and_per_tensor_weights_match_hand_computed_qdq() -> None:
    w = torch.tensor([[0.5, -1.0, 0.26], [2.0, 0.1, -0.03]])
    s = np.array([1.0 / 127, 2.0 / 127])[:, None]  # absmax per output channel / 127
    want = np.clip(np.round(w.numpy() / s), -127, 127) * s
    assert np.allclose(fake_quant_weight(w, per_channel=True).numpy(), want, atol=1e-7)
    st = 2.0 / 127  # one scale for the whole tensor: the first row loses precision
    want_t = np.clip(np.round(w.numpy() / st), -127, 127) * st
    got_t = fake_quant_weight(w, per_channel=False).numpy()
    assert np.allclose(got_t, want_t, atol=1e-7) and not np.allclose(got_t, want, atol=1e-4)


def test_s8_symmetric_activation_matches_quantize_linear() -> None:
    q = ActQuant(symmetric=True)
    q.set_range(-1.0, 2.54)  # absmax 2.54 → scale 0.02, zero point 0
    x = torch.tensor([-3.0, -1.013, 0.0, 0.011, 1.2345, 2.6])
    want = np.clip(np.round(x.numpy() / 0.02), -128, 127) * 0.02  # QuantizeLinear saturates to int8
    assert np.allclose(q(x).detach().numpy(), want, atol=1e-6)
    assert q.range() == pytest.approx([-2.54, 2.54])


def test_u8_asymmetric_activation_matches_quantize_linear() -> None:
    q = ActQuant(symmetric=False)
    q.set_range(-1.0, 1.55)  # scale 2.55 / 255 = 0.01, zero point round(1.0 / 0.01) = 100
    assert float(q.scale.detach()) == pytest.approx(0.01) and int(q.zero_point) == 100
    x = torch.tensor([-2.0, -0.996, 0.0, 0.504, 1.549, 3.0])
    want = (np.clip(np.round(x.numpy() / 0.01) + 100, 0, 255) - 100) * 0.01
    assert np.allclose(q(x).detach().numpy(), want, atol=1e-6)
    assert q.range() == pytest.approx([-1.0, 1.55])


@pytest.mark.parametrize("lo,hi,symmetric", [(-0.7, 3.3, True), (-0.7, 3.3, False), (0.2, 5.0, False),
                                             (-4.0, -1.0, True)])
def test_range_conversion_is_onnxruntimes(lo: float, hi: float, symmetric: bool) -> None:
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    qmin, qmax = (np.int8(-127), np.int8(127)) if symmetric else (np.uint8(0), np.uint8(255))
    zp, scale = compute_scale_zp(np.float32(lo), np.float32(hi), qmin, qmax, symmetric=symmetric)
    got_scale, got_zp = scale_zp_from_range(lo, hi, symmetric)
    assert got_scale == pytest.approx(float(scale), rel=1e-6) and got_zp == int(zp)
    q = ActQuant(symmetric)  # the range a checkpoint stores converts back to the same scale and zero point
    q.set_range(lo, hi)
    zp2, scale2 = compute_scale_zp(*(np.float32(v) for v in q.range()), qmin, qmax, symmetric=symmetric)
    assert float(scale2) == pytest.approx(float(scale), rel=1e-5) and int(zp2) == int(zp)


def test_batchnorm_fold_keeps_the_output_and_freezes_bn() -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(Conv2dBN(3, 8, 3, pad=1), torch.nn.ReLU(), Conv2dBN(8, 4, 1)).eval()
    for bn in (m[0].bn, m[2].bn):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.2, 3.0)
    x = torch.randn(2, 3, 16, 16)
    before = m(x)
    assert fold_frozen_batchnorm(m) == ["0.bn", "2.bn"]
    assert torch.allclose(m(x), before, atol=1e-5)
    assert torch.all(m[0].bn.weight == 1) and not m[0].bn.weight.requires_grad


def test_module_scope_undoes_torch_onnx_sequential_names() -> None:
    assert module_scope("/backbone/tpm/layer1/conv/conv/0/c") == "/backbone/tpm/layer1/conv/0/c"
    assert module_scope("/backbone/block1/0/mlp/dwconv/dwconv") == "/backbone/block1/0/mlp/dwconv/dwconv"


# -- the distillation objective ---------------------------------------------------------------------------------------

def test_distill_loss_is_the_pixel_mean_kl() -> None:
    t = torch.tensor([2.0, 0.0, -1.0]).reshape(1, 3, 1, 1).repeat(1, 1, 2, 2)
    s = torch.zeros(1, 3, 2, 2)
    s[..., 0, 0] = torch.tensor([2.0, 0.0, -1.0])  # one pixel agrees, three do not
    p = torch.softmax(torch.tensor([2.0, 0.0, -1.0]), 0)
    kl = float((p * (p.log() - torch.log(torch.full((3,), 1 / 3)))).sum())
    assert float(distill_loss(s, t)) == pytest.approx(0.75 * kl, rel=1e-5)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    # at T the loss is T² × KL of the softened distributions
    pt = torch.softmax(torch.tensor([2.0, 0.0, -1.0]) / 2, 0)
    kl2 = float((pt * (pt.log() - torch.log(torch.full((3,), 1 / 3)))).sum())
    assert float(distill_loss(s, t, temperature=2.0)) == pytest.approx(4 * 0.75 * kl2, rel=1e-5)


def _tiny_student_and_teacher() -> tuple[torch.nn.Module, torch.nn.Module, QatModel, torch.Tensor]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(Conv2dBN(3, 16, 3, pad=1), torch.nn.ReLU(), Conv2dBN(16, 16, 3, pad=1), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 5, 1)).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 2.0)
    x = torch.randn(4, 3, 12, 12)
    teacher = make_teacher(m)
    qat = prepare_qat(m, "qdq", "tiny", "tiny", x[:1])
    # calibrated on frames 30× brighter: a coarse int8 grid for x, a quantization error worth distilling away
    qat.calibrate(m, [30 * x[i:i + 1] for i in range(4)])
    return m, teacher, qat, x


def test_distill_loss_is_zero_without_fake_quant_and_falls_while_training() -> None:
    student, teacher, qat, x = _tiny_student_and_teacher()
    objective = QatObjective("distill")
    no_ce = lambda: pytest.fail("distill must not use the labels")  # noqa: E731
    qat.enabled = False  # BN folded but no fake-quant: the very function of the teacher
    with torch.no_grad():
        assert float(objective(student(x), teacher(x), no_ce)) < 1e-9
    qat.enabled = True
    with torch.no_grad():
        target = teacher(x)
        before = float(objective(student(x), target, no_ce))
    assert before > 1e-3  # int8 fake-quant of the two inner convs moves the logits
    params = [p for p in student.parameters() if p.requires_grad] + list(qat.parameters())
    opt = torch.optim.Adam(params, lr=2e-3)
    for _ in range(60):
        loss = objective(student(x), target, no_ce)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(objective(student(x), target, no_ce))
    assert after < 0.5 * before, (before, after)
    assert not any(p.grad is not None for p in teacher.parameters())  # the teacher stays frozen


def test_mixed_objective_adds_weighted_labels() -> None:
    s, t = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    ce = lambda: torch.tensor(2.0)  # noqa: E731
    kd = float(distill_loss(s, t, 2.0))
    assert float(QatObjective("mixed", 2.0, 0.25)(s, t, ce)) == pytest.approx(kd + 0.5, rel=1e-6)
    assert float(QatObjective("labels")(s, None, ce)) == 2.0


# -- a few real QAT steps and their export --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trainer, dict, Path]:
    from conftest import write_camvid_like

    tmp = tmp_path_factory.mktemp("qat")
    root = write_camvid_like(tmp / "camvid")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("topformer-t", num_classes=11), tmp / "fp32.safetensors",
                           {"model": "topformer-t", "num_classes": 11, "input_size": list(SIZE)})
    cfg = TrainConfig(model="topformer-t", data=str(root), out=str(tmp / "run"), input_size=SIZE, iters=3,
                      batch_size=2, lr=1e-2, warmup_iters=0, val_every=3, threads=2, weights=str(ckpt), qat=True,
                      qat_target="qdq", log_every=100, seed=1)
    tr = Trainer(cfg)
    tr._preload()
    tr._init_qat_ranges()
    at_init = tr.qat.ranges()
    tr.run()
    return tmp, tr, at_init, root


def test_qat_learns_scales_and_saves_them_in_an_ordinary_checkpoint(qat_run: tuple) -> None:
    tmp, tr, at_init, _ = qat_run
    last = tmp / "run" / "last.safetensors"
    rec = read_qat_record(last)
    assert rec["target"] == "qdq" and rec["scheme"]["weight_per_channel"] and rec["init"]["method"] == "minmax"
    assert set(rec["ranges"]) == set(at_init) and len(rec["ranges"]) == len(tr.qat.sites) > 20
    moved = [p for p in at_init if abs(rec["ranges"][p][1] - at_init[p][1]) > 1e-6 * abs(at_init[p][1])]
    assert len(moved) > len(at_init) // 2, "the learned scales did not move"
    assert all(lo == pytest.approx(-hi) for lo, hi in rec["ranges"].values())  # symmetric int8
    assert "decode_head.conv_seg" in rec["kept_float"] and "backbone.tpm.stem.0.c" in rec["kept_float"]
    ck = read_checkpoint(last, "topformer-t")  # plain keys: no quantizer state in the weights
    assert set(ck.state_dict) == set(create_model("topformer-t", num_classes=11).state_dict())


def test_qat_init_is_the_minmax_of_the_calibration_frames(qat_run: tuple) -> None:
    from segedge.training.qat import calibration_inputs

    _, tr, at_init, _ = qat_run
    fresh = Trainer(tr.cfg)  # the same checkpoint and BN fold, before any step
    path = "backbone.trans.transformer_blocks.0.mlp.fc2.c"
    seen: list[torch.Tensor] = []
    hook = dict(fresh.model.named_modules())[path].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    fresh.qat.observing = True  # a float forward, as the calibration pass runs it
    gen, _ = calibration_inputs(fresh.train_ds, SIZE, fresh.mean, fresh.std)
    with torch.no_grad():
        for x in gen():
            fresh.model.eval()(x)
    hook.remove()
    absmax = max(float(t.abs().max()) for t in seen)
    assert len(seen) == 6 and at_init[path][1] == pytest.approx(absmax, rel=1e-5)  # s8: [-absmax, absmax]


def test_qat_export_applies_learned_scales_and_passes_tensorrt_rules(qat_run: tuple) -> None:
    tmp, _, _, root = qat_run
    last = tmp / "run" / "last.safetensors"
    res = export_model(ExportOptions("topformer-t", weights=last, targets="qdq", input_size=SIZE, calib=root / "train",
                                     calib_count=4, verify_frames=1, out=tmp / "exp"))
    cal = res.manifest["targets"]["qdq"]["calibration"]
    assert cal["method"] == "qat" and cal["base_method"] == "minmax" and cal["qat"]["applied"]
    assert cal["qat"]["tensors_overridden"] > 20 and cal["qat"]["tensors_merged"] == 0
    assert cal["qat"]["objective"] == read_qat_record(last)["objective"]
    assert cal["qat"]["objective"]["loss"] == "distill" and cal["qat"]["objective"]["temperature"] == 1.0
    qm = onnx.load(str(res.out_dir / "model.qdq.onnx"))
    assert validate_qdq(qm) == [] and check_placement(qm) == []
    # read the Q scale of one Conv input back: the learned range / 127, not the calibrated one
    rng = read_qat_record(last)["ranges"]["backbone.trans.transformer_blocks.0.mlp.fc2.c"]
    conv = next(n for n in qm.graph.node if n.op_type == "Conv" and "transformer_blocks.0/mlp/fc2" in n.name)
    prod = {o: n for n in qm.graph.node for o in n.output}
    dq = prod[conv.input[0]]
    q = prod[dq.input[0]]
    assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
    inits = {t.name: numpy_helper.to_array(t) for t in qm.graph.initializer}
    scale = float(inits[q.input[1]])
    assert scale == pytest.approx(rng[1] / 127, rel=1e-5)
    table = CalibrationTable.load(res.out_dir / "calibration.minmax.json")
    lo, hi = table.ranges[q.input[0]]
    assert abs(scale - max(abs(lo), abs(hi)) / 127) > 1e-3 * scale  # the override changed it


@pytest.mark.slow  # three short runs: ~10 s on a quiet 2-core machine, 30 s on a busy one
def test_qat_resume_is_exact(qat_run: tuple, tmp_path: Path) -> None:
    tmp, tr, _, _ = qat_run
    base = dict(tr.cfg.__dict__, iters=4, val_every=2, scale_range=(1.0, 1.0))
    straight = Trainer(TrainConfig(**{**base, "out": str(tmp_path / "a")}))
    straight.run()
    part = Trainer(TrainConfig(**{**base, "out": str(tmp_path / "b")}))
    save = part._save_state

    class Stop(Exception):
        pass

    def save_then_stop(it: int) -> None:  # an interruption right after the checkpoint of iteration 2
        save(it)
        if it == 2:
            raise Stop

    part._save_state = save_then_stop
    with pytest.raises(Stop):
        part.run()
    resumed = Trainer(TrainConfig(**{**base, "out": str(tmp_path / "b")}))
    resumed.run(resume=True)
    assert part.losses + resumed.losses == straight.losses
    a, b = (read_qat_record(tmp_path / r / "last.safetensors")["ranges"] for r in ("a", "b"))
    assert a == b


def test_qat_loss_flag_round_trips_into_the_checkpoint(qat_run: tuple, capsys, tmp_path: Path) -> None:
    tmp, _, _, root = qat_run
    code, out, err = run(capsys, "train", "--model", "topformer-t", "--data", str(root), "--input-size", "64x128",
                         "--iters", "1", "--batch-size", "2", "--threads", "2", "--out", str(tmp_path / "run"),
                         "--qat", "--weights", str(tmp / "fp32.safetensors"), "--qat-target", "ort-int8",
                         "--qat-loss", "mixed", "--qat-ce-weight", "0.3")
    assert code == 0, err
    last = tmp_path / "run" / "last.safetensors"
    rec = read_qat_record(last)
    assert rec["target"] == "ort-int8"
    assert rec["objective"] == {"loss": "mixed", "temperature": 1.0, "ce_weight": 0.3,
                                "teacher": "the --weights FP32 model, frozen (BN in eval)"}
    config = read_checkpoint(last, "topformer-t").meta["provenance"]["config"]
    assert config["qat_loss"] == "mixed" and config["lr"] == 1e-5 and config["qat_scale_lr"] == 5e-5  # its defaults
    # the manifest side: test_qat_export_applies_learned_scales_and_passes_tensorrt_rules (distill, through export)


# -- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra,needle", [
    (["--qat"], "--weights"),
    (["--qat-target", "qdq"], "add --qat"),
    (["--qat", "--weights", "w.safetensors", "--qat-target", "trt"], "--qat-target"),
    (["--qat", "--weights", "w.safetensors", "--amp", "bf16"], "drop --amp"),
    (["--qat", "--weights", "w.safetensors", "--qat-loss", "kl"], "unknown --qat-loss 'kl'"),
    (["--qat-loss", "distill"], "add --qat"),
    (["--qat", "--weights", "w.safetensors", "--qat-temperature", "0"], "--qat-temperature"),
])
def test_qat_bad_input_is_one_line(camvid_like: Path, tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    code, out, err = run(capsys, "train", "--model", "topformer-t", "--data", str(camvid_like), "--iters", "2",
                         "--out", str(tmp_path / "run"), *extra)
    assert_one_line_error(code, out, err, needle)
