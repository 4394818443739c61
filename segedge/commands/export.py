"""`segedge export`: PyTorch → verified FP32 ONNX → every registered target, with a manifest.

The `--target` help and the target-only flags (e.g. `--ov-precision`, `--ort-scope`) come from the target registry
(segedge.export.targets): a target module that declares an option gets its flag here without any edit to this file.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Optional

import typer


def export_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Model name or alias (`segedge models` lists them)."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="Checkpoint (segedge, Hugging Face, NVlabs/mmseg, TopFormer); "
                                               "default: the embedded demo weights."),
    target: str = typer.Option("onnx", "--target", "-t", help="Comma-separated targets (see below)."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="HEIGHTxWIDTH (default: the checkpoint's)."),
    calib: Optional[str] = typer.Option(None, "--calib",
                                        help="Calibration / check frames: image folder, video file, or "
                                             "DATASET:ROOT[:SPLIT] (default: the synthetic street frames shipped with segedge)."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", min=1,
                                              help="Calibration frames to use (default 32)."),
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
    fold: bool = typer.Option(True, "--fold/--no-fold",
                              help="Export the model's exact inference form (SegFormer: each decoder stage's linear, "
                                   "the fuse conv and its BatchNorm composed into one 1x1 conv run before "
                                   "upsampling; B0 ~1.6x faster, same outputs); --no-fold traces it as trained."),
    val: Optional[Path] = typer.Option(None, "--val", help="Labelled dataset folder: adds mIoU per target."),
    val_count: int = typer.Option(32, "--val-count", min=1, help="Labelled frames used by --val."),
    max_miou_drop: Optional[float] = typer.Option(
        None, "--max-miou-drop", metavar="PP",
        help="INT8 (ort-int8, qdq, trt-int8): keep the most sensitive node groups float until the mIoU drop vs FP32 "
             "on half of the --val frames is <= PP points; the other half is held back and reported. Needs --val."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default exports/<model>-<H>x<W>)."),
    replace: bool = typer.Option(False, "--replace",
                                 help="Drop the folder's other targets when they were built from another graph "
                                      "(default: refuse; targets still valid for the new graph are always kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON only."),
    **target_options: Any,
) -> None:
    """Export a model; every artifact is checked against PyTorch on real frames and described in manifest.json."""
    import json

    from rich.console import Console

    from ..export.pipeline import ExportOptions, export_model
    from . import parse_size_strict

    console = Console(stderr=True, log_path=False)
    size = parse_size_strict(input_size) if input_size is not None else None
    opts = ExportOptions(
        model=model, weights=weights, targets=target, input_size=size, calib=calib, calib_count=calib_count,
        calib_method=calib_method, calib_seed=calib_seed, video_step=video_step, opset=opset, dynamic=dynamic,
        dynamic_batch=dynamic_batch, io=io, raw_color=raw_color, upsample=upsample,
        keep_float=[k for k in (keep_float or "").split(",") if k.strip()], quantize_all=quantize_all, fold=fold,
        val=val, val_count=val_count, out=out, replace=replace, max_miou_drop=max_miou_drop,
        target_options={k: v for k, v in target_options.items() if v is not None})
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
    print_result(result, console, time.perf_counter() - t0)


def print_result(result: Any, console: Any, seconds: float) -> None:
    """The export summary: notes, one line per target with its checks, calibration, budget and tuning choices."""
    from ..export.assemble import summarize_result

    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    typer.echo(f"exported {result.manifest['model']} {result.manifest['input']['height']}x"
               f"{result.manifest['input']['width']} (io {result.manifest['input']['io']}, opset "
               f"{result.manifest['opset']}) to {result.out_dir} in {seconds:.1f} s")
    for line in summarize_result(result):
        typer.echo("  " + line)
    cal = next((e["calibration"] for e in result.manifest["targets"].values() if "calibration" in e), None)
    if cal:
        typer.echo(f"  calibration: {cal['method']} on {cal['count']} frames from {cal['source']}"
                   f"{' (cached table reused)' if cal.get('reused') else ''}")
    for name, e in result.manifest["targets"].items():
        budget = (e.get("quantization") or {}).get("budget")
        if budget:
            typer.echo(f"  {name}: --max-miou-drop {budget['max_miou_drop_pt']:g} met with float islands "
                       f"{', '.join(i['group'] for i in budget['float_islands']) or 'none (defaults)'}: drop "
                       f"{budget['budget_set']['chosen']['drop_pt']:.2f} pt on the budget frames, "
                       f"{budget['held_back_set']['chosen']['drop_pt']:.2f} pt on the held-back frames")
        tuned = e.get("tuned")
        if isinstance(tuned, dict):
            typer.echo(f"  {name}: chose {tuned['candidate']} of {tuned['candidates']} candidates on "
                       f"{tuned['cpu'].get('model')}: {tuned['latency_ms']['p50']:.2f} ms p50, drop "
                       f"{tuned['drop_pt']['budget']:+.2f} pt (budget set) / {tuned['drop_pt']['held_back']:+.2f} pt "
                       f"(held back); table: {result.out_dir / 'cpu-tune.md'}")
    typer.echo(f"  manifest: {Path(result.manifest_path)}")


def _with_target_options(func: Any) -> Any:
    """`func` with one keyword parameter per registered target option (a typer.Option each) in place of
    `**target_options`, and the --target help listing every registered target."""
    from ..export.targets import target_options, targets_help

    sig = inspect.signature(func)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    for i, p in enumerate(params):
        if p.name == "target":
            params[i] = p.replace(default=typer.Option("onnx", "--target", "-t", help=targets_help()))
    for o in target_options():
        # Default None: an option left unset is not "given", so it never trips the per-target check.
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                                        default=typer.Option(None, o.flag, help=f"{o.help} Default: {o.default}.")))

    def command(**kwargs: Any) -> None:
        return func(**kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = func.__doc__
    command.__wrapped_command__ = func  # type: ignore[attr-defined]
    return command


def register(app: typer.Typer) -> None:
    """Add the command to the CLI, with the flags of every registered target option."""
    app.command("export")(_with_target_options(export_cmd))
