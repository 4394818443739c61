"""`segedge train`: AdamW + poly schedule with warm-up, scale/crop/flip/photometric augmentation, class-balanced
cross-entropy, periodic validation, best/last checkpoints in segedge's format, exact resume.

Determinism: every iteration draws its samples and augmentation from RNGs seeded by (seed, iteration), so a run
resumed from its last checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__
from ..data.datasets import IGNORE_INDEX, SegDataset, open_dataset
from ..data.transforms import augment, normalize_batch
from ..errors import SegedgeError
from ..evaluation import evaluate, torch_predictor
from ..io import atomic_path, write_json_atomic
from ..models import IMAGENET_MEAN, IMAGENET_STD, create_model, get_spec, save_checkpoint, validate_input_size


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved with every checkpoint)."""

    model: str
    data: str
    dataset: str = "camvid"
    out: str = "runs/train"
    input_size: tuple[int, int] = (384, 512)
    crop_size: tuple[int, int] | None = None  # default: input_size
    iters: int = 0
    epochs: int = 0
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_iters: int = 300
    poly_power: float = 1.0
    scale_range: tuple[float, float] = (0.5, 2.0)
    class_weighting: str = "sqrt-median"  # or "none"
    amp: str = "none"  # "bf16": autocast (≈2× faster for SegFormer on AVX-512-BF16 CPUs); "fp16" on CUDA
    val_every: int = 500
    val_limit: int | None = None
    seed: int = 0
    threads: int | None = None
    train_split: str = "train"
    val_split: str = "val"
    num_classes: int | None = None
    weights: str | None = None
    log_every: int = 20
    strict: bool = False  # unreadable samples: error instead of skip
    command: str = ""
    extra: dict = field(default_factory=dict)


def poly_lr(it: int, total: int, base: float, warmup: int, power: float) -> float:
    """Linear warm-up then polynomial decay to zero."""
    if it < warmup:
        return base * (0.01 + 0.99 * it / max(1, warmup))
    return base * (1 - (it - warmup) / max(1, total - warmup)) ** power


def class_weights(labels: list[np.ndarray], num_classes: int, mode: str) -> torch.Tensor | None:
    """Per-class loss weights from pixel frequencies: sqrt of median-frequency balancing, clipped to [0.25, 8]."""
    if mode == "none":
        return None
    counts = np.zeros(num_classes, np.float64)
    for lab in labels:
        c = np.bincount(lab.ravel(), minlength=256)[:num_classes]
        counts += c
    freq = counts / max(counts.sum(), 1)
    freq = np.where(freq > 0, freq, np.nan)
    w = np.sqrt(np.nanmedian(freq) / freq)
    w = np.nan_to_num(w, nan=1.0)
    return torch.tensor(np.clip(w, 0.25, 8.0), dtype=torch.float32)


