"""`segedge quantize sensitivity`: which node groups of an export lose accuracy in INT8, ranked, with a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

quantize_app = typer.Typer(help="INT8 analysis of an export folder (sensitivity per node group).",
                           no_args_is_help=True)


@quantize_app.command("sensitivity")
def sensitivity_cmd(
    export_dir: Path = typer.Argument(..., help="Export folder with model.onnx and a calibration table."),
    target: str = typer.Option(..., "--target", "-t", help="INT8 flavour to analyse: ort-int8, qdq (the TensorRT "
                                                           "graph, which trt-int8 is built from), openvino-int8 or coreml-w8a8 (its PyTorch "
                                                           "fake-quant proxy)."),
    val: Path = typer.Option(..., "--val", help="Labelled dataset folder (e.g. CamVid) to measure mIoU on."),
    val_count: Optional[int] = typer.Option(None, "--val-count", min=1, help="Labelled frames to use (default: all)."),
    group_by: str = typer.Option("block", "--group-by", help="block (model-family blocks) | op (op types)."),
    threads: int = typer.Option(1, "--threads", min=1, help="ONNX Runtime threads (latency is measured with them)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
) -> None:
    """Quantize one group at a time and leave one group out at a time; Δ mIoU, agreement, SQNR (and latency for
    ort-int8) per group, written to EXPORT_DIR/sensitivity.<target>.json, .md and .png."""
    from ..errors import SegedgeError
    from ..export.sensitivity import SENSITIVITY_TARGETS, check_group_by, export_sensitivity, markdown_table
    from . import echo_json, err_console

    if target not in SENSITIVITY_TARGETS:
        raise SegedgeError(f"--target must be one of {', '.join(SENSITIVITY_TARGETS)}, got '{target}'")
    check_group_by(group_by)
    if not val.is_dir():
        raise SegedgeError(f"--val folder not found: {val}; pass a labelled dataset folder")
    if not export_dir.is_dir():
        raise SegedgeError(f"export folder not found: {export_dir}; pass the folder `segedge export` wrote")
    with err_console.status("measuring", spinner="dots") as status:
        report = export_sensitivity(export_dir, target, val, val_count, group_by, threads,
                                    progress=lambda m: status.update(m))
    if as_json:
        echo_json(report)
        return
    typer.echo(markdown_table(report))
    typer.echo("written: " + ", ".join(str(export_dir / f) for f in report.get("files", [])))


def register(app: typer.Typer) -> None:
    """Add `segedge quantize …` to the CLI."""
    app.add_typer(quantize_app, name="quantize")
