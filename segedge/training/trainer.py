"""`segedge train`: AdamW + poly schedule with warm-up, scale/crop/flip/photometric augmentation, class-balanced
cross-entropy, periodic validation, best/last checkpoints in segedge's format, exact resume.

Determinism: every iteration draws its samples and augmentation from RNGs seeded by (seed, iteration), so a run
resumed from its last checkpoint continues exactly as an uninterrupted one would.

Checkpoints are atomic as a pair. `last.safetensors` (weights) and `train_state.pt` (iteration, optimizer, scaler,
history, and the sha256 of the weights file it belongs to) are written in this order:

  1. the weights to `.last.safetensors.pending.tmp` (fsync'd);
  2. the state to a temp file, then renamed onto `train_state.pt`: the commit point;
  3. the pending weights renamed onto `last.safetensors`.

A kill before 2 leaves the old pair (the pending file is discarded, with a warning, at the next run); a kill between
2 and 3 leaves a committed state whose weights are in the pending file, so `--resume` finishes the rename; a kill
after 3 leaves the new pair. `--resume` checks the digest and refuses, in one line, a pair that does not match.
Temp files (`.<file>.*.tmp`) of an interrupted run are removed at the next run. Write failures (disk full, permission
denied) are one line naming the folder, the cause and the fix, and leave the previous pair intact.

Test hook: with SEGEDGE_TEST_PAUSE=<point>[@<iteration>] the process creates the file named by
SEGEDGE_TEST_PAUSE_FILE at that point and sleeps until it is killed (tests kill it there with SIGKILL). Points:
checkpoint:start, checkpoint:best-written, checkpoint:weights-written, checkpoint:state-tmp-written,
checkpoint:state-written, checkpoint:done.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from .. import __version__
from ..data.datasets import IGNORE_INDEX, SegDataset, open_dataset
from ..data.transforms import augment, normalize_batch
from ..errors import SegedgeError, first_line
from ..evaluation import evaluate, torch_predictor
from ..io import sha256_file
from ..models import IMAGENET_MEAN, IMAGENET_STD, create_model, get_spec, validate_input_size
from ..models.checkpoints import checkpoint_bytes
from .config import TRAJECTORY_FIELDS, TrainConfig, validate_config
from .limits import check_inference_memory, check_side_limit, check_training_memory, gib

if TYPE_CHECKING:
    from .qat import QatModel

LAST = "last.safetensors"
STATE = "train_state.pt"
BEST = "best.safetensors"
PENDING = ".last.safetensors.pending.tmp"  # weights of a checkpoint whose state may already be committed
RUN_FILES = (LAST, STATE, BEST, "best_metrics.json", "config.json", "summary.json")  # what a run writes
STATE_FORMAT = 2  # 2: the state carries the sha256 of its weights file
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


_WRITE_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space or choose another --out"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another --out"),
    errno.EACCES: ("permission denied", "make the folder writable or choose another --out"),
    errno.EPERM: ("operation not permitted", "make the folder writable or choose another --out"),
    errno.EROFS: ("read-only file system", "choose another --out on a writable disk"),
}


def write_error_text(e: OSError, what: str, folder: Path) -> str:
    """'cannot write <what> to <folder>: <cause> (<ERRNO>); <fix>' for an OSError raised while writing."""
    cause, fix = _WRITE_ERRORS.get(e.errno, ((e.strerror or first_line(e)).lower(),
                                             "check the disk or choose another --out"))
    code = errno.errorcode.get(e.errno, "") if e.errno else ""
    return f"cannot write {what} to {folder}: {cause}{f' ({code})' if code else ''}; {fix}"


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode("utf-8")


def _write_file(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, flushed to disk. Every write into the run folder goes through here (tests
    patch it to inject disk-full and permission errors)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _unlink_quietly(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            p.unlink()


def _fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (best effort: not every platform can fsync a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temp file beside `path`, then rename; the temp file never outlives a failure."""
    tmp = _tmp_name(path)
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(path.parent)


