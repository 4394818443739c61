"""The I/O-mode / post-processing study (benchmarks/io_modes.py): its timing loop, accuracy arithmetic, and an
end-to-end run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from segedge.models import create_model, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import io_modes  # noqa: E402  (a study script, not part of the installed package)


def test_blocks_time_every_variant_on_the_same_frames():
    calls: list[tuple[str, int]] = []
    fns = {k: (lambda f, k=k: calls.append((k, int(f[0])))) for k in ("a", "b", "c")}
    frames = [np.array([i]) for i in range(4)]
    stats = io_modes.time_variants(fns, frames, iters=6, warmup=2, block=2)
    assert set(stats) == {"a", "b", "c"} and all(s["n"] == 6 for s in stats.values())
    # segedge bench's rotating blocks: round r runs every variant on frame r, the first variant rotating with r;
    # 2 warm-up rounds of one call each, then 3 timed rounds of an untimed call + a block of 2
    expect = []
    for r in range(5):
        order = "abc"[r % 3:] + "abc"[:r % 3]
        for k in order:
            expect += [(k, r % 4)] * (1 if r < 2 else 3)
    assert calls == expect


def test_accuracy_counts_miou_and_agreement_against_the_reference():
    label = np.array([[0, 0], [1, 1]], np.uint8)
    pairs = [(np.zeros((2, 2, 3), np.uint8), label)]
    preds = {"exact": lambda f: label.copy(), "off": lambda f: np.array([[0, 1], [1, 1]], np.uint8)}
    acc = io_modes.accuracy(preds, pairs, 2, ["x", "y"], reference="exact")
    assert acc["exact"]["miou"] == 1.0 and acc["exact"]["agreement_vs_exact"] == 1.0
    # "off": class 0 IoU 1/2, class 1 IoU 2/3 -> mIoU 7/12; 3 of 4 pixels agree
    assert abs(acc["off"]["miou"] - 7 / 12) < 1e-9
    assert acc["off"]["agreement_vs_exact"] == 0.75


def test_end_to_end_on_a_tiny_model(camvid_like: Path, tmp_path: Path):
    torch.manual_seed(0)
    names = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
             "Bicyclist"]
    ckpt = save_checkpoint(create_model("topformer-t", num_classes=11), tmp_path / "t.safetensors",
                           {"model": "topformer-t", "num_classes": 11, "class_names": names, "input_size": [64, 64]})
    res = io_modes.run("topformer-t", str(ckpt), camvid_like, "camvid", "val", (64, 64), "onnx",
                       str(camvid_like / "train"), None, iters=3, warmup=1, threads=1, out=tmp_path / "out",
                       exports=tmp_path / "exports")
    assert set(res["variants"]) == set(io_modes.VARIANTS)
    v = res["variants"]
    assert v["float/exact"]["agreement_vs_exact"] == 1.0
    # raw (argmax in-graph at the stride, nearest upsample) is the fast path of the same network
    assert abs(v["raw"]["agreement_vs_exact"] - v["float/fast"]["agreement_vs_exact"]) < 0.02
    on_disk = json.loads((tmp_path / "out" / "io_modes.json").read_text())
    assert on_disk["variants"]["raw"]["latency"]["n"] == 3
    assert "| raw/upsample |" in (tmp_path / "out" / "io_modes.md").read_text()
    assert on_disk["postprocess_only"]["exact"]["n"] == 3 and "Post-processing alone" in io_modes.to_markdown(res)
