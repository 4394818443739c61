"""`segedge tune EXPORT_DIR`: measure the CPU candidates on this machine and add the fastest within budget as `cpu`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer


def tune_cmd(
    export_dir: Path = typer.Argument(..., help="Export folder written by `segedge export` (float io)."),
    val: Path = typer.Option(..., "--val", help="Labelled dataset folder (e.g. CamVid): every candidate's mIoU drop "
                                                "is measured on it (alternate frames: budget set / held back)."),
    val_count: int = typer.Option(32, "--val-count", min=2, help="Labelled frames used (half choose, half report)."),
    max_miou_drop: Optional[float] = typer.Option(None, "--max-miou-drop", metavar="PP",
                                                  help="mIoU budget in points on the budget set (default 0.3)."),
    calib: Optional[str] = typer.Option(None, "--calib", help="Calibration frames for the INT8 candidates (default: "
                                                              "the source the folder was calibrated on)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="A QAT checkpoint the folder was exported from, "
                                                                  "when it has moved (its learned ranges)."),
    candidates: Optional[str] = typer.Option(None, "--cpu-candidates", help="Globs of candidates to try (default all)."),
    threads: Optional[str] = typer.Option(None, "--cpu-threads", help="Thread counts to try: auto (1 and 2) or e.g. "
                                                                      "'1,4'."),
    iters: Optional[int] = typer.Option(None, "--cpu-iters", min=1, help="Timed calls per candidate (default 20)."),
) -> None:
    """Build every CPU candidate (ONNX Runtime / OpenVINO, FP32 / INT8 schemes, precision hints, threads), time them
    here, measure their drop and add the fastest within the budget to the folder as target `cpu` (the runtime's
    default from then on); the candidate table and plot go to cpu-tune.md / .png."""
    from rich.console import Console

    from ..tune.folder import tune_folder
    from .export import print_result

    console = Console(stderr=True, log_path=False)
    given = {"cpu_candidates": candidates, "cpu_threads": threads, "cpu_iters": iters}
    t0 = time.perf_counter()
    with console.status("tuning", spinner="dots") as status:
        def progress(msg: str) -> None:
            status.update(msg)
            console.log(msg)

        result = tune_folder(export_dir, val, val_count, calib, max_miou_drop,
                             {k: v for k, v in given.items() if v is not None}, progress, weights)
    print_result(result, console, time.perf_counter() - t0)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("tune")(tune_cmd)