def _header_iteration(path: Path) -> int | None:
    """The training iteration recorded in a segedge checkpoint's header, or None (missing, unreadable, other)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return int(json.loads((f.metadata() or {})["segedge"])["iteration"])
    except Exception:  # noqa: BLE001 - any failure means "no usable iteration"
        return None


def _pause(point: str, it: int) -> None:
    """Test hook (see the module docstring): park the process at `point` until it is killed."""
    want = os.environ.get("SEGEDGE_TEST_PAUSE", "")
    if not want:
        return
    name, _, at = want.partition("@")
    if name != point or (at and at.strip() != str(it)):
        return
    flag = os.environ.get("SEGEDGE_TEST_PAUSE_FILE")
    if flag:
        Path(flag).write_text(f"{point}@{it} pid {os.getpid()}\n")
    deadline = time.monotonic() + float(os.environ.get("SEGEDGE_TEST_PAUSE_TIMEOUT", "300"))
    while time.monotonic() < deadline:
        time.sleep(0.05)
    raise SystemExit(f"SEGEDGE_TEST_PAUSE: nobody ended the pause at {point}")


class _OnDevice(torch.nn.Module):
    """Runs a model on its device for the CPU-tensor predictor used by validation; logits come back on the CPU."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.device)).float().cpu()


