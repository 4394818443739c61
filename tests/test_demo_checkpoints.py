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
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_checkpoint_reaches_floor_on_camvid_subset(name, camvid_root):
    ds = open_dataset("camvid", camvid_root, "val")
    model = create_model(name, weights="default")
    cfg = model.pretrained_cfg
    subset = range(0, len(ds), 4)  # 26 of the 101 val frames, spread over the sequence
    m = evaluate(torch_predictor(model, tuple(cfg["input_size"]), cfg["mean"], cfg["std"]), ds, indices=subset)
    assert m.miou >= FLOORS[name], f"{name}: {m.miou:.4f} on the subset"


@pytest.mark.slow
@pytest.mark.camvid
@pytest.mark.parametrize("name", sorted(FLOORS))
def test_shipped_checkpoint_full_val_matches_its_model_card(name, camvid_root):
    """All 101 val frames: the floor holds and the card's figure is what the shipped fp16 weights give."""
    ds = open_dataset("camvid", camvid_root, "val")
    model = create_model(name, weights="default")
    cfg = model.pretrained_cfg
    m = evaluate(torch_predictor(model, tuple(cfg["input_size"]), cfg["mean"], cfg["std"]), ds)
    assert m.miou >= FLOORS[name]
    assert abs(m.miou - cfg["meta"]["val_miou"]) < 1e-4, (m.miou, cfg["meta"]["val_miou"])
