"""`segedge run`: a camera, stream, video or image folder through an exported model into a video, a folder of
images or label maps, or a window, pipelined (segedge.video), with live and final stats."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

MODEL_SUFFIXES = (".onnx", ".xml", ".safetensors", ".pt", ".pth", ".bin", ".engine", ".plan", ".mlpackage")


def _find_export(name: str, target: Optional[str]) -> Optional[Path]:
    """An export folder of model `name` under exports/ that holds `target` (any target when None)."""
    from ..contract import MANIFEST_NAME, Manifest
    from ..errors import SegedgeError

    root = Path("exports")
    if not root.is_dir():
        return None
    candidates = [root / f"demo-{name}", root / f"{name}-384x512"] + sorted(root.glob(f"{name}-*"))
    for folder in dict.fromkeys(candidates):
        if not (folder / MANIFEST_NAME).is_file():
            continue
        try:
            man = Manifest.read(folder)
        except SegedgeError:
            continue
        if man.to_dict().get("model") != name:
            continue
        if target is None and len(man.targets) == 1 or target in man.targets:
            return folder
    return None


def resolve_model(arg: str, target: Optional[str], say: Callable[[str], None]) -> Path:
    """An existing path as is; a model name → its export under exports/, exported from the demo weights first when
    there is none (which needs PyTorch; without it, one line saying how)."""
    from ..errors import SegedgeError

    p = Path(arg).expanduser()
    if p.exists():
        return p
    if os.sep in arg or "/" in arg or p.suffix.lower() in MODEL_SUFFIXES:
        raise SegedgeError(f"model path not found: {arg}; pass an export folder, a model file (.onnx, .xml, "
                           ".safetensors) or a model name (e.g. topformer-t) to use its demo export")
    found = _find_export(arg, target)
    if found is not None:
        return found
    try:
        from ..models.registry import get_spec
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "torch":
            raise
        raise SegedgeError(f"no export of {arg} under exports/, and making one needs PyTorch, which is not "
                           f"installed here: run `segedge export --model {arg} --target {target or 'onnx'}` on a "
                           "machine with `pip install 'segedge[export]'` and pass the export folder") from e
    spec = get_spec(arg)  # unknown names: one line with suggestions
    if spec.name != arg:
        found = _find_export(spec.name, target)
        if found is not None:
            return found
    from ..export import ExportOptions, export_model
    from ..models.pretrained import default_weights

    if default_weights(spec.name) is None:
        raise SegedgeError(f"{spec.name} has no demo weights to export: export your checkpoint first (`segedge "
                           f"export --model {spec.name} --weights CKPT --target onnx`) and pass the export folder")
    t = target or "onnx"
    say(f"no export of {spec.name} (target {t}) under exports/: exporting its demo weights first (`segedge export "
        f"--model {spec.name} --target {t}`)")
    result = export_model(ExportOptions(spec.name, targets=t))
    say(f"exported to {result.out_dir}")
    return Path(result.out_dir)


def _check_stats_path(path: Path) -> None:
    from ..errors import SegedgeError
    from ..io import ensure_writable_dir

    if path.is_dir():
        raise SegedgeError(f"--stats {path} is a folder; name a JSON file, e.g. {path / 'stats.json'}")
    ensure_writable_dir(path.parent, f"--stats to {path.parent}")


def run_cmd(
    model: str = typer.Argument(..., metavar="EXPORT_OR_MODEL",
                                help="Export folder, model file (.onnx, .xml, .safetensors), or a model name "
                                     "(e.g. topformer-t): its export under exports/, made from the demo weights "
                                     "first when missing."),
    input: str = typer.Option(..., "--input", "-i",
                              help="Camera index (0), v4l2:///dev/video0, csi://0 (Jetson), rtsp://… (or another "
                                   "stream URL), a GStreamer pipeline (gst://… or with ' ! '), a video file, an "
                                   "image, an image folder or a glob ('frames/*.png'), synthetic://?fps=30."),
    output: Optional[List[str]] = typer.Option(None, "--output", "-o",
                                               help="out.mp4 (.mp4 .mkv .mov .avi), a folder (out/: one PNG per "
                                                    "frame, image inputs keep their names), one image (out.png), "
                                                    "display:// or null://. Repeat for several. Default null://."),
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="Target in the export folder (onnx, ort-int8, openvino, …)."),
    view: str = typer.Option("overlay", "--view",
                             help="overlay | mask | labels (uint8 label PNGs, folders only) | side (frame and mask)."),
    alpha: float = typer.Option(0.5, "--alpha", min=0.0, max=1.0, help="Overlay opacity of the class colours."),
    legend: bool = typer.Option(False, "--legend", help="Draw the names and colours of the classes in view."),
    info: bool = typer.Option(False, "--info", help="Draw FPS and latency on the frames."),
    drop_policy: str = typer.Option("auto", "--drop-policy",
                                    help="latest: drop stale frames so latency never grows (default for live "
                                         "sources); all: every frame (default for files and images)."),
    infer_mode: str = typer.Option("auto", "--infer-mode",
                                   help="latency: one frame in inference at a time; throughput: several in flight "
                                        "where the runtime allows (OpenVINO streams): more FPS, each frame slower; "
                                        "auto: throughput with --drop-policy all, latency with latest."),
    max_frames: Optional[int] = typer.Option(None, "--max-frames", min=1, help="Stop after N processed frames."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Intra-op threads of the runtime."),
    postprocess: str = typer.Option("fast", "--postprocess",
                                    help="fast (argmax, then nearest upsampling) | exact (bilinear logits)."),
    width: Optional[int] = typer.Option(None, "--width", min=1,
                                        help="Cameras: asked of the driver; other inputs: frames resized."),
    height: Optional[int] = typer.Option(None, "--height", min=1, help="As --width."),
    fps: Optional[float] = typer.Option(None, "--fps",
                                        help="Cameras: asked of the driver; files and images: read in real time at "
                                             "this rate."),
    loop: bool = typer.Option(False, "--loop", help="Files and images: start again at the end (stop with Ctrl-C "
                                                    "or --max-frames)."),
    flip: str = typer.Option("none", "--flip", help="none | h | v | both (180°)."),
    read_timeout: float = typer.Option(5.0, "--read-timeout", min=0.01,
                                       help="Live inputs: seconds without a frame before reconnecting."),
    reconnects: int = typer.Option(5, "--reconnects", min=0,
                                   help="Live inputs: reconnect attempts in a row before giving up."),
    stream_backend: str = typer.Option("auto", "--stream-backend",
                                       help="Network streams: auto | ffmpeg | gstreamer."),
    rtsp_transport: str = typer.Option("tcp", "--rtsp-transport", help="RTSP over tcp or udp (FFmpeg)."),
    queue_size: int = typer.Option(4, "--queue-size", min=1, max=256,
                                   help="Frames each queue holds with --drop-policy all."),
    out_fps: Optional[float] = typer.Option(None, "--out-fps", help="Video output frame rate (default: the input's)."),
    fourcc: Optional[str] = typer.Option(None, "--fourcc", help="Video codec tag (default mp4v; MJPG for .avi)."),
    stats: Optional[Path] = typer.Option(None, "--stats", help="Write counters, FPS, latency and stage timings as "
                                                                "JSON here at the end."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live stats; only errors and the outputs written."),
) -> int:
    """Segment a camera, stream, video or image folder with an exported model: capture, pre-processing, inference
    and post-processing + rendering run in parallel threads; prints live stats, writes the outputs when done. Ctrl-C (or
    SIGTERM) finishes the queued frames and closes the outputs properly; a second Ctrl-C stops at once."""
    from rich.console import Console

    from ..runtime import Segmenter
    from ..video import Pipeline, SourceOptions, open_sink, open_source, stop_on_signals
    from ..video.pipeline import PIPELINE_SPINNING, performance_hint
    from ..video.views import check_view

    debug = os.environ.get("SEGEDGE_DEBUG", "").strip() not in ("", "0")
    _quiet_opencv(debug)
    err = Console(stderr=True, highlight=False, soft_wrap=True)  # messages never wrapped mid-line
    if not err.is_terminal:  # piped or captured: do not squeeze the stats table into 80 columns
        err = Console(stderr=True, highlight=False, soft_wrap=True, width=max(err.width, 120))

    def say(msg: str) -> None:
        if not quiet or msg.startswith(("warning", "reconnecting")):
            err.print(msg, markup=False)

    # Everything that can be checked without the model first: a typo fails in a second, not after an export.
    view = check_view(view)
    performance_hint(infer_mode, drop_policy, live=False)  # checks both names before anything opens
    opts = SourceOptions(width=width, height=height, fps=fps, loop=loop, flip=flip, backend=stream_backend,
                         read_timeout=read_timeout, reconnects=reconnects, rtsp_transport=rtsp_transport).checked()
    source = open_source(input, opts, log=say)
    sinks = [open_sink(o, view, out_fps, fourcc) for o in (output or ["null://"])]
    for s in sinks:
        s.check()
    if stats is not None:
        _check_stats_path(stats)
    if not source.live:
        source.open()  # a file that does not decode fails now; cameras and streams connect once the model is loaded
    try:
        folder = resolve_model(model, target, say)
        with err.status("loading the model", spinner="dots") if not quiet else _nullcontext():
            seg = Segmenter.load(folder, target=target, threads=threads, postprocess=postprocess,
                                 spinning=PIPELINE_SPINNING,
                                 performance_hint=performance_hint(infer_mode, drop_policy, source.live))
    except BaseException:
        source.close()
        raise
    pipe = None
    try:
        pipe = Pipeline(seg, source, sinks, view=view, alpha=alpha, legend=legend, info=info,
                        drop_policy=drop_policy, max_frames=max_frames, queue_size=queue_size, log=say)
        with stop_on_signals(pipe, log=lambda m: err.print(m, markup=False)) as sig:
            pipe.start()
            error = _watch(pipe, err, quiet)
        return _report(pipe, sig["signal"], error, stats, err, quiet)
    finally:
        if pipe is not None:
            pipe.close()
        source.close()
        seg.close()


def _report(pipe: Any, signum: int | None, error: BaseException | None, stats: Optional[Path], err: Any,
            quiet: bool) -> int:
    """The end of a run: stats JSON, the final table (or one line), what was written; the exit code."""
    from .. import __version__
    from ..io import write_json_atomic
    from ..video.stats import format_line, rich_table

    snap = pipe.stats()
    snap["stopped_by"] = pipe._stopped_by if signum else None
    if stats is not None:
        record = {"segedge_version": __version__, "command": ["segedge", "run", *sys.argv[2:]]
                  if sys.argv[1:2] == ["run"] else None, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **snap}
        write_json_atomic(stats, record)
    if not quiet:
        err.print(rich_table(snap, title=f"segedge run: {snap['status']}"))
    for line in snap["outputs"]:
        typer.echo(f"wrote {line}")
    if stats is not None:
        typer.echo(f"wrote {stats}")
    if quiet:
        err.print(format_line(snap), markup=False)
    if error is not None:
        raise error
    if signum is not None:
        return 130 if signum == 2 else 128 + int(signum)
    return 0


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _quiet_opencv(debug: bool) -> None:
    """OpenCV and FFmpeg print warnings of their own for things we report in one line; keep them for SEGEDGE_DEBUG."""
    if debug:
        return
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET, read when FFmpeg is first used
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except Exception:
        pass


def _watch(pipe: Any, err: Any, quiet: bool) -> BaseException | None:
    """Wait for the pipeline, showing live stats (a rich table on a terminal, a line every 10 s otherwise)."""
    from rich.live import Live

    from ..video.stats import format_line, rich_table

    def finished() -> BaseException | None:
        try:
            pipe.wait()
        except BaseException as e:  # noqa: BLE001 - reported by the caller after the outputs are settled
            return e
        return None

    if quiet:
        return finished()
    if err.is_terminal:
        with Live(rich_table(pipe.stats()), console=err, refresh_per_second=4, transient=True) as live:
            while pipe.running:
                time.sleep(0.25)
                live.update(rich_table(pipe.stats(), title="segedge run (Ctrl-C stops)"))
        return finished()
    next_line = time.monotonic() + 10
    while pipe.running:
        time.sleep(0.1)
        if time.monotonic() >= next_line:
            next_line += 10
            err.print(format_line(pipe.stats()), markup=False)
    return finished()


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("run")(run_cmd)