class Trainer:
    """Runs one training job described by a TrainConfig; `run()` trains, validates, checkpoints, resumes."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] | None = None,
                 progress: Callable[[int, int, float, float], None] | None = None) -> None:
        self.cfg = cfg
        self.log = log or (lambda s: print(s, flush=True))
        self.progress = progress  # (iterations done, total, loss, images/s) after every iteration
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        validate_config(cfg)
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise SegedgeError("--amp fp16 needs a CUDA GPU and none is available; on CPU use --amp bf16 (fastest on "
                               "CPUs with AVX-512 BF16) or --amp none")
        spec = get_spec(cfg.model)
        cfg.model = spec.name
        cfg.input_size = check_side_limit("--input-size", validate_input_size(spec.name, tuple(cfg.input_size)))
        cfg.crop_size = check_side_limit("--crop-size",
                                         validate_input_size(spec.name, tuple(cfg.crop_size or cfg.input_size)))
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
        # --weights initialises the backbone of a new run, or is the whole trained model that --qat fine-tunes.
        self.model = create_model(spec.name, num_classes=self.num_classes, weights=cfg.weights,
                                  backbone_only=bool(cfg.weights) and not cfg.qat)
        self.mean, self.std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        self.amp_dtype = AMP_DTYPES[cfg.amp]
        self._check_memory()
        self.model.to(self.device)
        self.teacher: torch.nn.Module | None = None  # the frozen original model of --qat-loss distill|mixed
        self.qat = self._prepare_qat(spec.family) if cfg.qat else None
        self._qat_resume: dict | None = None  # the ranges of the checkpoint a QAT run resumes from
        # fp16 autocast needs loss scaling or small gradients flush to zero; bf16 has fp32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or n.endswith(".bias") else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.qat is not None:  # the learned activation scales, at their own peak lr (lr_scale of --lr)
            groups.append({"params": list(self.qat.parameters()), "weight_decay": 0.0,
                           "lr_scale": (cfg.qat_scale_lr or cfg.lr) / cfg.lr})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
        self.start_iter = 0
        self.best_miou = -1.0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.losses: list[float] = []  # per-iteration loss of this process (for callers and tests)
        self.wall_before = 0.0  # wall seconds spent by earlier (resumed) processes of this run
        self.run_start = time.time()
        self.saved_iter: int | None = None  # iteration of the newest complete checkpoint pair on disk

    def _prepare_qat(self, family: str) -> "QatModel":
        """Fold/freeze BN and wrap the weighted ops in the target's fake-quant (segedge.training.qat)."""
        from .qat import QatObjective, make_teacher, prepare_qat

        cfg = self.cfg
        objective = QatObjective(cfg.qat_loss, cfg.qat_temperature, cfg.qat_ce_weight)
        if objective.needs_teacher:  # copied before BN folding: the teacher is exactly the --weights model
            self.teacher = make_teacher(self.model)
        h, w = cfg.input_size
        example = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(self.device)
        qat = prepare_qat(self.model, cfg.qat_target, family, cfg.model, example)
        qat.objective = objective
        self.log(f"QAT for {qat.scheme.target} ({qat.scheme.describe()['activations']} activations, "
                 f"{qat.scheme.describe()['weights']} weights): {len(qat.sites)} layers fake-quantized, "
                 f"{len(qat.kept_float)} kept float, {len(qat.folded_bn)} BatchNorms folded and frozen; "
                 f"objective {objective.describe()}")
        return qat.to(self.device)

    def _init_qat_ranges(self) -> None:
        """Step 0 == PTQ: MinMax on the export's default calibration frames, or the ranges of the resumed checkpoint."""
        if self._qat_resume is not None:
            n = self.qat.load_record(self._qat_resume)
            self.log(f"QAT: {n} learned ranges restored from the checkpoint")
            return
        from .qat import calibration_inputs

        gen, source = calibration_inputs(self.train_ds, self.cfg.input_size, self.mean, self.std)
        self.qat.calibrate(self.model, gen(), source)
        self.log(f"QAT: activation ranges initialised by MinMax on {source}")

    def _train_mode(self) -> None:
        """model.train(), with BatchNorm statistics frozen under QAT (segedge.training.qat explains why)."""
        self.model.train()
        if self.qat is not None:
            from .qat import freeze_batchnorm

            freeze_batchnorm(self.model)

    def _check_memory(self) -> None:
        """Refuse, before any large allocation, a batch/crop or input size the machine cannot hold."""
        cfg = self.cfg
        bh, bw = cfg.crop_size
        fix = "lower --batch-size or --crop-size" + (" (or use --amp bf16)" if cfg.amp == "none" else "")
        need = check_training_memory(self.model, cfg.batch_size, cfg.crop_size, self.num_classes,
                                     self.amp_dtype is not None, self.device,
                                     f"training {cfg.model} on batches of {cfg.batch_size} x {bh}x{bw}", fix)
        if self.val_ds is not None:
            ih, iw = cfg.input_size
            check_inference_memory(self.model, cfg.input_size, self.device, f"validating {cfg.model} at {ih}x{iw}",
                                   "lower --input-size")
        self.memory_estimate = need
        if need is not None:
            self.log(f"memory: at least {gib(need)} per training step (batch {cfg.batch_size} x {bh}x{bw})")

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
            **({"qat": self.qat.record()} if self.qat is not None else {}),
        }

    @contextlib.contextmanager
    def _disk(self, what: str) -> Iterator[None]:
        """Turn an OSError while writing into the run folder into one line naming the cause and the fix."""
        try:
            yield
        except OSError as e:
            intact = ""
            if what == "checkpoint" and self.saved_iter is not None:
                intact = f" (the checkpoint of iteration {self.saved_iter} is intact: --resume continues from it)"
            raise SegedgeError(write_error_text(e, what, self.out) + intact) from e

    def _save_best(self, it: int, miou: float, metrics: dict) -> None:
        with self._disk("checkpoint"):
            _atomic_write(self.out / BEST, checkpoint_bytes(self.model, self._meta(it, miou)))
            _atomic_write(self.out / "best_metrics.json", _json_bytes({"iteration": it, **metrics}))
        _pause("checkpoint:best-written", it)

    def _save_state(self, it: int) -> None:
        """Write last.safetensors + train_state.pt as a pair (see the module docstring for the order)."""
        _pause("checkpoint:start", it)
        weights = checkpoint_bytes(self.model, self._meta(it, self.history[-1]["miou"] if self.history else None))
        state = {"format_version": STATE_FORMAT, "iteration": it, "weights_file": LAST,
                 "weights_sha256": hashlib.sha256(weights).hexdigest(), "optimizer": self.opt.state_dict(),
                 "scaler": self.scaler.state_dict(), "best_miou": self.best_miou, "elapsed": self.elapsed,
                 "wall": self.wall_seconds(), "history": json.dumps(self.history),
                 "config": json.dumps(asdict(self.cfg), default=str)}
        buf = io.BytesIO()
        torch.save(state, buf)
        pending, state_tmp = self.out / PENDING, _tmp_name(self.out / STATE)
        with self._disk("checkpoint"):
            self.out.mkdir(parents=True, exist_ok=True)
            try:
                _write_file(pending, weights)
                _fsync_dir(self.out)
                _pause("checkpoint:weights-written", it)
                _write_file(state_tmp, buf.getvalue())
                _pause("checkpoint:state-tmp-written", it)
                os.replace(state_tmp, self.out / STATE)  # the commit point
            except BaseException:
                _unlink_quietly(pending, state_tmp)
                raise
            _fsync_dir(self.out)
            _pause("checkpoint:state-written", it)
            os.replace(pending, self.out / LAST)  # if this fails, --resume finishes it (the digest matches)
            _fsync_dir(self.out)
        self.saved_iter = it
        _pause("checkpoint:done", it)

    def _try_resume(self) -> None:
        st, last, pending = self.out / STATE, self.out / LAST, self.out / PENDING
        if not st.exists():
            if last.exists():
                self.log(f"warning: {last} has no {STATE} beside it, so it cannot be continued exactly; starting "
                         "from scratch (it will be overwritten)")
            else:
                self.log(f"nothing to resume in {self.out}; starting from scratch")
            return
        fresh = "the run cannot continue exactly: start it again without --resume (or with another --out)"
        try:
            state = torch.load(st, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch raises several types for truncated/corrupt files
            raise SegedgeError(f"cannot resume: {st} is unreadable ({first_line(e, 120)}); {fresh}") from e
        if not isinstance(state, dict) or "iteration" not in state or "optimizer" not in state:
            raise SegedgeError(f"cannot resume: {st} is not a segedge training state; {fresh}")
        it = int(state["iteration"])
        want = state.get("weights_sha256")
        if want is not None:
            if last.exists() and sha256_file(last) == want:
                pass
            elif pending.exists() and sha256_file(pending) == want:
                with self._disk("checkpoint"):
                    os.replace(pending, last)
                _fsync_dir(self.out)
                self.log(f"note: completed the interrupted checkpoint of iteration {it} (its weights were written "
                         f"but not yet renamed to {LAST})")
            else:
                raise SegedgeError(self._mismatch(last, it, fresh))
        elif _header_iteration(last) != it:  # a state written before pairs carried a digest: compare iterations
            raise SegedgeError(self._mismatch(last, it, fresh))
        if pending.exists():
            pit = _header_iteration(pending)
            self.log(f"warning: discarded an unfinished checkpoint{f' of iteration {pit}' if pit is not None else ''}"
                     f" ({PENDING}: the run was interrupted before its state was written); resuming from iteration "
                     f"{it}, so those iterations are trained again")
        from ..models import load_into, read_checkpoint

        ckpt = read_checkpoint(last, self.cfg.model)
        load_into(self.model, ckpt)
        if self.qat is not None:
            self._qat_resume = ckpt.meta.get("qat") or {}
        try:
            self.opt.load_state_dict(state["optimizer"])
            if self.scaler.is_enabled() and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise SegedgeError(f"cannot resume: the optimizer state in {st} does not fit this run "
                               f"({first_line(e, 120)}); {fresh}") from e
        self.start_iter = it
        self.saved_iter = it
        self.best_miou = float(state["best_miou"])
        self.elapsed = float(state.get("elapsed", 0.0))
        self.wall_before = float(state.get("wall", 0.0))
        self.history = json.loads(state.get("history", "[]"))
        self._warn_changed_settings(state.get("config"))
        self.log(f"resumed from iteration {self.start_iter} (best val mIoU {self.best_miou:.4f})")

    def _mismatch(self, last: Path, it: int, fresh: str) -> str:
        if not last.exists():
            what = f"{LAST} is missing"
        else:
            lit = _header_iteration(last)
            what = f"{LAST} is from iteration {lit}" if lit is not None else f"{LAST} is unreadable"
            if lit == it:
                what = f"{LAST} (iteration {lit}) is not the file {STATE} was written with"
        return f"cannot resume from {self.out}: {what} but {STATE} is from iteration {it}, so the pair does not " \
               f"match (an interrupted or mixed checkpoint); {fresh}"

    def _warn_changed_settings(self, saved_json: str | None) -> None:
        if not saved_json:
            return
        try:
            saved = json.loads(saved_json)
        except ValueError:
            return
        now = json.loads(json.dumps(asdict(self.cfg), default=str))
        changed = [f"{k} {saved.get(k)} -> {now.get(k)}" for k in TRAJECTORY_FIELDS
                   if k in saved and saved.get(k) != now.get(k)]
        if changed:
            self.log("warning: resuming with changed settings (" + ", ".join(changed) + "); the result will differ "
                     "from an uninterrupted run")

    def _clean_temp(self) -> None:
        """Remove temp files left in the run folder by an interrupted run: `.<artifact>.<anything>.tmp` for the
        artifacts a run writes (other hidden files in a shared --out are left alone)."""
        removed = []
        for p in sorted(self.out.glob(".*.tmp")):
            if p.is_file() and any(p.name.startswith(f".{name}.") for name in RUN_FILES):
                _unlink_quietly(p)
                removed.append(p.name)
        if removed:
            self.log(f"removed {len(removed)} temp file(s) left by an interrupted run: {', '.join(removed)}")

    def wall_seconds(self) -> float:
        """Wall-clock seconds of the whole run so far, validation included, across resumes."""
        return self.wall_before + time.time() - self.run_start

    # ---- validation -------------------------------------------------------------------------------------------
    def validate(self) -> dict | None:
        """Val mIoU at the training input size, evaluated at label resolution."""
        if self.val_ds is None:
            return None
        self.model.eval()
        model = self.model if self.device.type == "cpu" else _OnDevice(self.model, self.device)
        m = evaluate(torch_predictor(model, self.cfg.input_size, self.mean, self.std), self.val_ds,
                     limit=self.cfg.val_limit)
        self._train_mode()
        return m.as_dict()

    # ---- loop -------------------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits for a training batch (autocast per --amp)."""
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                return self.model(x)
        except ValueError as e:  # BatchNorm after global pooling (TopFormer) cannot normalise a single image
            if "more than 1 value per channel" not in str(e):
                raise
            raise SegedgeError(f"{self.cfg.model} cannot train on batches of {x.shape[0]} image: its BatchNorm layers "
                               "need at least 2 per batch; use --batch-size 2 or more") from e

    def _step_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one batch: class-weighted cross-entropy at label size, or the QAT objective (distillation
        from the frozen teacher at logit size, optionally plus cross-entropy)."""
        logits = self._forward(x)

        def ce() -> torch.Tensor:
            up = torch.nn.functional.interpolate(logits.float(), size=y.shape[1:], mode="bilinear",
                                                 align_corners=False)
            return self.loss_fn(up, y)

        if self.qat is None:
            return ce()
        teacher = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher(x)
        return self.qat.objective(logits, teacher, ce)

    def run(self, resume: bool = False) -> dict:
        """Train to cfg.iters; returns the final summary (also written to out/summary.json)."""
        cfg = self.cfg
        blocker = next((p for p in (self.out, *self.out.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise SegedgeError(f"cannot create the run folder {self.out}: {blocker} is a file; choose another --out")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SegedgeError(f"cannot create the run folder {self.out}: {e.strerror or e}; choose another --out") \
                from e
        with self._disk("the run config"):
            _atomic_write(self.out / "config.json", _json_bytes(asdict(cfg)))
        self.run_start = time.time()
        if resume:
            self._try_resume()
        self._clean_temp()
        self._preload()
        if self.qat is not None:
            self._init_qat_ranges()
        self._train_mode()
        t_last = time.time()
        loss_acc, n_acc = 0.0, 0
        for it in range(self.start_iter, cfg.iters):
            torch.manual_seed(cfg.seed * 1_000_003 + it)  # dropout / drop-path reproducible per iteration
            lr = poly_lr(it, cfg.iters, cfg.lr, cfg.warmup_iters, cfg.poly_power)
            for g in self.opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            x, y = self._batch(it)
            loss = self._step_loss(x, y)
            if not torch.isfinite(loss):
                raise SegedgeError(f"loss became {loss.item()} at iteration {it}; lower --lr")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # identity unless --amp fp16
            self.scaler.step(self.opt)
            self.scaler.update()
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
                        self._save_best(done, miou, metrics)
                self._save_state(done)
        summary = {"iterations": cfg.iters, "best_miou": self.best_miou, "train_seconds": round(self.elapsed, 1),
                   "wall_seconds": round(self.wall_seconds(), 1), "epochs": round(cfg.iters * cfg.batch_size / len(self.images), 2),
                   "history": self.history}
        with self._disk("the run summary"):
            _atomic_write(self.out / "summary.json", _json_bytes(summary))
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
    ap.add_argument("--weights", default=None)
    ap.add_argument("--qat", action="store_true")
    ap.add_argument("--qat-target", default="qdq")
    ap.add_argument("--qat-loss", default="distill")
    ap.add_argument("--qat-scale-lr", type=float, default=None)
    a = ap.parse_args(argv)
    cfg = TrainConfig(model=a.model, data=a.data, dataset=a.dataset, out=a.out, input_size=parse_size(a.input_size),
                      crop_size=parse_size(a.crop_size) if a.crop_size else None, iters=a.iters, epochs=a.epochs,
                      batch_size=a.batch_size, lr=a.lr, warmup_iters=a.warmup_iters, val_every=a.val_every,
                      seed=a.seed, threads=a.threads, class_weighting=a.class_weighting, amp=a.amp, val_limit=a.val_limit,
                      weights=a.weights, qat=a.qat, qat_target=a.qat_target, qat_loss=a.qat_loss,
                      qat_scale_lr=a.qat_scale_lr,
                      command="segedge train " + " ".join(argv if argv is not None else sys.argv[1:]))
    try:
        Trainer(cfg).run(resume=a.resume)
    except SegedgeError as e:
        print(f"error: {str(e).strip()}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main_from_args()
