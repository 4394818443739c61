"""`segedge train`: train a model on a labelled dataset (CPU here, CUDA when present)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer


def train(
    model: str = typer.Option(..., "--model", help="Model name (segedge models lists them)."),
    data: Path = typer.Option(..., "--data", help="Dataset root folder."),
    dataset: str = typer.Option("camvid", "--dataset", help="camvid | cityscapes | ade20k | folder"),
    input_size: str = typer.Option("384x512", "--input-size",
                                   help="Model input HxW (scale 1.0 of the augmentation), at most 4096 per side."),
    crop_size: Optional[str] = typer.Option(None, "--crop-size",
                                            help="Training crop HxW (default: input size), at most 4096 per side."),
    epochs: int = typer.Option(0, "--epochs", help="Schedule length in epochs (or use --iters)."),
    iters: int = typer.Option(0, "--iters", help="Schedule length in iterations."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Images per iteration (memory is estimated and "
                                   "a batch the machine cannot hold is refused before training)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak AdamW learning rate, in (0, 1] (default 2e-3; with "
                                       "--qat 1e-5, or 5e-5 for --qat-loss labels)."),
    weight_decay: float = typer.Option(0.01, "--weight-decay", help="AdamW weight decay, >= 0."),
    warmup_iters: Optional[int] = typer.Option(None, "--warmup-iters",
                                               help="Linear warm-up length, >= 0 (default 300; 20 with --qat)."),
    val_every: int = typer.Option(500, "--val-every", min=1, help="Validate (and checkpoint) every N iterations."),
    class_weighting: str = typer.Option("sqrt-median", "--class-weighting", help="sqrt-median | none"),
    amp: str = typer.Option("none", "--amp",
                            help="none | bf16 (CPU with AVX-512 BF16, ≈2× for SegFormer) | fp16 (CUDA only)"),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="For --dataset folder without classes.json."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Initialise the backbone from a checkpoint (with "
                                           "--qat: the trained FP32 model to fine-tune)."),
    qat: bool = typer.Option(False, "--qat", help="Quantization-aware fine-tuning of --weights: fake-quant matching "
                             "--qat-target's INT8 scheme, learned activation ranges saved in the checkpoints for "
                             "`segedge export --target qdq|ort-int8`. Short schedules: e.g. --iters 300 "
                             "--batch-size 4."),
    qat_target: Optional[str] = typer.Option(None, "--qat-target",
                                             help="qdq (TensorRT: s8 per-channel weights, s8 symmetric activations) "
                                             "| ort-int8 (u8s8); default qdq."),
    qat_loss: Optional[str] = typer.Option(None, "--qat-loss",
                                           help="distill (default: KL to the frozen --weights model, which learns to "
                                           "reproduce it under INT8) | labels (cross-entropy) | mixed (distill + "
                                           "--qat-ce-weight x cross-entropy)."),
    qat_temperature: float = typer.Option(1.0, "--qat-temperature", help="Softmax temperature of the distillation."),
    qat_ce_weight: float = typer.Option(0.1, "--qat-ce-weight", help="Label cross-entropy weight of --qat-loss mixed."),
    qat_scale_lr: Optional[float] = typer.Option(None, "--qat-scale-lr",
                                                 help="Peak lr of the learned activation scales (default 5e-5 for "
                                                 "distill/mixed, --lr for labels)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads, >= 1 (default: all)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("runs/train"), "--out", help="Run folder: best/last checkpoints, logs, summary."),
    resume: bool = typer.Option(False, "--resume", help="Continue exactly from out/last.safetensors + train_state.pt "
                                "(a pair that does not match is refused)."),
    strict: bool = typer.Option(False, "--strict", help="Fail on unreadable samples instead of skipping them."),
) -> None:
    """Train with AdamW + poly schedule, augmentation, periodic val mIoU; best/last checkpoints in segedge format."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..training.config import TrainConfig, validate_config
    from . import parse_size_strict

    from ..training.config import check_qat_loss, qat_defaults

    for flag, value in (("--qat-target", qat_target), ("--qat-loss", qat_loss), ("--qat-scale-lr", qat_scale_lr)):
        if value is not None and not qat:
            from ..errors import SegedgeError

            raise SegedgeError(f"{flag} only applies to quantization-aware fine-tuning: add --qat (and --weights)")
    qat_loss = check_qat_loss(qat_loss or "distill")
    # QAT starts from a trained model: a small learning rate and a short warm-up keep step 0 close to PTQ.
    defaults = qat_defaults(qat_loss) if qat else {"lr": 2e-3, "qat_scale_lr": None, "warmup_iters": 300}
    lr = lr if lr is not None else defaults["lr"]
    qat_scale_lr = qat_scale_lr if qat_scale_lr is not None else defaults["qat_scale_lr"]
    warmup_iters = warmup_iters if warmup_iters is not None else defaults["warmup_iters"]
    cfg = TrainConfig(
        model=model, data=str(data), dataset=dataset, out=str(out), iters=iters, epochs=epochs,
        batch_size=batch_size, strict=strict,
        lr=lr, weight_decay=weight_decay, warmup_iters=warmup_iters, val_every=val_every,
        class_weighting=class_weighting, amp=amp, num_classes=num_classes, weights=str(weights) if weights else None,
        threads=threads, seed=seed, qat=qat, qat_target=qat_target or "qdq",
        qat_loss=qat_loss, qat_temperature=qat_temperature, qat_ce_weight=qat_ce_weight, qat_scale_lr=qat_scale_lr,
        command="segedge " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    validate_config(cfg)  # the plain options first, before torch is imported: a bad flag is reported at once
    cfg.input_size = parse_size_strict(input_size)
    cfg.crop_size = parse_size_strict(crop_size) if crop_size else None

    from ..training.trainer import Trainer

    console = Console(stderr=True)
    # The bar lives on stderr and only on a terminal; the log lines (every 20 iterations) serve nohup'd runs.
    with Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:.1f} img/s"), TimeRemainingColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("train", total=None, loss=float("nan"), ips=0.0)

        def progress(done: int, total: int, loss: float, ips: float) -> None:
            bar.update(task, completed=done, total=total, loss=loss, ips=ips)

        trainer = Trainer(cfg, log=lambda line: bar.console.print(line, highlight=False, markup=False),
                          progress=progress)
        summary = trainer.run(resume=resume)
    typer.echo(f"best val mIoU {summary['best_miou']:.4f}; checkpoints in {out}")
    if qat:
        typer.echo(f"learned {cfg.qat_target} ranges are in the checkpoints: segedge export --model {cfg.model} "
                   f"--weights {out / 'best.safetensors'} --target {cfg.qat_target}")


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("train")(train)
