"""`segedge bench`: every model × target measured in one run on the same frames (latency, memory, size, accuracy)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _split(values: Optional[List[str]] | Optional[str]) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def _writable(out: Path) -> None:
    from ..io import ensure_writable_dir

    ensure_writable_dir(out, f"to --out {out}", "choose a writable folder")


def _command_line(params: dict) -> list[str]:
    """The invocation as a list (flags with their effective values), for results.json."""
    out = ["segedge", "bench"]
    for k, v in params.items():
        if v is None or v is False or v == [] or k == "as_json":
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif isinstance(v, (list, tuple)):
            out += [flag, ",".join(str(x) for x in v)]
        else:
            out += [flag, str(v)]
    return out


def bench_cmd(
    ctx: typer.Context,
    model: str = typer.Option(..., "--model", "-m", help="Model name(s), comma-separated (`segedge models`)."),
    weights: Optional[str] = typer.Option(None, "--weights",
                                          help="Checkpoint per model, comma-separated in --model order "
                                               "(default: the embedded demo weights)."),
    targets: str = typer.Option("torch,onnx,ort-int8", "--targets", "-t",
                                help="Comma-separated: torch (FP32 PyTorch reference, always added) and export "
                                     "targets (onnx, ort-int8, qdq, …; `segedge export --help` lists them)."),
    artifacts: Optional[List[str]] = typer.Option(None, "--artifacts",
                                                  help="Existing export folder(s) to reuse (repeat or comma-separate); "
                                                       "default: exports/<model>-<H>x<W> when present."),
    data: Path = typer.Option(..., "--data", help="Dataset root folder."),
    dataset: str = typer.Option("camvid", "--dataset", help="camvid | cityscapes | ade20k | folder"),
    split: str = typer.Option("val", "--split", help="Evaluated split."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1,
                                              help="For --dataset folder without classes.json."),
    input_size: Optional[str] = typer.Option(None, "--input-size", help="HxW (default: each checkpoint's own)."),
    sizes: Optional[str] = typer.Option(None, "--sizes",
                                        help="Latency sweep sizes, e.g. 256x320,384x512,512x512 (latency only)."),
    iters: int = typer.Option(50, "--iters", min=1, help="Timed rounds per target."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Untimed warm-up rounds."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads for every runtime."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate accuracy on the first N frames only."),
    calib: Optional[str] = typer.Option(None, "--calib",
                                        help="INT8 calibration frames (folder, video, DATASET:ROOT[:SPLIT]); "
                                             "default: the dataset's train split."),
    calib_count: Optional[int] = typer.Option(None, "--calib-count", min=1,
                                              help="Calibration frames (default 32)."),
    device: str = typer.Option("auto", "--device", help="PyTorch reference device: auto | cpu | cuda[:N] | mps."),
    postprocess: str = typer.Option("fast", "--postprocess",
                                    help="End-to-end timing post-processing: fast | exact (accuracy always exact)."),
    memory: bool = typer.Option(True, "--memory/--no-memory",
                                help="Peak RSS per target, each in its own short-lived process."),
    power: str = typer.Option("auto", "--power", help="Jetson power via tegrastats: auto | on | off."),
    settle_ms: float = typer.Option(5.0, "--settle-ms", min=0.0,
                                    help="Pause before each timed call so the previous runtime's threads go idle."),
    block: int = typer.Option(10, "--block", min=1,
                              help="Timed calls per target in a row before the next target runs (1: interleave "
                                   "call by call; then every call starts with another model's data in the caches)."),
    baselines: bool = typer.Option(False, "--baselines",
                                   help="Also measure the library defaults beside the targets, in the same run: "
                                        "ONNX Runtime quantize_static (ort-defaults), OpenVINO on the ONNX "
                                        "(ov-defaults), NNCF quantize (nncf-defaults); each is skipped with the reason "
                                        "when its library is missing."),
    out: Path = typer.Option(Path("bench-out"), "--out", "-o", help="Output folder."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json on stdout instead of the table."),
) -> None:
    """Export what is missing, then measure each model × target: params, GMACs, size, latency (inference and end
    to end, rotating blocks), peak RSS, mIoU and agreement with the FP32 PyTorch reference; writes --out."""
    from rich.console import Console

    from ..benchmarks.report import rich_table, write_outputs
    from ..benchmarks.runner import BenchConfig, RichReporter, run_bench
    from ..benchmarks.schema import check_results
    from . import echo_json, parse_size_strict

    err = Console(stderr=True)
    size = parse_size_strict(input_size) if input_size else None
    sweep = [parse_size_strict(s) for s in _split(sizes)]
    _writable(out)
    cfg = BenchConfig(
        models=_split(model), data=data, targets=_split(targets), weights=_split(weights), dataset=dataset,
        split=split, num_classes=num_classes, input_size=size, sizes=sweep, iters=iters, warmup=warmup,
        threads=threads, limit=limit, artifacts=[Path(a) for a in _split(artifacts)], calib=calib,
        calib_count=calib_count, device=device, postprocess=postprocess, memory=memory, power=power,
        settle_ms=settle_ms, block=block, baselines=baselines, command=_command_line(ctx.params))
    results = run_bench(cfg, RichReporter(err) if not as_json else None)
    problems = check_results(results)
    if problems:  # a bug, not a user error: keep the traceback
        raise RuntimeError("results do not match the schema: " + "; ".join(problems[:5]))
    files = write_outputs(results, out, plots=not no_plots)
    if as_json:
        echo_json(results)
        return
    con = Console()
    if not con.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        con = Console(width=max(con.width, 180))
    con.print(rich_table(results))
    for note in results["notes"]:
        err.print(f"[yellow]note:[/] {note}", highlight=False)
    err.print(f"memory: {results['settings']['memory']}", highlight=False)
    err.print(f"power: {results['settings']['power']}", highlight=False)
    typer.echo("wrote " + ", ".join(str(p) for p in files.values()))


def register(app: typer.Typer) -> None:
    """Add the command to the CLI; the --targets help lists every registered target (plug-ins included)."""
    from ..export.targets import list_targets
    from . import replace_option

    names = ", ".join(t.name for t in list_targets())
    option = typer.Option("torch,onnx,ort-int8", "--targets", "-t",
                          help=f"Comma-separated: torch (FP32 PyTorch reference, always added) and export targets "
                               f"({names}; `segedge export --help` describes them).")
    app.command("bench")(replace_option(bench_cmd, "targets", option))
