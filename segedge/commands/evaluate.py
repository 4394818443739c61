"""`segedge eval`: mIoU and per-class IoU of a PyTorch checkpoint on a labelled dataset (exported artifacts: `segedge
bench --targets …`, which measures them against this same reference)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer


def evaluate_cmd(
    model: str = typer.Option(..., "--model", help="Model name (segedge models lists them)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Checkpoint; default: the embedded demo weights."),
    data: Path = typer.Option(..., "--data", help="Dataset root folder."),
    dataset: str = typer.Option("camvid", "--dataset", help="camvid | cityscapes | ade20k | folder"),
    split: str = typer.Option("val", "--split"),
    input_size: Optional[str] = typer.Option(None, "--input-size",
                                             help="HxW, at most 4096 per side (default: the checkpoint's)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="For --dataset folder without classes.json."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate the first N samples only."),
    strict: bool = typer.Option(False, "--strict", help="Fail on unreadable samples instead of skipping them."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Evaluate at the label's resolution: logits upsampled bilinearly to the label size, then argmax."""
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ..data.datasets import open_dataset
    from ..errors import SegedgeError
    from ..evaluation import evaluate, torch_predictor
    from ..models import create_model, get_spec, validate_input_size
    from ..training.limits import MAX_CLASSES, check_inference_memory, check_int, check_side_limit
    from . import parse_size_strict

    console = Console(stderr=True)
    # Cheap checks first: a bad flag is reported before the dataset or the weights are read.
    if num_classes is not None:
        check_int("--num-classes", num_classes, low=1, high=MAX_CLASSES, hint="labels are 8-bit with 255 as ignore")
    if limit is not None:
        check_int("--limit", limit, low=1, hint="omit it to evaluate every frame")
    if input_size is not None:
        validate_input_size(get_spec(model).name, check_side_limit("--input-size", parse_size_strict(input_size)))
    ds = open_dataset(dataset, data, split, num_classes=num_classes, strict=strict)
    net = create_model(model, weights=weights or "default")
    cfg = net.pretrained_cfg
    if cfg["num_classes"] != ds.num_classes:
        raise SegedgeError(f"the model predicts {cfg['num_classes']} classes but {ds.name} has {ds.num_classes}; "
                           "use weights trained on this dataset")
    size = validate_input_size(model, check_side_limit(
        "--input-size", parse_size_strict(input_size) if input_size else tuple(cfg["input_size"])))
    device = next(net.parameters()).device
    check_inference_memory(net, size, device, f"evaluating {cfg['model']} at {size[0]}x{size[1]}",
                           "use a smaller --input-size")
    if weights is None:  # after the checks, so that a refused run prints its error line alone
        console.print(f"using the embedded demo weights: {cfg['weights']}")
    pred = torch_predictor(net, size, cfg["mean"], cfg["std"])
    with Progress(console=console, transient=True, disable=as_json) as prog:
        task = prog.add_task(f"evaluating {cfg['model']} on {ds.name}/{split}", total=min(limit or len(ds), len(ds)))
        m = evaluate(pred, ds, limit=limit, progress=lambda i, n: prog.update(task, completed=i))
    n = min(limit or len(ds), len(ds))
    result = {"model": cfg["model"], "weights": cfg["weights"], "dataset": ds.name, "split": split,
              "samples": n - ds.skipped, "skipped": ds.skipped, "input_size": list(size), **m.as_dict()}
    if ds.skipped_note():
        console.print(f"[yellow]note:[/] {ds.skipped_note()}", highlight=False)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    table = Table(title=f"{cfg['model']} on {ds.name}/{split} at {size[0]}x{size[1]}")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("acc %", justify="right")
    for name, iou, acc in zip(m.class_names, m.iou, m.class_acc):
        table.add_row(name, "n/a" if iou != iou else f"{100 * iou:.1f}", "n/a" if acc != acc else f"{100 * acc:.1f}")
    Console().print(table)
    typer.echo(f"mIoU {100 * m.miou:.2f} %  pixel acc {100 * m.pixel_acc:.2f} %  mean acc {100 * m.mean_acc:.2f} %  "
               f"({result['samples']} images; {result['convention']})")


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("eval")(evaluate_cmd)