class Trainer:
    """Runs one training job described by a TrainConfig; `run()` trains, validates, checkpoints, resumes."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] | None = None,
                 progress: Callable[[int, int, float, float], None] | None = None) -> None:
        self.cfg = cfg
        self.log = log or (lambda s: print(s, flush=True))
        self.progress = progress  # (iterations done, total, loss, images/s) after every iteration
        for flag, v in (("--batch-size", cfg.batch_size), ("--val-every", cfg.val_every), ("--log-every", cfg.log_every)):
            if int(v) < 1:
                raise SegedgeError(f"{flag} must be at least 1, got {v}")
        if cfg.lr <= 0:
            raise SegedgeError(f"--lr must be positive, got {cfg.lr}")
        spec = get_spec(cfg.model)
        cfg.model = spec.name
        cfg.input_size = validate_input_size(spec.name, tuple(cfg.input_size))
        cfg.crop_size = validate_input_size(spec.name, tuple(cfg.crop_size or cfg.input_size))
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))
        self.out = Path(cfg.out)
        self.train_ds: SegDataset = open_dataset(cfg.dataset, cfg.data, cfg.train_split, num_classes=cfg.num_classes,
                                                 strict=cfg.strict)
        self.val_ds: SegDataset | None = None
        try:
            self.val_ds = open_dataset(cfg.dataset, cfg.data, cfg.val_split, num_classes=cfg.num_classes,
                                       strict=cfg.strict)
        except SegedgeError as e:
            self.log(f"no validation split ({e}); validation skipped")
        self.num_classes = self.train_ds.num_classes
        self.class_names = self.train_ds.class_names
        if cfg.iters <= 0:
            if cfg.epochs <= 0:
                raise SegedgeError("give the schedule length: --epochs N or --iters N")
            cfg.iters = int(math.ceil(cfg.epochs * len(self.train_ds) / cfg.batch_size))
        torch.manual_seed(cfg.seed)  # the random init is part of the run's identity
        self.model = create_model(spec.name, num_classes=self.num_classes, weights=cfg.weights,
                                  backbone_only=bool(cfg.weights))
        self.mean, self.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if cfg.amp not in amp:
            raise SegedgeError(f"unknown --amp '{cfg.amp}': choose none, bf16 or fp16")
        self.amp_dtype = amp[cfg.amp]
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.999))
        self.start_iter = 0
        self.best_miou = -1.0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.losses: list[float] = []  # per-iteration loss of this process (for callers and tests)
        self.wall_before = 0.0  # wall seconds spent by earlier (resumed) processes of this run
        self.run_start = time.time()

    # ---- data -------------------------------------------------------------------------------------------------
    def _preload(self) -> None:
        self.log(f"loading {len(self.train_ds)} training samples from {self.train_ds.root}")
        self.images, self.labels = [], []
        for img, lab in self.train_ds:
            self.images.append(img)
            self.labels.append(lab)
        if not self.images:
            raise SegedgeError(f"no readable training samples in {self.train_ds.root}")
        if self.train_ds.skipped_note():
            self.log("note: " + self.train_ds.skipped_note())
        w = class_weights(self.labels, self.num_classes, self.cfg.class_weighting)
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=w.to(self.device) if w is not None else None,
                                                 ignore_index=IGNORE_INDEX)
        if w is not None:
            self.log("class weights: " + ", ".join(f"{n}={v:.2f}" for n, v in zip(self.class_names, w.tolist())))

    def _batch(self, it: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, it])
        n = len(self.images)
        # Epoch-wise permutation so every sample is seen once per epoch, reproducible from the iteration alone.
        per_epoch = max(1, n // cfg.batch_size)
        epoch, pos = divmod(it, per_epoch)
        perm = np.random.default_rng([cfg.seed, 10**6 + epoch]).permutation(n)
        idx = perm[pos * cfg.batch_size:(pos + 1) * cfg.batch_size]
        imgs, labs = [], []
        for i in idx:
            a, b = augment(self.images[i], self.labels[i], cfg.input_size, cfg.crop_size, rng, tuple(cfg.scale_range))
            imgs.append(a)
            labs.append(b)
        x = normalize_batch(imgs, self.mean, self.std)
        y = torch.from_numpy(np.stack(labs).astype(np.int64))
        return x.to(self.device), y.to(self.device)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _meta(self, it: int, miou: float | None) -> dict:
        return {
            "model": self.cfg.model, "num_classes": self.num_classes, "class_names": self.class_names,
            "input_size": list(self.cfg.input_size), "mean": self.mean, "std": self.std,
            "ln_eps": getattr(self.model, "ln_eps", None), "dataset": self.cfg.dataset,
            "iteration": it, "val_miou": miou, "segedge_version": __version__,
            "provenance": {"trained_by": "segedge train", "command": self.cfg.command, "config": asdict(self.cfg)},
        }

    def _save_state(self, it: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.model, self.out / "last.safetensors", self._meta(it, self.history[-1]["miou"]
                                                                                if self.history else None))
        state = {"iteration": it, "optimizer": self.opt.state_dict(), "best_miou": self.best_miou,
                 "elapsed": self.elapsed, "wall": self.wall_seconds(), "history": json.dumps(self.history)}
        with atomic_path(self.out / "train_state.pt") as tmp:
            torch.save(state, tmp)

    def _try_resume(self) -> None:
        st = self.out / "train_state.pt"
        last = self.out / "last.safetensors"
        if not (st.exists() and last.exists()):
            self.log(f"nothing to resume in {self.out}; starting from scratch")
            return
        from ..models import load_into, read_checkpoint

        load_into(self.model, read_checkpoint(last, self.cfg.model))
        try:
            state = torch.load(st, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for truncated/corrupt files
            raise SegedgeError(f"cannot resume: {st} is unreadable ({str(e).splitlines()[0][:120]}); the run cannot "
                               "continue exactly: start it again without --resume (or with another --out)") from None
        self.opt.load_state_dict(state["optimizer"])
        self.start_iter = int(state["iteration"])
        self.best_miou = float(state["best_miou"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.wall_before = float(state.get("wall", 0.0))
        self.history = json.loads(state.get("history", "[]"))
        self.log(f"resumed from iteration {self.start_iter} (best val mIoU {self.best_miou:.4f})")

    def wall_seconds(self) -> float:
        """Wall-clock seconds of the whole run so far, validation included, across resumes."""
        return self.wall_before + time.time() - self.run_start

    # ---- validation -------------------------------------------------------------------------------------------
    def validate(self) -> dict | None:
        """Val mIoU at the training input size, evaluated at label resolution."""
        if self.val_ds is None:
            return None
        self.model.eval()
        m = evaluate(torch_predictor(self.model, self.cfg.input_size, self.mean, self.std), self.val_ds,
                     limit=self.cfg.val_limit)
        self.model.train()
        return m.as_dict()

    # ---- loop -------------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        """Train to cfg.iters; returns the final summary (also written to out/summary.json)."""
        cfg = self.cfg
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SegedgeError(f"cannot create the run folder {self.out}: {e.strerror or e}; choose another --out") \
                from None
        write_json_atomic(self.out / "config.json", asdict(cfg))
        self.run_start = time.time()
        if resume:
            self._try_resume()
        self._preload()
        self.model.train()
        t_last = time.time()
        loss_acc, n_acc = 0.0, 0
        for it in range(self.start_iter, cfg.iters):
            torch.manual_seed(cfg.seed * 1_000_003 + it)  # dropout / drop-path reproducible per iteration
            lr = poly_lr(it, cfg.iters, cfg.lr, cfg.warmup_iters, cfg.poly_power)
            for g in self.opt.param_groups:
                g["lr"] = lr
            x, y = self._batch(it)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits = self.model(x)
            logits = torch.nn.functional.interpolate(logits.float(), size=y.shape[1:], mode="bilinear",
                                                     align_corners=False)
            loss = self.loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise SegedgeError(f"loss became {loss.item()} at iteration {it}; lower --lr")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_value = loss.item()
            loss_acc += loss_value
            self.losses.append(loss_value)
            n_acc += 1
            done = it + 1
            if self.progress is not None:
                self.progress(done, cfg.iters, loss_value, n_acc * cfg.batch_size / max(time.time() - t_last, 1e-9))
            if done % cfg.log_every == 0 or done == cfg.iters:
                now = time.time()
                dt = now - t_last
                self.elapsed += dt
                t_last = now
                ips = n_acc * cfg.batch_size / max(dt, 1e-9)
                eta = (cfg.iters - done) * cfg.batch_size / max(ips, 1e-9)
                self.log(f"iter {done}/{cfg.iters} loss {loss_acc / n_acc:.4f} lr {lr:.2e} "
                         f"{ips:.2f} img/s eta {eta / 60:.1f} min")
                loss_acc, n_acc = 0.0, 0
            if done % cfg.val_every == 0 or done == cfg.iters:
                metrics = self.validate()
                t_last = time.time()  # validation time is not training throughput
                if metrics is not None:
                    miou = metrics["miou"]
                    self.history.append({"iteration": done, "miou": miou, "elapsed_s": round(self.elapsed, 1)})
                    self.log(f"val mIoU {miou:.4f} at iteration {done}: " + ", ".join(
                        f"{k}={v:.3f}" if v is not None else f"{k}=n/a" for k, v in metrics["per_class_iou"].items()))
                    if miou > self.best_miou:
                        self.best_miou = miou
                        save_checkpoint(self.model, self.out / "best.safetensors", self._meta(done, miou))
                        write_json_atomic(self.out / "best_metrics.json", {"iteration": done, **metrics})
                self._save_state(done)
        summary = {"iterations": cfg.iters, "best_miou": self.best_miou, "train_seconds": round(self.elapsed, 1),
                   "wall_seconds": round(self.wall_seconds(), 1), "epochs": round(cfg.iters * cfg.batch_size / len(self.images), 2),
                   "history": self.history}
        write_json_atomic(self.out / "summary.json", summary)
        return summary


def main_from_args(argv: list[str] | None = None) -> None:
    """Minimal argparse entry used for background jobs (the Typer `segedge train` command wraps the same config)."""
    import argparse

    from ..models import parse_size

    ap = argparse.ArgumentParser(prog="python -m segedge.training.trainer")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--out", required=True)
    ap.add_argument("--input-size", default="384x512")
    ap.add_argument("--crop-size", default=None)
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup-iters", type=int, default=300)
    ap.add_argument("--val-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--class-weighting", default="sqrt-median")
    ap.add_argument("--amp", default="none")
    ap.add_argument("--val-limit", type=int, default=None)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args(argv)
    cfg = TrainConfig(model=a.model, data=a.data, dataset=a.dataset, out=a.out, input_size=parse_size(a.input_size),
                      crop_size=parse_size(a.crop_size) if a.crop_size else None, iters=a.iters, epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, warmup_iters=a.warmup_iters, val_every=a.val_every,
                      seed=a.seed, threads=a.threads, class_weighting=a.class_weighting, amp=a.amp, val_limit=a.val_limit,
                      command="segedge train " + " ".join(argv if argv is not None else sys.argv[1:]))
    Trainer(cfg).run(resume=a.resume)


if __name__ == "__main__":
    main_from_args()
