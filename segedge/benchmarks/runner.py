"""`run_bench`: export what is missing, then measure every model × target on the same frames in one run.

Order of work (each step finishes before the next starts, so nothing else runs while a clock is running):
1. check the request (targets, dataset, sizes, --artifacts) and build the PyTorch reference of each model;
2. export the targets each (model, size) lacks (export pipeline; INT8 calibrated on the train split or --calib);
3. peak memory of each target in its own short-lived process (memprobe.py);
4. latency: warm-up rounds, then timed rounds; in each round every model × target runs the same frame in a block
   of --block consecutive calls (the steady state of a camera loop; an untimed call opens each block), in an order
   rotated from round to round, so slow drift of the machine (thermal, other load) spreads over all targets
   instead of favouring whichever ran first. Two clocks: inference alone (backend.run on a prepared
   input) and end to end (cv2.imread → pre-process → inference → labels at frame size);
5. accuracy on the evaluation frames: mIoU, per-class IoU and pixel accuracy against the labels, and the argmax
   agreement with the FP32 PyTorch reference frame by frame;
6. power on Jetson (tegrastats sampled in a background thread while one target runs alone), else skipped;
7. the --sizes sweep: latency only, same rotating blocks, one size at a time.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from ..errors import DataError, SegedgeError
from . import memprobe
from .stats import PERCENTILE_METHOD, STD_DDOF, Agreement, latency_stats, miou_drop, ns_to_ms
from .targets import (REFERENCE, artifact_bytes, export_segmenter, make_sync, path_bytes, resolve_device,
                      same_backend, torch_segmenter)

RESULTS_FORMAT = "segedge-bench/1"
DEFAULT_TARGETS = ("torch", "onnx", "ort-int8")
POWER_MIN_SECONDS = 2.0
BACKEND_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt",
                   "coreml": "coremltools", "torch": "torch"}


# ------------------------------------------------------------------------------------------------ progress
class Reporter:
    """Where progress goes; the default discards it (the CLI passes a rich one)."""

    def log(self, message: str) -> None:
        """A one-line note."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A step with `total` units; yields `advance(n=1, description=None)`."""
        yield lambda n=1, description=None: None


