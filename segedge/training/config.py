"""The definition of a training run (TrainConfig) and the checks of its options. No torch import here."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SegedgeError
from .limits import MAX_CLASSES, MAX_SCALE, MAX_SEED, MAX_THREADS, check_float, check_int, check_side_limit

AMP_CHOICES = ("none", "bf16", "fp16")
QAT_TARGETS = ("qdq", "ort-int8")  # the INT8 targets `--qat` can match (segedge.training.qat)
QAT_LOSSES = ("distill", "labels", "mixed")  # the QAT objective (segedge.training.qat.qat_loss)
# Settings that shape the trajectory: resuming with a different value gives a run no uninterrupted run would give.
TRAJECTORY_FIELDS = ("model", "dataset", "input_size", "crop_size", "iters", "batch_size", "lr", "weight_decay",
                     "warmup_iters", "poly_power", "scale_range", "class_weighting", "amp", "seed", "num_classes", "qat",
                     "qat_target", "qat_loss", "qat_temperature", "qat_ce_weight", "qat_scale_lr")


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
    qat: bool = False  # quantization-aware fine-tuning of --weights (segedge.training.qat)
    qat_target: str = "qdq"  # the INT8 target whose scheme the fake-quant matches: qdq | ort-int8
    qat_loss: str = "distill"  # distill: KL to the frozen --weights model; labels: cross-entropy; mixed: both
    qat_temperature: float = 1.0  # softmax temperature of the distillation KL
    qat_ce_weight: float = 0.1  # weight of the label cross-entropy under --qat-loss mixed
    qat_scale_lr: float | None = None  # peak lr of the learned activation scales (None: --lr)
    extra: dict = field(default_factory=dict)


def validate_config(cfg: TrainConfig) -> None:
    """Check the options of a run before anything is loaded (no torch import: the CLI calls it first, so a bad flag
    is reported at once); one-line SegedgeError naming the option and the fix. Normalises types in place. The
    Trainer adds what needs the model or the machine: size multiples, fp16 needs CUDA, memory."""
    cfg.batch_size = check_int("--batch-size", cfg.batch_size, low=1, high=4096)
    cfg.iters = check_int("--iters", cfg.iters, low=0, hint="give a positive schedule length")
    cfg.epochs = check_int("--epochs", cfg.epochs, low=0, hint="give a positive schedule length")
    if cfg.iters == 0 and cfg.epochs == 0:
        raise SegedgeError("give the schedule length: --epochs N or --iters N")
    cfg.lr = check_float("--lr", cfg.lr, high=1.0, hint="typical AdamW values are 6e-5 to 6e-3")
    cfg.weight_decay = check_float("--weight-decay", cfg.weight_decay, low_inclusive=True,
                                   hint="typical values are 0.01 to 0.05, 0 for none")
    cfg.warmup_iters = check_int("--warmup-iters", cfg.warmup_iters, low=0)
    cfg.poly_power = check_float("--poly-power", cfg.poly_power, high=100.0, hint="1.0 is linear decay")
    try:
        lo, hi = (float(v) for v in cfg.scale_range)
    except (TypeError, ValueError) as e:
        raise SegedgeError(f"scale_range must be two numbers (low, high), got {cfg.scale_range!r}") from e
    lo = check_float("scale_range low", lo, high=MAX_SCALE)
    hi = check_float("scale_range high", hi, high=MAX_SCALE)
    if lo > hi:
        raise SegedgeError(f"scale_range ({lo}, {hi}) is reversed: give (low, high), e.g. (0.5, 2.0)")
    cfg.scale_range = (lo, hi)
    cfg.val_every = check_int("--val-every", cfg.val_every, low=1)
    cfg.log_every = check_int("--log-every", cfg.log_every, low=1)
    if cfg.val_limit is not None:
        cfg.val_limit = check_int("--val-limit", cfg.val_limit, low=1, hint="omit it to validate on every frame")
    cfg.seed = check_int("--seed", cfg.seed, low=0, high=MAX_SEED)
    if cfg.threads is not None:
        cfg.threads = check_int("--threads", cfg.threads, low=1, high=MAX_THREADS,
                                hint="omit it to use every core")
    if cfg.num_classes is not None:
        cfg.num_classes = check_int("--num-classes", cfg.num_classes, low=1, high=MAX_CLASSES,
                                    hint="labels are 8-bit with 255 as ignore")
    cfg.class_weighting = str(cfg.class_weighting).strip().lower()
    if cfg.class_weighting not in ("sqrt-median", "none"):
        raise SegedgeError(f"unknown --class-weighting '{cfg.class_weighting}': choose sqrt-median or none")
    cfg.amp = str(cfg.amp).strip().lower()
    if cfg.amp not in AMP_CHOICES:
        raise SegedgeError(f"unknown --amp '{cfg.amp}': choose none, bf16 or fp16")
    _validate_qat(cfg)
    for flag, size in (("--input-size", cfg.input_size), ("--crop-size", cfg.crop_size)):
        if size is not None:
            check_side_limit(flag, size)


def _validate_qat(cfg: TrainConfig) -> None:
    """--qat fine-tunes a trained model in float32 for one INT8 target."""
    cfg.qat_target = str(cfg.qat_target).strip().lower()
    if not cfg.qat:
        return
    check_qat_target(cfg.qat_target)
    cfg.qat_loss = check_qat_loss(cfg.qat_loss)
    cfg.qat_temperature = check_float("--qat-temperature", cfg.qat_temperature, high=100.0,
                                      hint="1 matches the teacher's probabilities as they are; 2-4 softens them")
    cfg.qat_ce_weight = check_float("--qat-ce-weight", cfg.qat_ce_weight, low_inclusive=True, high=100.0,
                                    hint="0.1 keeps the labels a small correction to the teacher")
    if cfg.qat_scale_lr is not None:
        cfg.qat_scale_lr = check_float("--qat-scale-lr", cfg.qat_scale_lr, high=1.0, hint="e.g. 5e-5")
    if not cfg.weights:
        raise SegedgeError("--qat fine-tunes a trained model: pass its checkpoint with --weights FP32.safetensors")
    if cfg.amp != "none":
        raise SegedgeError(f"--qat trains in float32 (fake-quant has no {cfg.amp} kernels): drop --amp {cfg.amp}")


def qat_defaults(loss: str) -> dict:
    """Default lr / activation-scale lr / warm-up of a QAT run for its objective. Distillation moves the weights 5×
    less than the labels recipe (1e-5: they only have to absorb the quantization error, and a larger step let them
    drift off the held-out drive), while the activation scales keep the labels recipe's 5e-5."""
    if check_qat_loss(loss) == "labels":
        return {"lr": 5e-5, "qat_scale_lr": None, "warmup_iters": 20}
    return {"lr": 1e-5, "qat_scale_lr": 5e-5, "warmup_iters": 20}


def check_qat_loss(loss: str) -> str:
    """`loss` when it is a QAT objective, else a one-line SegedgeError."""
    v = str(loss).strip().lower()
    if v not in QAT_LOSSES:
        raise SegedgeError(f"unknown --qat-loss '{loss}': choose one of {', '.join(QAT_LOSSES)}")
    return v


def check_qat_target(target: str) -> str:
    """`target` when QAT supports it, else a one-line SegedgeError."""
    t = str(target).strip().lower()
    if t not in QAT_TARGETS:
        raise SegedgeError(f"unknown --qat-target '{target}': choose one of {', '.join(QAT_TARGETS)}")
    return t
