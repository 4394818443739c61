"""A few real training iterations on synthetic data: loss goes down, checkpoints load, resume is exact."""

from __future__ import annotations

import torch

from segedge.models import create_model, read_checkpoint
from segedge.training.trainer import TrainConfig, Trainer, poly_lr


def _cfg(root, out, **kw):
    base = dict(model="b0", data=str(root), dataset="camvid", out=str(out), input_size=(64, 96), iters=6,
                batch_size=2, lr=1e-3, warmup_iters=2, val_every=3, seed=3, threads=2, scale_range=(0.75, 1.25),
                log_every=100)
    base.update(kw)
    return TrainConfig(**base)


def test_poly_schedule():
    assert poly_lr(0, 100, 1.0, 10, 1.0) == 0.01
    assert poly_lr(10, 100, 1.0, 10, 1.0) == 1.0
    assert poly_lr(55, 100, 1.0, 10, 1.0) == 0.5
    assert poly_lr(99, 100, 1.0, 10, 2.0) < 1e-3


def test_loss_decreases_and_checkpoint_loads(camvid_like, tmp_path):
    # 12 iterations bring the loss to ~0.12× its start (24 took a minute of the fast suite for nothing more)
    tr = Trainer(_cfg(camvid_like, tmp_path / "run", iters=12, lr=2e-3, scale_range=(1.0, 1.0)))
    summary = tr.run()
    first, last = sum(tr.losses[:4]) / 4, sum(tr.losses[-4:]) / 4
    assert last < first * 0.9, (first, last)
    best = tmp_path / "run" / "best.safetensors"
    ck = read_checkpoint(best, "b0")
    assert ck.format == "segedge" and ck.num_classes == 11 and ck.meta["class_names"][0] == "Sky"
    assert ck.meta["val_miou"] == summary["best_miou"]
    m = create_model("b0", weights=best)
    assert m.pretrained_cfg["input_size"] == [64, 96]


def test_resume_is_exact(camvid_like, tmp_path):
    straight = Trainer(_cfg(camvid_like, tmp_path / "a"))
    straight.run()
    part = Trainer(_cfg(camvid_like, tmp_path / "b"))
    # Interrupt the same 6-iteration schedule right after the checkpoint at iteration 3.
    import segedge.training.trainer as T

    class Stop(Exception):
        pass

    orig = T.Trainer._save_state

    def save_then_stop(self, it):
        orig(self, it)
        if it == 3:
            raise Stop

    T.Trainer._save_state = save_then_stop
    try:
        try:
            part.run()
        except Stop:
            pass
    finally:
        T.Trainer._save_state = orig
    resumed = Trainer(_cfg(camvid_like, tmp_path / "b"))
    resumed.run(resume=True)
    assert resumed.start_iter == 3
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_topformer_trains(camvid_like, tmp_path):
    tr = Trainer(_cfg(camvid_like, tmp_path / "t", model="topformer-t", input_size=(64, 128), iters=3, val_every=3))
    tr.run()
    assert (tmp_path / "t" / "last.safetensors").exists() and len(tr.losses) == 3


def test_release_writes_fp16_weights_and_a_card(camvid_like, tmp_path):
    from safetensors import safe_open

    from segedge.training.release import release_checkpoint

    Trainer(_cfg(camvid_like, tmp_path / "run", model="topformer-t", input_size=(64, 64), iters=2, val_every=2)).run()
    metrics = {"miou": 0.5, "pixel_acc": 0.75, "per_class_iou": {"Sky": 0.5, "Pole": None}}
    dst = release_checkpoint(tmp_path / "run", tmp_path / "rel" / "t.safetensors", metrics, 12.0, "a note",
                             n_train=6, n_val=3)
    with safe_open(str(dst), framework="pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} <= {"F16", "I64"}  # I64: BN counters
    card = dst.with_suffix(".md").read_text()
    for needle in ("CamVid train (6 images)", "val (3 images)", "2 iterations x batch 2 (≈ 1 epochs)",
                   "**50.00 %**", "| Pole | n/a |", "non-commercial", "12 min", "a note"):
        assert needle in card, needle
    m = create_model("topformer-t", weights=dst)
    assert m.pretrained_cfg["meta"]["val_miou"] == 0.5 and m.pretrained_cfg["num_classes"] == 11
