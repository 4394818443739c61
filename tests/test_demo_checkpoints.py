"""The shipped CamVid demo checkpoints: format, size, model card, and val mIoU on a fixed CamVid subset."""

from __future__ import annotations

import pytest
from safetensors import safe_open

from segedge.data.datasets import open_dataset
from segedge.evaluation import evaluate, torch_predictor
from segedge.models import create_model, default_weights

# Issue floors for CamVid val mIoU over the 11 classes.
FLOORS = {"b0": 0.42, "topformer-t": 0.55}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_checkpoint_file(name):
    path = default_weights(name)
    assert path is not None, f"embedded demo weights for {name} are missing"
    assert path.stat().st_size < 10 * 2**20
    with safe_open(str(path), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert "F16" in dtypes and "F32" not in dtypes
    card = path.with_suffix(".md").read_text()
    for needle in ("non-commercial", "val mIoU", "Command", "wall time", "Per-class IoU"):
        assert needle in card
    m = create_model(name, weights="default")
    assert m.pretrained_cfg["num_classes"] == 11 and m.pretrained_cfg["class_names"][2] == "Pole"
    assert m.pretrained_cfg["input_size"] == [384, 512]


@pytest.mark.camvid
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "b0" else n for n in sorted(FLOORS)])
def test_shipped_checkpoint_reaches_floor_on_camvid_val(name, camvid_root):
    """All 101 val frames (≈ 10-40 s per model): the floor holds and the card's figure is what the fp16 weights give.
    B0's 35 s run is in the slow suite; TopFormer-T's keeps the check in the fast one."""
    ds = open_dataset("camvid", camvid_root, "val")
    model = create_model(name, weights="default")
    cfg = model.pretrained_cfg
    m = evaluate(torch_predictor(model, tuple(cfg["input_size"]), cfg["mean"], cfg["std"]), ds)
    assert m.miou >= FLOORS[name], f"{name}: {m.miou:.4f} on CamVid val"
    assert abs(m.miou - cfg["meta"]["val_miou"]) < 1e-4, (m.miou, cfg["meta"]["val_miou"])
    assert f"**{100 * m.miou:.2f} %**" in default_weights(name).with_suffix(".md").read_text()


@pytest.mark.slow
@pytest.mark.camvid
@pytest.mark.parametrize("name,target", [("b0", "ort-int8"), ("topformer-t", "ort-int8"),
                                         ("b0", "openvino-int8"), ("topformer-t", "openvino-int8")])
def test_int8_targets_of_the_demo_lose_at_most_half_a_point(name, target, camvid_root, tmp_path):
    """Issue budget: INT8 targets calibrated on CamVid train lose ≤ 0.5 pt mIoU on all of CamVid val."""
    from segedge.export import ExportOptions, export_model

    if get_target_or_none(target) is None:
        pytest.skip(f"{target} cannot be built here (pip install 'segedge[openvino]')")
    res = export_model(ExportOptions(model=name, targets=target, calib=f"camvid:{camvid_root}:train",
                                     val=camvid_root, val_count=None, out=tmp_path / "x"))
    fp32 = res.manifest["targets"]["onnx"]["verification"]
    assert fp32["argmax_agreement"] >= 0.999
    val = res.manifest["targets"][target]["verification"]["val"]
    assert val["frames"] == 101
    assert 100 * (fp32["val"]["miou"] - val["miou"]) <= 0.5, (target, fp32["val"]["miou"], val["miou"])


def get_target_or_none(name):
    from segedge.export.targets import get_target

    try:
        spec = get_target(name)
    except Exception:  # noqa: BLE001
        return None
    return None if spec.requires() else spec