class RichReporter(Reporter):
    """Progress bars and log lines on a rich Console (stderr in the CLI)."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def log(self, message: str) -> None:
        """Print a dimmed note."""
        self.console.print(f"[dim]·[/] {message}", highlight=False)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        """A transient progress bar (spinner when total is None), then a ✓ line."""
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        cols = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn()] if total else [SpinnerColumn(), TextColumn("{task.description}"),
                                                    TimeElapsedColumn()]
        with Progress(*cols, console=self.console, transient=True) as prog:
            tid = prog.add_task(description, total=total)

            def advance(n: int = 1, description: str | None = None) -> None:
                prog.update(tid, advance=n, **({"description": description} if description else {}))

            yield advance
        self.console.print(f"[green]✓[/] {description}", highlight=False)


# ------------------------------------------------------------------------------------------------ config
@dataclass
class BenchConfig:
    """Everything `segedge bench` accepts (see the CLI help)."""

    models: Sequence[str]
    data: Path
    targets: Sequence[str] = DEFAULT_TARGETS
    weights: Sequence[str | None] = ()  # one per model; empty → the embedded demo weights
    dataset: str = "camvid"
    split: str = "val"
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None  # None → each checkpoint's own
    sizes: Sequence[tuple[int, int]] = ()
    iters: int = 50
    warmup: int = 5
    threads: int | None = None
    limit: int | None = None
    artifacts: Sequence[Path] = ()
    calib: Any = None
    calib_count: int | None = None
    device: str = "auto"
    postprocess: str = "fast"
    memory: bool = True
    memory_iters: int = 3
    power: str = "auto"  # auto | on | off
    settle_ms: float = 5.0
    block: int = 10  # consecutive timed calls per target before the next one runs (1: call-by-call round-robin)
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class Entry:
    """One model × target at one input size, loaded and ready to time."""

    model: str
    target: str
    size: tuple[int, int]
    seg: Any
    sync: Callable[[], Any]
    artifact: Path
    folder: Path | None
    precision: str
    infer_ns: list[int] = field(default_factory=list)
    e2e_ns: list[int] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, tuple[int, int]]:
        """(model, target, size): what identifies a row."""
        return self.model, self.target, self.size


def parse_targets(targets: Sequence[str] | str) -> list[str]:
    """Target names, `torch` first (always present), duplicates dropped; unknown names are a one-line error."""
    from ..export.targets import list_targets

    if isinstance(targets, str):
        targets = targets.split(",")
    names = [t.strip().lower() for t in targets if t and t.strip()]
    known = {t.name for t in list_targets()}
    for n in names:
        if n != REFERENCE and n not in known:
            raise SegedgeError(f"unknown target '{n}': choose from {', '.join([REFERENCE, *sorted(known)])}")
    out = [REFERENCE]
    for n in names:
        if n not in out:
            out.append(n)
    return out


def _settle(seconds: float) -> None:
    # A short pause before each timed call lets the previous runtime's worker threads (ONNX Runtime and OpenMP
    # pools spin-wait after a run) go idle, so they do not compete with the target being timed.
    if seconds > 0:
        time.sleep(seconds)


def timing_rounds(warmup: int, iters: int, block: int) -> int:
    """How many rounds `time_round_robin` makes (for progress bars)."""
    return warmup + math.ceil(iters / max(1, block))


def time_round_robin(entries: Sequence[Entry], frames: Sequence[tuple[str, np.ndarray]], warmup: int, iters: int,
                     settle_s: float = 0.0, on_round: Callable[[int], None] | None = None, block: int = 1) -> None:
    """Warm-up rounds, then timed rounds; in each round every entry runs a block of `block` consecutive calls,
    starting at an entry that rotates from round to round, until each entry has `iters` timed calls.

    With block > 1 an untimed call opens every block: the first call after another model ran meets caches full of
    that model's weights and activations, which a camera loop running one model never does (B0 FP32 measured
    ~20 % slower per call when interleaved call by call on a 2-core Xeon). Rotating blocks still spreads slow
    drift of the machine over all entries. Fills `entry.infer_ns` (backend.run on a prepared input, device
    synchronised) and `entry.e2e_ns` (cv2.imread of the frame file → Segmenter.predict → labels at frame size).
    """
    k = len(entries)
    block = max(1, int(block))
    gc_was_enabled = gc.isenabled()
    timed = 0
    try:
        for r in range(timing_rounds(warmup, iters, block)):
            warm = r < warmup
            n = 1 if warm else min(block, iters - timed)
            lead = 0 if warm or block == 1 else 1  # untimed call opening each block
            path, frame = frames[r % len(frames)]
            order = [entries[(r + j) % k] for j in range(k)]
            gc.collect()
            gc.disable()  # no collector pause inside a timed call (timeit does the same)

            def block_of(e: Entry, call: Callable[[], Any], sink: list[int]) -> None:
                for c in range(lead + n):
                    _settle(settle_s)
                    t0 = time.perf_counter_ns()
                    call()
                    e.sync()
                    t1 = time.perf_counter_ns()
                    if not warm and c >= lead:
                        sink.append(t1 - t0)

            for e in order:
                x = e.seg.prepare(frame)
                block_of(e, lambda: e.seg.backend.run(x), e.infer_ns)
            for e in order:
                block_of(e, lambda: e.seg.predict(cv2.imread(path, cv2.IMREAD_COLOR)), e.e2e_ns)
            if not warm:
                timed += n
            if gc_was_enabled:
                gc.enable()
            if on_round:
                on_round(r + 1)
    finally:
        if gc_was_enabled:
            gc.enable()


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class _Model:
    name: str
    module: Any
    cfg: dict[str, Any]
    size: tuple[int, int]
    complexity: dict[tuple[int, int], dict[str, Any]]
    weights_path: str
    weights_bytes: int
    folders: dict[tuple[int, int], Path] = field(default_factory=dict)
    exported: dict[tuple[int, int], list[str]] = field(default_factory=dict)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf → None, tuples → lists, numpy scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _validate_sizes(name: str, sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    from ..models import validate_input_size

    out = []
    for s in sizes:
        v = validate_input_size(name, s)
        if v not in out:
            out.append(v)
    return out


def _weights_list(cfg: BenchConfig) -> list[str | None]:
    w = list(cfg.weights or [])
    if not w:
        return [None] * len(cfg.models)
    if len(w) != len(cfg.models):
        raise SegedgeError(f"--weights lists {len(w)} checkpoint(s) for {len(cfg.models)} model(s); give one per "
                           "--model, in the same order (or none for the embedded demo weights)")
    return [x if x not in ("", "default") else None for x in w]


def _eval_indices(ds: Any, limit: int | None) -> list[int]:
    n = len(ds) if limit is None else min(int(limit), len(ds))
    if n <= 0:
        raise DataError(f"{ds.name}/{ds.split} has no samples to evaluate; check --data and --split")
    return list(range(n))


def _timing_frames(ds: Any, indices: Sequence[int], count: int) -> list[tuple[str, np.ndarray]]:
    from ..data.datasets import read_image

    frames = []
    for i in indices:
        if len(frames) >= count:
            break
        p = str(ds.samples[i].image_path)
        try:
            frames.append((p, read_image(p)))
        except DataError:
            continue
    if not frames:
        raise DataError(f"none of the first {len(indices)} images of {ds.name}/{ds.split} could be read")
    return frames


def run_bench(cfg: BenchConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the whole benchmark (see module docstring) and return the results dict (schema: schema.py)."""
    import torch

    from ..data.datasets import open_dataset
    from ..data.metrics import ConfusionMatrix
    from ..models import create_model, get_spec, validate_input_size
    from ..models.complexity import CONVENTION, count_flops, count_params
    from ..runtime.postprocess import check_mode
    from .artifacts import (calibration_source, check_calibration, default_folder, plan_export, read_artifact_folders,
                            run_export)
    from .machine import machine_info
    from .tegrastats import TegrastatsSampler, power_summary, tegrastats_path

    ui = reporter or Reporter()
    notes: list[str] = []
    t_start = time.perf_counter()

    # 1. the request ------------------------------------------------------------------------------------------
    if cfg.iters < 1:
        raise SegedgeError(f"--iters must be at least 1, got {cfg.iters}")
    if cfg.warmup < 0:
        raise SegedgeError(f"--warmup must be 0 or more, got {cfg.warmup}")
    if cfg.limit is not None and cfg.limit < 1:
        raise SegedgeError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.threads is not None and cfg.threads < 1:
        raise SegedgeError(f"--threads must be at least 1, got {cfg.threads}")
    postprocess = check_mode(cfg.postprocess)
    power_mode = str(cfg.power).lower()
    if power_mode not in ("auto", "on", "off"):
        raise SegedgeError(f"--power must be auto, on or off, got '{cfg.power}'")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))  # exports and the reference then use the requested threads too
    targets = parse_targets(cfg.targets)
    export_targets = [t for t in targets if t != REFERENCE]
    if not cfg.models:
        raise SegedgeError("no model given: pass --model NAME[,NAME…]")
    models = []
    for m in cfg.models:
        name = get_spec(m).name
        if name not in models:
            models.append(name)
    weights = _weights_list(cfg)
    device = resolve_device(cfg.device)
    data = Path(cfg.data)
    if not data.exists():
        raise DataError(f"data folder not found: {data}; pass --data pointing at the dataset root")
    ds = open_dataset(cfg.dataset, data, cfg.split, num_classes=cfg.num_classes)
    indices = _eval_indices(ds, cfg.limit)
    given = read_artifact_folders(list(cfg.artifacts), models)
    if power_mode == "on" and tegrastats_path() is None:
        raise SegedgeError("--power on needs tegrastats (NVIDIA Jetson); use --power auto or off here")

    # 2. models, sizes, complexity (no output yet: every input problem is found before the first progress line)
    states: list[_Model] = []
    for name, w in zip(models, weights):
        module = create_model(name, weights=w if w is not None else "default").eval()
        mcfg = module.pretrained_cfg
        if int(mcfg["num_classes"]) != ds.num_classes:
            raise SegedgeError(f"{name} predicts {mcfg['num_classes']} classes but {ds.name} has "
                               f"{ds.num_classes}; pass weights trained on this dataset (--weights)")
        size = validate_input_size(name, cfg.input_size or tuple(mcfg["input_size"]))
        sweep = _validate_sizes(name, cfg.sizes)
        wpath = str(mcfg["weights"])
        states.append(_Model(name, module, mcfg, size, {s: {} for s in [size, *sweep]}, wpath, path_bytes(wpath)))
        if w is None:
            notes.append(f"{name}: no --weights given, used the embedded demo checkpoint {Path(wpath).name}")
    by_name = {st.name: st for st in states}
    for key, af in given.items():
        if key[1] not in by_name[key[0]].complexity:
            notes.append(f"--artifacts {af.folder} ({key[1][0]}x{key[1][1]}) is not at a benchmarked size "
                         f"of {key[0]}: unused")

    # Which folder serves each (model, size), what it lacks, and whether INT8 can be calibrated.
    plans: list[tuple[_Model, tuple[int, int], Path, list[str]]] = []
    calib = None
    if export_targets:
        calib = calibration_source(cfg.calib, cfg.dataset, data, ds, cfg.num_classes)
        for st in states:
            for s in st.complexity:
                af = given.get((st.name, s))
                if af:
                    folder = af.folder
                else:
                    folder, note = default_folder(st.cfg, s)
                    if note:
                        notes.append(note)
                missing, plan_notes = plan_export(folder, af is not None, st.cfg, s, export_targets)
                check_calibration(missing, calib, st.name)
                notes.extend(plan_notes)
                st.folders[s] = folder
                plans.append((st, s, folder, missing))

    with ui.task("counting parameters and MACs", sum(len(st.complexity) for st in states)) as advance:
        for st in states:
            for s in st.complexity:
                st.complexity[s] = count_flops(st.module, s)
                advance()

    # 3. exports ----------------------------------------------------------------------------------------------
    assert calib is not None or not plans
    for st, s, folder, missing in plans:
        if not missing:
            ui.log(f"reused {folder} for {st.name} {s[0]}x{s[1]}")
            continue
        label = f"export {st.name} {s[0]}x{s[1]} ({', '.join(missing)}) to {folder}"
        with ui.task(label) as advance:
            notes.extend(run_export(folder, st.cfg, s, missing, calib, cfg.calib_count,  # type: ignore[arg-type]
                                    lambda msg, _a=advance, _l=label: _a(0, f"{_l}: {msg}")))
        st.exported[s] = missing

    def open_entries(size_of: Callable[[_Model], tuple[int, int] | None]) -> list[Entry]:
        entries = []
        for st in states:
            s = size_of(st)
            if s is None:
                continue
            for t in targets:
                if t == REFERENCE:
                    seg = torch_segmenter(st.module, s, cfg.threads, device, postprocess)
                    entries.append(Entry(st.name, t, s, seg, make_sync(seg), Path(st.weights_path), None, "fp32"))
                else:
                    folder = st.folders[s]
                    seg = export_segmenter(folder, t, cfg.threads, postprocess)
                    if seg.info.input_size != s or (seg.info.model and seg.info.model != st.name):
                        raise SegedgeError(f"{folder} target {t} runs {seg.info.model} at {seg.info.input_size}, "
                                           f"expected {st.name} at {s}; re-export it")
                    from ..export.manifest import read_manifest

                    entry = read_manifest(folder)["targets"][t]
                    entries.append(Entry(st.name, t, s, seg, make_sync(seg), folder / entry["file"], folder,
                                         str(entry.get("precision") or seg.info.precision or "?")))
        return entries

    # 4. load the main-size entries ---------------------------------------------------------------------------
    with ui.task("loading every model × target", len(states) * len(targets)) as advance:
        main = open_entries(lambda st: st.size)
        advance(len(main))
    frames = _timing_frames(ds, indices, min(len(indices), cfg.iters))

    # 5. isolated peak memory -------------------------------------------------------------------------------
    mem: dict[tuple, dict[str, Any]] = {}
    if cfg.memory:
        specs = []
        for e in main:
            backend_mod = BACKEND_MODULES.get(getattr(e.seg.backend, "name", ""), "")
            specs.append({"target": e.target, "model": e.model, "weights": by_name[e.model].weights_path,
                          "folder": str(e.folder) if e.folder else None, "input_size": list(e.size),
                          "threads": cfg.threads, "device": device, "postprocess": postprocess,
                          "frame": frames[0][0], "iters": cfg.memory_iters,
                          "runtime_modules": [backend_mod] if backend_mod else []})
        with ui.task("peak memory, one fresh process per target", len(specs)) as advance:
            # Peak RSS is a per-process high-water mark, so probes may overlap; they never overlap timing.
            res = memprobe.run_probes(specs, workers=min(2, len(specs)), on_done=lambda n: advance())
        for e, r in zip(main, res):
            mem[e.key] = r
            if "error" in r:
                notes.append(f"memory of {e.model}/{e.target}: {r['error']}")

    # 6. latency at the main sizes ----------------------------------------------------------------------------
    settle_s = max(0.0, cfg.settle_ms) / 1000.0
    rounds = timing_rounds(cfg.warmup, cfg.iters, cfg.block)
    with ui.task(f"timing {len(main)} model × target pairs, {cfg.warmup} warm-up + {cfg.iters} timed calls each "
                 f"in blocks of {cfg.block}", rounds) as advance:
        time_round_robin(main, frames, cfg.warmup, cfg.iters, settle_s, on_round=lambda r: advance(), block=cfg.block)

    # 7. accuracy ---------------------------------------------------------------------------------------------
    exact = {e.key: same_backend(e.seg, "exact") for e in main}
    cms = {e.key: ConfusionMatrix(ds.num_classes, ds.ignore_index) for e in main}
    agree = {e.key: Agreement() for e in main}
    evaluated = skipped = 0
    with ui.task(f"accuracy on {len(indices)} {ds.name}/{ds.split} frames", len(indices)) as advance:
        for i in indices:
            try:
                img, lab = ds[i]
            except DataError:
                skipped += 1
                advance()
                continue
            for st in states:
                ref_key = (st.name, REFERENCE, st.size)
                ref = exact[ref_key].predict(img)
                for e in main:
                    if e.model != st.name:
                        continue
                    pred = ref if e.target == REFERENCE else exact[e.key].predict(img)
                    cms[e.key].update(pred, lab)
                    agree[e.key].update(pred, ref)
            evaluated += 1
            advance()
    if skipped:
        notes.append(f"{skipped} unreadable or mismatched evaluation sample(s) skipped")
    if not evaluated:
        raise DataError(f"no evaluation sample of {ds.name}/{ds.split} could be read")

    # 8. power ------------------------------------------------------------------------------------------------
    power: dict[tuple, dict[str, Any] | None] = {}
    power_status = "skipped: --power off"
    if power_mode != "off":
        if tegrastats_path() is None:
            power_status = "skipped: tegrastats not found (power is measured on NVIDIA Jetson only)"
        else:
            power_status = "tegrastats, 100 ms interval, input rail (VDD_IN / POM_5V_IN) or the sum of rails"
            with TegrastatsSampler(100) as sampler, ui.task("power per target (tegrastats)", len(main)) as advance:
                sampler.wait_for_samples(2)
                for e in main:
                    power[e.key] = _measure_power(e, frames, sampler, max(cfg.iters, 10), power_summary)
                    advance()
            if not any(power.values()):
                notes.append("tegrastats ran but printed no power rails (does it need sudo on this board?)")

    # 9. the sweep --------------------------------------------------------------------------------------------
    sweep_rows: list[dict[str, Any]] = []
    sweep_sizes = []
    for s in cfg.sizes:
        if s not in sweep_sizes:
            sweep_sizes.append(s)
    main_by_key = {e.key: e for e in main}
    for s in sweep_sizes:
        ents: list[Entry] = []
        if any(st.size != s for st in states):
            ents = open_entries(lambda st, _s=s: None if st.size == _s else validate_input_size(st.name, _s))
            with ui.task(f"sweep {s[0]}x{s[1]}: {cfg.warmup} warm-up + {cfg.iters} timed calls each",
                         timing_rounds(cfg.warmup, cfg.iters, cfg.block)) as advance:
                time_round_robin(ents, frames, cfg.warmup, cfg.iters, settle_s, on_round=lambda r: advance(),
                                 block=cfg.block)
        for st in states:
            vs = validate_input_size(st.name, s)
            for t in targets:
                e = main_by_key.get((st.name, t, vs)) or next(x for x in ents if x.key == (st.name, t, vs))
                sweep_rows.append({
                    "model": st.name, "target": t, "input_size": list(vs), "precision": e.precision,
                    "gmacs": st.complexity[vs]["gmacs"],
                    "latency": {"inference": latency_stats(ns_to_ms(e.infer_ns)),
                                "end_to_end": latency_stats(ns_to_ms(e.e2e_ns))},
                    "same_run_as_main": st.size == vs,
                })
        del ents

    # 10. assemble --------------------------------------------------------------------------------------------
    rows = []
    ref_miou = {}
    metrics = {e.key: cms[e.key].compute(ds.class_names) for e in main}
    for e in main:
        if e.target == REFERENCE:
            ref_miou[e.model] = metrics[e.key].miou
    for e in main:
        st = by_name[e.model]
        m = metrics[e.key]
        md = m.as_dict()
        comp = st.complexity[e.size]
        rows.append({
            "model": e.model, "target": e.target, "reference": e.target == REFERENCE,
            "input_size": list(e.size), "precision": e.precision,
            "backend": e.seg.backend.describe(),
            "artifact": str(e.artifact), "artifact_bytes": artifact_bytes(e.artifact) if e.folder else st.weights_bytes,
            "exported_now": bool(e.folder) and e.target in st.exported.get(e.size, []),
            "params": comp["params"], "gmacs": comp["gmacs"], "gflops": comp["gflops"],
            "latency": {"inference": latency_stats(ns_to_ms(e.infer_ns)),
                        "end_to_end": latency_stats(ns_to_ms(e.e2e_ns))},
            "memory": mem.get(e.key),
            "accuracy": {"miou": md["miou"], "pixel_acc": md["pixel_acc"], "mean_acc": md["mean_acc"],
                         "per_class_iou": md["per_class_iou"], "frames": evaluated,
                         "miou_drop": miou_drop(ref_miou[e.model], m.miou),
                         "argmax_agreement": agree[e.key].value},
            "power": power.get(e.key),
        })
    models_out = {}
    for st in states:
        comp = st.complexity[st.size]
        models_out[st.name] = {
            "family": st.cfg["family"], "weights": st.weights_path, "weights_sha256": st.cfg["weights_sha256"],
            "num_classes": st.cfg["num_classes"], "class_names": list(ds.class_names),
            "input_size": list(st.size), "params": count_params(st.module), "gmacs": comp["gmacs"],
            "gflops": comp["gflops"],
            "export_folders": {f"{s[0]}x{s[1]}": str(f) for s, f in st.folders.items()},
        }
    results = {
        "format": RESULTS_FORMAT,
        "created": _utc_now(),
        "command": list(cfg.command),
        "duration_s": time.perf_counter() - t_start,
        "machine": machine_info(cfg.threads),
        "settings": {
            "dataset": ds.name, "data": str(data), "split": cfg.split, "eval_frames": evaluated,
            "timing_frames": len(frames), "warmup": cfg.warmup, "iters": cfg.iters, "threads": cfg.threads,
            "torch_threads": torch.get_num_threads(), "device": device, "targets": targets,
            "postprocess_end_to_end": postprocess, "postprocess_accuracy": "exact",
            "sizes": [list(s) for s in sweep_sizes],
            "timing": (f"rotating blocks: each round runs every model × target {cfg.block} time(s) in a row on the "
                       "same frame (plus one untimed call opening each block when blocks are longer than 1, so no "
                       "timed call starts with another model's data in the caches), starting order rotated every "
                       "round; time.perf_counter_ns; inference = backend.run on a prepared input; "
                       "end to end = cv2.imread + pre-processing + inference + labels at frame size; device "
                       f"synchronised; GC off inside rounds; {cfg.settle_ms:g} ms pause before each timed call"),
            "latency_statistics": f"numpy percentile method '{PERCENTILE_METHOD}', std ddof={STD_DDOF}, "
                                  "fps = 1000 / mean ms",
            "settle_ms": cfg.settle_ms,
            "block": cfg.block,
            "memory": memprobe.METHOD.format(iters=cfg.memory_iters) if cfg.memory else "skipped (--no-memory)",
            "power": power_status,
            "accuracy": ("confusion matrix at the label resolution, logits upsampled bilinearly then argmax "
                         "('exact'); classes absent from labels and predictions excluded from the mean; "
                         "argmax agreement = share of pixels with the same label as the FP32 PyTorch reference"),
            "calibration": calib.description if calib else None,
            "calib_count": cfg.calib_count,
            "flops_convention": CONVENTION,
        },
        "models": models_out,
        "rows": rows,
        "sweep": sweep_rows,
        "notes": notes,
    }
    return _clean(results)


def _measure_power(e: Entry, frames: Sequence[tuple[str, np.ndarray]], sampler: Any, min_frames: int,
                   summarize: Callable[..., Any]) -> dict[str, Any] | None:
    """Idle second, then the target alone for ≥ POWER_MIN_SECONDS and ≥ min_frames inferences."""
    t_idle = time.perf_counter()
    time.sleep(1.0)
    idle = sampler.window(t_idle, time.perf_counter())
    x = e.seg.prepare(frames[0][1])
    n = 0
    t0 = time.perf_counter()
    while n < min_frames or time.perf_counter() - t0 < POWER_MIN_SECONDS:
        e.seg.backend.run(x)
        e.sync()
        n += 1
    t1 = time.perf_counter()
    return summarize(sampler.window(t0, t1), t1 - t0, n, idle)


def _utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


__all__ = ["BenchConfig", "DEFAULT_TARGETS", "Entry", "RESULTS_FORMAT", "Reporter", "RichReporter", "parse_targets",
           "run_bench", "time_round_robin"]
