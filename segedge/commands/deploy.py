"""`segedge deploy deepstream|triton`: serving configs for an export folder (DeepStream nvinfer, Triton)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import console

deploy_app = typer.Typer(help="Write serving configs for an export folder: DeepStream nvinfer or a Triton model "
                              "repository entry.", no_args_is_help=True)

TARGET_HELP = "Target of the export folder to serve (default: its only target)."


@deploy_app.command("deepstream")
def deepstream_cmd(
    export_dir: Path = typer.Argument(..., help="Export folder written by `segedge export`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the nvinfer config, labels and deployed ONNX."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help=TARGET_HELP),
    frames: Optional[str] = typer.Option(None, "--frames",
                                         help="Frames the folded graph is checked on: image folder, video or "
                                              "DATASET:ROOT[:SPLIT] (default: the street frames shipped with "
                                              "segedge)."),
    frame_count: int = typer.Option(8, "--frame-count", min=1, help="How many frames to check on."),
    batch_size: int = typer.Option(1, "--batch-size", min=1,
                                   help="nvinfer batch-size (>1 needs a dynamic-batch export)."),
    gie_id: int = typer.Option(1, "--gie-id", min=1, help="nvinfer gie-unique-id."),
    threshold: float = typer.Option(0.0, "--threshold", min=0.0, max=1.0,
                                    help="segmentation-threshold on class probabilities (0: plain argmax)."),
    engine: Optional[str] = typer.Option(None, "--engine",
                                         help="model-engine-file: an engine nvinfer built from the deployed ONNX "
                                              "on this GPU (path relative to --out or absolute)."),
) -> None:
    """DeepStream nvinfer config (network-type=2) with the normalisation folded into the first conv, proved on
    real frames with ONNX Runtime."""
    from ..deploy.deepstream import write_deepstream

    res = write_deepstream(export_dir, out, target, frames, frame_count, batch_size, gie_id, threshold, engine)
    chk = res.check
    console.print(f"wrote {res.config} (+ {res.onnx.name}, {res.labels.name}, {res.check_file.name})", highlight=False)
    console.print(f"deployed graph vs {chk['source_graph']}: max |Δlogits| {chk['max_abs_diff']:.3g}, argmax "
                  f"agreement {chk['argmax_agreement']:.2%} on {len(chk['frames'])} frames", highlight=False)


@deploy_app.command("triton")
def triton_cmd(
    export_dir: Path = typer.Argument(..., help="Export folder written by `segedge export`."),
    out: Path = typer.Option(..., "--out", "-o", help="Triton model repository (created if missing)."),
    target: Optional[str] = typer.Option(None, "--target", "-t", help=TARGET_HELP),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in the repository (default MODEL-TARGET)."),
    instances: int = typer.Option(1, "--instances", min=1, help="instance_group count."),
    kind: str = typer.Option("auto", "--kind", help="instance_group kind: auto | cpu | gpu."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", min=1,
                                                 help="max_batch_size for a dynamic-batch export (default 8)."),
) -> None:
    """Triton model-repository entry: config.pbtxt + 1/model.<onnx|xml+bin|plan>, checked with Triton's protobuf."""
    from ..deploy.triton import write_triton

    res = write_triton(export_dir, out, target, name, instances, kind, max_batch_size)
    files = ", ".join(str(f.relative_to(res.model_dir)) for f in res.files)
    console.print(f"wrote {res.config} (+ {files})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `segedge deploy` to the CLI."""
    app.add_typer(deploy_app, name="deploy")
