"""`segedge engine build`: build and check a TensorRT engine from an export folder's device bundle, on the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import echo_json, json_option

engine_app = typer.Typer(name="engine", help="TensorRT engines: build them on the device from an export's bundle.",
                         no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})


def summary_lines(entry: dict[str, Any]) -> list[str]:
    """What `engine build` prints: where the engine went, the build options, the figures against the reference."""
    block, v = entry.get("engine") or {}, entry.get("verification") or {}
    gpu = (block.get("built_on") or {}).get("gpu") or {}
    used = block.get("builder") or {}
    flags = "strongly typed" if used.get("strongly_typed") else ", ".join(
        k for k in ("fp16", "int8") if used.get(k)) + f", precision constraints {used.get('precision_constraints')}"
    lines = [f"engine: {entry['engine_path']} ({entry['size_bytes'] / 1e6:.1f} MB, built in "
             f"{block.get('build_seconds', 0):.0f} s on {gpu.get('name') or 'this GPU'} with TensorRT "
             f"{(block.get('built_on') or {}).get('tensorrt')}; {flags})"]
    if "max_abs_diff" in v:
        lines.append(f"vs FP32 reference ({v['frames']} frames): max |Δlogits| {v['max_abs_diff']:.4g}, argmax "
                     f"agreement {v['argmax_agreement']:.4%} (floor {v['argmax_floor']:.0%})")
    else:
        lines.append(f"vs FP32 reference ({v['frames']} frames): label agreement {v['argmax_agreement']:.4%} "
                     f"(floor {v['argmax_floor']:.0%})")
    if not v.get("passed", True):
        lines.append("warning: below the floor, installed because of --keep-failed")
    if (v.get("val") or {}).get("miou") is not None:
        lines.append(f"val mIoU {v['val']['miou']:.4f} on {v['val']['frames']} frames")
    islands = block.get("fp32_islands_applied")
    if islands:
        lines.append(f"FP32 islands: {islands['matched_nodes']}/{islands['nodes']} nodes pinned ({islands['layers']} "
                     f"layers)" + (f"; no layer for {', '.join(islands['unmatched'][:5])}" if islands["unmatched"]
                                   else ""))
    dla = block.get("dla")
    if dla:
        gpu_layers = dla.get("gpu_engine_layers") or []
        named = f" ({', '.join(gpu_layers[:5])}{', …' if len(gpu_layers) > 5 else ''})" if gpu_layers else ""
        lines.append(f"DLA core {used.get('dla_core')}: {len(gpu_layers)} engine layers on the GPU{named}")
    return lines


@engine_app.command("build")
def build_cmd(
    export_dir: Path = typer.Argument(..., help="Export folder holding the TensorRT bundle (from `segedge export "
                                                "--target trt-int8` or trt-fp16)."),
    target: str = typer.Option("trt-int8", "--target", "-t", help="trt-int8 or trt-fp16."),
    workspace: Optional[int] = typer.Option(None, "--workspace", min=1,
                                            help="Builder workspace memory pool in MiB (default: TensorRT's)."),
    dla: Optional[int] = typer.Option(None, "--dla", min=0, help="Run on this DLA core (Jetson Orin/Xavier), layers "
                                                                 "DLA cannot run fall back to the GPU."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache",
                                                help="Tactic timing cache to load and update (speeds up rebuilds)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Labelled dataset folder: adds the engine's mIoU."),
    val_count: int = typer.Option(32, "--val-count", min=1, help="Labelled frames used by --val."),
    keep_failed: bool = typer.Option(False, "--keep-failed",
                                     help="Install the engine even when it agrees with the FP32 reference on fewer "
                                          "pixels than the floor (fp16 99%; int8 95%, or 3 points under the "
                                          "bundle's own ONNX Runtime proxy when that is lower)."),
    as_json: bool = json_option("Print the target's new manifest entry as JSON only."),
) -> None:
    """Build the target's engine from the bundle, check it against the FP32 reference and install it in the folder."""
    from rich.console import Console

    from ..engine.build import build_engine

    console = Console(stderr=True, log_path=False)
    entry = build_engine(export_dir, target, workspace_mb=workspace, dla_core=dla, timing_cache=timing_cache,
                         val=val, val_count=val_count, keep_failed=keep_failed,
                         progress=None if as_json else console.log)
    if as_json:
        echo_json(entry)
        return
    for line in summary_lines(entry):
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Add the `engine` command group to the CLI."""
    app.add_typer(engine_app, name="engine")
