"""`segedge export`: PyTorch → verified ONNX (FP32), ONNX Runtime INT8 and TensorRT-style Q/DQ, with a manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer


def export_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Model name or alias (`segedge models` lists them)."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="Checkpoint (segedge, Hugging Face, NVlabs/mmseg, TopFormer); "
                                               "default: the embedded demo weights."),
    target: str = typer.Option("onnx", "--target", "-t",
                               help="Comma-separated targets: onnx (FP32), ort-int8 (ONNX Runtime CPU INT8, writes "
                                    "the TensorRT-style qdq alongside), qdq, openvino (OpenVINO IR FP32: model.xml + "
                                    ".bin), openvino-int8 (OpenVINO IR INT8 via NNCF; needs segedge\\[openvino])."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="HEIGHTxWIDTH (default: the checkpoint's)."),
    calib: Optional[str] = typer.Option(None, "--calib",
                                        help="Calibration / check frames: image folder, video file, or "
                                             "DATASET:ROOT[:SPLIT] (default: calib_data/)."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", help="Calibration frames to use (default 32)."),
    calib_method: str = typer.Option("minmax", "--calib-method", help="minmax | entropy | percentile"),
    calib_seed: int = typer.Option(0, "--calib-seed", help="Seed of the frame selection."),
    video_step: Optional[int] = typer.Option(None, "--video-step", min=1,
                                             help="Take every k-th video frame (default: spread over the video)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset: 17 (LayerNormalization op) or 16 (TensorRT 8.5 / "
                                                  "JetPack 5: LayerNorm decomposed)."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch, height and width (SegFormer only)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Dynamic batch only (any model)."),
    io: str = typer.Option("float", "--io", help="float: normalised float NCHW in, logits out; raw: uint8 NHWC "
                                                 "frame in, uint8 labels out (pre/post-processing in the graph)."),
    raw_color: str = typer.Option("BGR", "--raw-color", help="Channel order of raw-io input frames: BGR or RGB."),
    upsample: bool = typer.Option(False, "--upsample", help="Raw io: labels at the input size, not the output stride."),
    keep_float: Optional[str] = typer.Option(None, "--keep-float",
                                             help="INT8: extra op types or node names (globs) to keep in float, "
                                                  "comma-separated."),
    quantize_all: bool = typer.Option(False, "--quantize-all",
                                      help="INT8: also quantize LayerNorm, Softmax, the classifier and last Resize "
                                           "(ort-int8: with every quantizable op unless --ort-scope conv)."),
    ort_scope: str = typer.Option("auto", "--ort-scope",
                                  help="ort-int8: which ops run in INT8: auto (per model family, the fastest "
                                       "measured: conv for SegFormer, all for TopFormer), all quantizable ops, or "
                                       "conv (dense convolutions and the Resize/Concat feeding them)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Labelled dataset folder: adds mIoU per target."),
    val_count: int = typer.Option(32, "--val-count", min=1, help="Labelled frames used by --val."),
    ov_precision: str = typer.Option("f32", "--ov-precision",
                                     help="OpenVINO targets: inference precision hint of their check and default at "
                                          "run time, f32 | bf16 (OpenVINO's own CPU default is bf16 where supported)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default exports/<model>-<H>x<W>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON only."),
) -> None:
    """Export a model; every artifact is checked against PyTorch on real frames and described in manifest.json."""
    import json

    from rich.console import Console

    from ..export.pipeline import ExportOptions, export_model, summarize_result
    from . import parse_size_strict

    console = Console(stderr=True, log_path=False)
    size = parse_size_strict(input_size) if input_size is not None else None
    opts = ExportOptions(
        model=model, weights=weights, targets=target, input_size=size, calib=calib, calib_count=calib_count,
        calib_method=calib_method, calib_seed=calib_seed, video_step=video_step, opset=opset, dynamic=dynamic,
        dynamic_batch=dynamic_batch, io=io, raw_color=raw_color, upsample=upsample,
        keep_float=[k for k in (keep_float or "").split(",") if k.strip()], quantize_all=quantize_all,
        val=val, val_count=val_count, out=out, ov_precision=ov_precision, ort_scope=ort_scope)
    t0 = time.perf_counter()
    with console.status("exporting", spinner="dots") as status:
        def progress(msg: str) -> None:
            status.update(msg)
            if not as_json:
                console.log(msg)

        result = export_model(opts, progress=progress)
    if as_json:
        typer.echo(json.dumps(result.manifest, indent=2, default=str))
        return
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    typer.echo(f"exported {result.manifest['model']} {result.manifest['input']['height']}x"
               f"{result.manifest['input']['width']} (io {result.manifest['input']['io']}, opset "
               f"{result.manifest['opset']}) to {result.out_dir} in {time.perf_counter() - t0:.1f} s")
    for line in summarize_result(result):
        typer.echo("  " + line)
    cal = next((e["calibration"] for e in result.manifest["targets"].values() if "calibration" in e), None)
    if cal:
        typer.echo(f"  calibration: {cal['method']} on {cal['count']} frames from {cal['source']}"
                   f"{' (cached table reused)' if cal.get('reused') else ''}")
    typer.echo(f"  manifest: {Path(result.manifest_path)}")


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("export")(export_cmd)
