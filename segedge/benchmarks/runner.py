"""`run_bench`: export what is missing, then measure every model × target on the same frames in one run.

Order of work (each step finishes before the next starts, so nothing else runs while a clock is running):
1. check the request (targets, dataset, sizes, --artifacts) and build the PyTorch reference of each model
   (`_check_request`, `_resolve_models`);
2. export the targets each (model, size) lacks (`_plan_exports`, `_run_exports`: the export pipeline; INT8
   calibrated on the train split or --calib), then open every model × target (`_open_entries`); with --baselines,
   build the library-default baselines from each export's FP32 ONNX (`_open_baselines`, baselines.py) and add them
   as entries, so everything below measures them exactly as the targets (memory excepted: the probe opens targets);
3. peak memory of each target in its own short-lived process (`_measure_memory`, memprobe.py);
4. latency (`_time_main`, `time_entries`): rotating blocks (timing.py) of inference alone (backend.run on a prepared
   input) and end to end (cv2.imread → pre-process → inference → labels at frame size), the device synchronised
   (`backend.synchronize()`) inside each timed call;
5. accuracy on the evaluation frames (`_measure_accuracy`, segedge.evaluation's loop): mIoU, per-class IoU and
   pixel accuracy against the labels, and the argmax agreement with the FP32 PyTorch reference frame by frame;
6. power on Jetson (`_measure_power`: tegrastats sampled in a background thread while one target runs alone);
7. the --sizes sweep (`_time_sweep`): latency only, same rotating blocks, one size at a time;
8. the results dict (`_rows`, `_models_out`, `_settings`): paths relative to the current directory when inside it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import cv2
import numpy as np

from ..errors import DataError, SegedgeError
from . import memprobe
from .stats import PERCENTILE_METHOD, STD_DDOF, latency_stats, miou_drop, ns_to_ms
from .targets import (REFERENCE, artifact_bytes, export_segmenter, path_bytes, portable_path, portable_spec,
                      resolve_device, same_backend, torch_segmenter)
from .timing import Call, time_blocks, timing_rounds

if TYPE_CHECKING:
    from ..evaluation import Evaluation

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
    baselines: bool = False  # also measure the library-default baselines (baselines.py) beside the targets
    command: list[str] = field(default_factory=lambda: list(sys.argv))


@dataclass
class Entry:
    """One model × target at one input size, loaded and ready to time."""

    model: str
    target: str
    size: tuple[int, int]
    seg: Any
    artifact: Path
    folder: Path | None
    precision: str
    infer_ns: list[int] = field(default_factory=list)
    e2e_ns: list[int] = field(default_factory=list)
    baseline: dict[str, Any] | None = None  # provenance of a library-default baseline (None: a segedge row)

    @property
    def key(self) -> tuple[str, str, tuple[int, int]]:
        """(model, target, size): what identifies a row."""
        return self.model, self.target, self.size


def parse_targets(targets: Sequence[str] | str) -> list[str]:
    """Target names, `torch` first (always present), duplicates dropped; unknown names are a one-line error."""
    from ..export.targets import TARGETS

    if isinstance(targets, str):
        targets = targets.split(",")
    names = [t.strip().lower() for t in targets if t and t.strip()]
    for n in names:  # registry lookup: "did you mean …" for typos, plug-in targets included
        if n != REFERENCE and n not in TARGETS:
            raise SegedgeError(f"{TARGETS.unknown_message(n)}; {REFERENCE} (the FP32 PyTorch reference) is always "
                               "measured")
    for n in names:  # measuring needs the artifact to run here: say so now, not after exporting it
        why = None if n == REFERENCE else TARGETS.get(n).run_unavailable()
        if why:
            raise SegedgeError(f"target {TARGETS.get(n).name} cannot run on this machine ({why}); benchmark it where "
                               "it runs (TensorRT targets: benchmarks/device_check.sh on the device)")
    return _unique([REFERENCE, *(n if n == REFERENCE else TARGETS.get(n).name for n in names)])


# ------------------------------------------------------------------------------------------------ timing
def time_entries(entries: Sequence[Entry], frames: Sequence[tuple[str, np.ndarray]], warmup: int, iters: int,
                 settle_s: float = 0.0, on_round: Callable[[int], None] | None = None, block: int = 1) -> None:
    """Time every entry in rotating blocks (`timing.time_blocks`): in round r, on frame r, first inference alone
    of every entry (backend.run on the frame prepared beforehand), then end to end (cv2.imread of the frame file →
    Segmenter.predict → labels at frame size); each call waits for the device (`backend.synchronize()`).

    Fills `entry.infer_ns` and `entry.e2e_ns` with `iters` durations each (ns); warm-up rounds are discarded.
    """
    phases = [lambda e, r: _inference_call(e.seg, frames[r % len(frames)][1]),
              lambda e, r: _end_to_end_call(e.seg, frames[r % len(frames)][0])]
    infer, e2e = time_blocks(entries, phases, warmup, iters, block, settle_s, on_round)
    for e, infer_ns, e2e_ns in zip(entries, infer, e2e):
        e.infer_ns.extend(infer_ns)
        e.e2e_ns.extend(e2e_ns)


def _inference_call(seg: Any, frame: np.ndarray) -> Call:
    """backend.run on `frame` pre-processed now (untimed), then a device sync."""
    x = seg.prepare(frame)
    backend = seg.backend

    def call() -> None:
        backend.run(x)
        backend.synchronize()

    return call


def _end_to_end_call(seg: Any, path: str) -> Call:
    """Read the frame file, predict labels at the frame's size, then a device sync."""
    def call() -> None:
        seg.predict(cv2.imread(path, cv2.IMREAD_COLOR))
        seg.backend.synchronize()

    return call


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


@dataclass
class _Request:
    """The checked request: models, targets, device and the evaluated dataset."""

    models: list[str]
    weights: list[str | None]
    targets: list[str]
    device: str
    postprocess: str
    power_mode: str
    data: Path
    ds: Any
    indices: list[int]
    given: dict[tuple[str, tuple[int, int]], Any]  # --artifacts folders by (model, size)
    baselines: bool = False

    @property
    def export_targets(self) -> list[str]:
        """The targets that come from an export folder (all but the PyTorch reference)."""
        return [t for t in self.targets if t != REFERENCE]

    @property
    def export_needs(self) -> list[str]:
        """What each export folder must hold: the export targets, plus the FP32 ONNX the baselines start from."""
        return _unique([*self.export_targets, *(["onnx"] if self.baselines else [])])


# One row of the export plan: (model, size, the folder serving it, the targets that folder lacks)
_Plan = tuple[_Model, tuple[int, int], Path, list[str]]


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


def _unique(items: Sequence[Any]) -> list[Any]:
    """Items in order, duplicates dropped."""
    out: list[Any] = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _validate_sizes(name: str, sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    from ..models import validate_input_size

    return _unique([validate_input_size(name, s) for s in sizes])


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


def _check_numbers(cfg: BenchConfig) -> None:
    if cfg.iters < 1:
        raise SegedgeError(f"--iters must be at least 1, got {cfg.iters}")
    if cfg.warmup < 0:
        raise SegedgeError(f"--warmup must be 0 or more, got {cfg.warmup}")
    if cfg.limit is not None and cfg.limit < 1:
        raise SegedgeError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.threads is not None and cfg.threads < 1:
        raise SegedgeError(f"--threads must be at least 1, got {cfg.threads}")


def _check_request(cfg: BenchConfig) -> _Request:
    """Every check on the request that needs no model built yet; opens the evaluated dataset."""
    import torch

    from ..data.datasets import open_dataset
    from ..models import get_spec
    from ..runtime.postprocess import check_mode
    from .artifacts import read_artifact_folders
    from .tegrastats import tegrastats_path

    _check_numbers(cfg)
    postprocess = check_mode(cfg.postprocess)
    power_mode = str(cfg.power).lower()
    if power_mode not in ("auto", "on", "off"):
        raise SegedgeError(f"--power must be auto, on or off, got '{cfg.power}'")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))  # exports and the reference then use the requested threads too
    targets = parse_targets(cfg.targets)
    if cfg.baselines and targets == [REFERENCE]:
        raise SegedgeError("--baselines compares library defaults with segedge's export targets, but --targets names "
                           "none; add one or more (e.g. --targets onnx,ort-int8,openvino-int8)")
    if not cfg.models:
        raise SegedgeError("no model given: pass --model NAME[,NAME…]")
    models = _unique([get_spec(m).name for m in cfg.models])
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
    return _Request(models, weights, targets, device, postprocess, power_mode, data, ds, indices, given,
                    bool(cfg.baselines))


def _resolve_models(cfg: BenchConfig, req: _Request, notes: list[str]) -> list[_Model]:
    """Build each model's PyTorch reference and its benchmarked sizes (no output yet: every input problem is found
    before the first progress line)."""
    from ..models import create_model, validate_input_size

    ds = req.ds
    states: list[_Model] = []
    for name, w in zip(req.models, req.weights):
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
    for key, af in req.given.items():
        if key[1] not in by_name[key[0]].complexity:
            notes.append(f"--artifacts {af.folder} ({key[1][0]}x{key[1][1]}) is not at a benchmarked size "
                         f"of {key[0]}: unused")
    return states


def _plan_exports(cfg: BenchConfig, req: _Request, states: Sequence[_Model], notes: list[str]) -> \
        tuple[Any, list[_Plan]]:
    """Which folder serves each (model, size), what it lacks, and whether INT8 can be calibrated: (calib, plans)."""
    from .artifacts import calibration_source, check_calibration, default_folder, plan_export

    if not req.export_targets:
        return None, []
    plans: list[_Plan] = []
    calib = calibration_source(cfg.calib, cfg.dataset, req.data, req.ds, cfg.num_classes)
    for st in states:
        for s in st.complexity:
            af = req.given.get((st.name, s))
            if af:
                folder = af.folder
            else:
                folder, note = default_folder(st.cfg, s)
                if note:
                    notes.append(note)
            wanted = req.export_needs if s == st.size else req.export_targets  # baselines: own size only
            missing, plan_notes = plan_export(folder, af is not None, st.cfg, s, wanted)
            check_calibration(missing, calib, st.name)
            notes.extend(plan_notes)
            st.folders[s] = folder
            plans.append((st, s, folder, missing))
    return calib, plans


def _count_complexity(states: Sequence[_Model], ui: Reporter) -> None:
    from ..models.complexity import count_flops

    with ui.task("counting parameters and MACs", sum(len(st.complexity) for st in states)) as advance:
        for st in states:
            for s in st.complexity:
                st.complexity[s] = count_flops(st.module, s)
                advance()


def _run_exports(plans: Sequence[_Plan], calib: Any, cfg: BenchConfig, ui: Reporter, notes: list[str]) -> None:
    """Export what each plan lacks (or log the reuse of a complete folder)."""
    from .artifacts import run_export

    for st, s, folder, missing in plans:
        if not missing:
            ui.log(f"reused {folder} for {st.name} {s[0]}x{s[1]}")
            continue
        label = f"export {st.name} {s[0]}x{s[1]} ({', '.join(missing)}) to {folder}"
        with ui.task(label) as advance:
            notes.extend(run_export(folder, st.cfg, s, missing, calib, cfg.calib_count,
                                    lambda msg, _a=advance, _l=label: _a(0, f"{_l}: {msg}")))
        st.exported[s] = missing


def _open_entry(st: _Model, target: str, size: tuple[int, int], threads: int | None, req: _Request) -> Entry:
    """Load one model × target at `size`: the PyTorch reference, or the target of the model's export folder."""
    from ..contract import read_manifest

    if target == REFERENCE:
        seg = torch_segmenter(st.module, size, threads, req.device, req.postprocess)
        return Entry(st.name, target, size, seg, Path(st.weights_path), None, "fp32")
    folder = st.folders[size]
    seg = export_segmenter(folder, target, threads, req.postprocess)
    if seg.info.input_size != size or (seg.info.model and seg.info.model != st.name):
        raise SegedgeError(f"{folder} target {target} runs {seg.info.model} at {seg.info.input_size}, "
                           f"expected {st.name} at {size}; re-export it")
    entry = read_manifest(folder)["targets"][target]
    return Entry(st.name, target, size, seg, folder / entry["file"], folder,
                 str(entry.get("precision") or seg.info.precision or "?"))


def _open_entries(states: Sequence[_Model], sizes: dict[str, tuple[int, int]], threads: int | None,
                  req: _Request) -> list[Entry]:
    """Every target of each model named in `sizes`, at that size (models absent from `sizes` are skipped)."""
    return [_open_entry(st, t, sizes[st.name], threads, req) for st in states if st.name in sizes
            for t in req.targets]


def _open_baselines(states: Sequence[_Model], main: Sequence[Entry], cfg: BenchConfig, req: _Request, calib: Any,
                    work: Path, ui: Reporter, notes: list[str]) -> tuple[list[Entry], dict[str, Any]]:
    """Build and open every library-default baseline (baselines.py) of each model at its own size, from its export
    folder's FP32 ONNX, in `work`; ([entries], the results' `baselines` settings). A baseline whose library is
    missing, or whose library fails on this model, is skipped with the reason."""
    from .baselines import BASELINES, skipped_baselines

    skipped = skipped_baselines()
    names = [n for n in BASELINES if n not in skipped]
    entries: list[Entry] = []
    frames: dict[str, str | None] = {}  # model → where its calibration frames came from
    from ..contract import read_manifest

    forms = sum(1 + _folded(read_manifest(st.folders[st.size])) for st in states)
    with ui.task(f"building the library-default baselines ({', '.join(names) or 'none available'})",
                 forms * len(names)) as advance:
        try:
            for st in states:
                opened, failed, frames[st.name] = _open_model_baselines(st, names, main, cfg, req, calib, work,
                                                                        notes, advance)
                entries.extend(opened)
                skipped.update(failed)
        except BaseException:
            _close(entries)
            raise
    for name, why in skipped.items():
        notes.append(f"baseline {name} skipped: {why}")
    return entries, {"requested": list(BASELINES), "measured": _unique([e.target for e in entries]),
                     "skipped": skipped, "calibration": frames,
                     "method": "library defaults on each export folder's FP32 model.onnx and, where segedge traced "
                               "an inference form (--fold), on the model traced as trained too (rows '… (as "
                               "trained)'), built before any clock runs and timed and evaluated with the targets in "
                               "the same rounds"}


def _open_model_baselines(st: _Model, names: Sequence[str], main: Sequence[Entry], cfg: BenchConfig, req: _Request,
                          calib: Any, work: Path, notes: list[str], advance: Callable[..., None]) -> \
        tuple[list[Entry], dict[str, str], str | None]:
    """One model's baselines: (entries, {name: why it failed}, where its calibration frames came from)."""
    from ..contract import read_manifest
    from .baselines import BASELINES, BaselineContext, build_baseline, calibration_inputs

    folder = st.folders[st.size]
    man = read_manifest(folder)
    # Pre-processing of the contract, taken from a target of the same export (all of them share it).
    prep = next(e.seg for e in main if e.model == st.name and e.folder is not None)
    frames, inputs = None, []
    if any(BASELINES[n].calibrated for n in names):
        calib_in = calibration_inputs(folder, man, calib, cfg.calib_count)
        notes.extend(calib_in.notes)
        frames, inputs = calib_in.description, [prep.prepare(f) for f in calib_in.frames]
    graphs = {"": folder / man["targets"]["onnx"]["file"]}
    trained = _as_trained_graph(st, man, work, notes)
    if trained is not None:  # the graph a user without segedge would quantize: baselines on it too
        graphs[AS_TRAINED] = trained
    entries, failed = [], {}
    for suffix, graph in graphs.items():
        ctx = BaselineContext(st.name, graph, work / f"{st.name}{suffix.strip(' ()').replace(' ', '-')}", inputs,
                              str(man["input"].get("name") or "input"), frames or "", cfg.threads)
        for n in names:
            try:
                built = build_baseline(n, ctx)
                if suffix:
                    built.provenance["graph"] = "traced as trained (--no-fold), not segedge's inference form"
                entries.append(_baseline_entry(st, n + suffix, built, folder, prep, req.postprocess))
            except SegedgeError as e:  # the library's defaults fail on this model: a finding, not a reason to stop
                failed[f"{n}{suffix} ({st.name})"] = str(e)
            advance()
    return entries, failed, frames


AS_TRAINED = " (as trained)"  # suffix of the baselines built on the graph traced as trained


def _folded(man: dict[str, Any]) -> bool:
    """Whether the export traced an inference form (then the baselines also run on the graph as trained)."""
    return bool((man.get("graph_form") or {}).get("folded"))


def _as_trained_graph(st: _Model, man: dict[str, Any], work: Path, notes: list[str]) -> Path | None:
    """The model traced as trained (`--no-fold`) when the export folded something (None otherwise, or without
    PyTorch, said in a note): library defaults on it are what a user gets without segedge's inference form."""
    if not _folded(man):
        return None
    from ..toolkits import get_toolkit

    why = get_toolkit("torch").unavailable()
    if why:
        notes.append(f"baselines on the graph as trained skipped: {why}")
        return None
    from ..export.pipeline import ExportOptions, export_model

    res = export_model(ExportOptions(st.name, weights=st.weights_path, targets=["onnx"], input_size=st.size,
                                     fold=False, out=work / f"{st.name}-as-trained", verify_frames=1))
    return res.artifacts["onnx"]


def _baseline_entry(st: _Model, name: str, built: Any, folder: Path, prep: Any, postprocess: str) -> Entry:
    """An Entry over a built baseline, with the export's contract (pre-/post-processing) checked against it."""
    from ..runtime import ModelInfo, Segmenter
    from ..runtime.checks import check_io

    info = ModelInfo(prep.info.contract, target=name, precision=built.precision, source="manifest")
    try:
        check_io(built.backend, info.contract, name)
    except SegedgeError:
        built.backend.close()
        raise
    return Entry(st.name, name, st.size, Segmenter(built.backend, info, postprocess), built.artifact, folder,
                 built.precision, baseline=built.provenance)


def _by_model(entries: Sequence[Entry], states: Sequence[_Model]) -> list[Entry]:
    """Entries grouped by model in --model order (a model's baselines right after its targets)."""
    order = {st.name: i for i, st in enumerate(states)}
    return sorted(entries, key=lambda e: order[e.model])


def _close(entries: Sequence[Entry]) -> None:
    """Release every entry's runtime session (its Segmenter refuses to run afterwards)."""
    for e in entries:
        e.seg.backend.close()


def _measure_memory(main: Sequence[Entry], states: Sequence[_Model], frames: Sequence[tuple[str, np.ndarray]],
                    cfg: BenchConfig, req: _Request, ui: Reporter, notes: list[str]) -> dict[tuple, dict[str, Any]]:
    """Peak RSS of each entry in a fresh process (probes may overlap each other; they never overlap timing)."""
    weights = {st.name: st.weights_path for st in states}
    specs = []
    for e in main:
        runtime = getattr(e.seg.backend, "name", "")
        backend_mod = BACKEND_MODULES.get(runtime, "")
        specs.append({"target": e.target, "model": e.model, "weights": weights[e.model],
                      "folder": str(e.folder) if e.folder else None, "input_size": list(e.size),
                      "threads": cfg.threads, "device": req.device, "postprocess": req.postprocess,
                      "frame": frames[0][0], "iters": cfg.memory_iters,
                      "runtime_modules": [backend_mod] if backend_mod else [],
                      # a library-default baseline reopens its built file with the library's defaults
                      **({"baseline": {"runtime": runtime, "file": str(e.artifact)},
                          "contract": e.seg.info.contract.to_dict()} if e.baseline is not None else {})})
    with ui.task("peak memory, one fresh process per target", len(specs)) as advance:
        res = memprobe.run_probes(specs, workers=min(2, len(specs)), on_done=lambda n: advance())
    mem = {}
    for e, r in zip(main, res):
        mem[e.key] = r
        if "error" in r:
            notes.append(f"memory of {e.model}/{e.target}: {r['error']}")
    return mem


def _time_main(main: Sequence[Entry], frames: Sequence[tuple[str, np.ndarray]], cfg: BenchConfig,
               ui: Reporter) -> None:
    rounds = timing_rounds(cfg.warmup, cfg.iters, cfg.block)
    with ui.task(f"timing {len(main)} model × target pairs, {cfg.warmup} warm-up + {cfg.iters} timed calls each "
                 f"in blocks of {cfg.block}", rounds) as advance:
        time_entries(main, frames, cfg.warmup, cfg.iters, _settle_s(cfg), on_round=lambda r: advance(),
                     block=cfg.block)


def _settle_s(cfg: BenchConfig) -> float:
    return max(0.0, cfg.settle_ms) / 1000.0


def _measure_accuracy(main: Sequence[Entry], req: _Request, ui: Reporter, notes: list[str]) -> "Evaluation":
    """mIoU etc. of every entry ('exact' post-processing) and its agreement with its model's reference, in one
    pass over the evaluation frames (segedge.evaluation.evaluate_predictors)."""
    from ..evaluation import dataset_samples, evaluate_predictors

    ds, indices = req.ds, req.indices
    predictors = {e.key: same_backend(e.seg, "exact").predict for e in main}
    references = {e.key: (e.model, REFERENCE, e.size) for e in main}
    with ui.task(f"accuracy on {len(indices)} {ds.name}/{ds.split} frames", len(indices)) as advance:
        res = evaluate_predictors(predictors, dataset_samples(ds, indices), ds.num_classes, ds.class_names,
                                  ds.ignore_index, references, progress=lambda n: advance())
    if res.skipped:
        notes.append(f"{res.skipped} unreadable or mismatched evaluation sample(s) skipped")
    if not res.frames:
        raise DataError(f"no evaluation sample of {ds.name}/{ds.split} could be read")
    return res


def _measure_power(main: Sequence[Entry], frames: Sequence[tuple[str, np.ndarray]], cfg: BenchConfig,
                   power_mode: str, ui: Reporter, notes: list[str]) -> tuple[dict[tuple, Any], str]:
    """Power per entry from tegrastats on a Jetson (else skipped): ({key: summary}, how it was measured)."""
    from .tegrastats import TegrastatsSampler, tegrastats_path

    power: dict[tuple, dict[str, Any] | None] = {}
    if power_mode == "off":
        return power, "skipped: --power off"
    if tegrastats_path() is None:
        return power, "skipped: tegrastats not found (power is measured on NVIDIA Jetson only)"
    with TegrastatsSampler(100) as sampler, ui.task("power per target (tegrastats)", len(main)) as advance:
        sampler.wait_for_samples(2)
        for e in main:
            power[e.key] = _power_of(e, frames, sampler, max(cfg.iters, 10))
            advance()
    if not any(power.values()):
        notes.append("tegrastats ran but printed no power rails (does it need sudo on this board?)")
    return power, "tegrastats, 100 ms interval, input rail (VDD_IN / POM_5V_IN) or the sum of rails"


def _power_of(e: Entry, frames: Sequence[tuple[str, np.ndarray]], sampler: Any, min_frames: int) -> \
        dict[str, Any] | None:
    """Idle second, then the target alone for ≥ POWER_MIN_SECONDS and ≥ min_frames inferences."""
    from .tegrastats import power_summary

    t_idle = time.perf_counter()
    time.sleep(1.0)
    idle = sampler.window(t_idle, time.perf_counter())
    x = e.seg.prepare(frames[0][1])
    n = 0
    t0 = time.perf_counter()
    while n < min_frames or time.perf_counter() - t0 < POWER_MIN_SECONDS:
        e.seg.backend.run(x)
        e.seg.backend.synchronize()
        n += 1
    t1 = time.perf_counter()
    return power_summary(sampler.window(t0, t1), t1 - t0, n, idle)


def _latency(e: Entry) -> dict[str, Any]:
    return {"inference": latency_stats(ns_to_ms(e.infer_ns)), "end_to_end": latency_stats(ns_to_ms(e.e2e_ns))}


def _time_sweep(states: Sequence[_Model], main: Sequence[Entry], sizes: Sequence[tuple[int, int]],
                frames: Sequence[tuple[str, np.ndarray]], cfg: BenchConfig, req: _Request,
                ui: Reporter) -> list[dict[str, Any]]:
    """Latency of every model × target at each --sizes size, one size at a time (a model's own size is its main
    measurement, not timed again); the sweep rows."""
    from ..models import validate_input_size

    rows: list[dict[str, Any]] = []
    main_by_key = {e.key: e for e in main}
    for s in sizes:
        at = {st.name: validate_input_size(st.name, s) for st in states}
        ents = _open_entries(states, {st.name: at[st.name] for st in states if st.size != s}, cfg.threads, req)
        try:
            if ents:
                with ui.task(f"sweep {s[0]}x{s[1]}: {cfg.warmup} warm-up + {cfg.iters} timed calls each",
                             timing_rounds(cfg.warmup, cfg.iters, cfg.block)) as advance:
                    time_entries(ents, frames, cfg.warmup, cfg.iters, _settle_s(cfg), on_round=lambda r: advance(),
                                 block=cfg.block)
            by_key = {**{e.key: e for e in ents}, **main_by_key}
            for st in states:
                for t in req.targets:
                    e = by_key[(st.name, t, at[st.name])]
                    rows.append({"model": st.name, "target": t, "input_size": list(e.size), "precision": e.precision,
                                 "gmacs": st.complexity[e.size]["gmacs"], "latency": _latency(e),
                                 "same_run_as_main": st.size == e.size})
        finally:
            _close(ents)
    return rows


# ------------------------------------------------------------------------------------------------ results
def _rows(main: Sequence[Entry], states: Sequence[_Model], acc: "Evaluation", mem: dict[tuple, dict[str, Any]],
          power: dict[tuple, Any]) -> list[dict[str, Any]]:
    """One results row per main entry."""
    by_name = {st.name: st for st in states}
    ref_miou = {e.model: acc.metrics[e.key].miou for e in main if e.target == REFERENCE}
    rows = []
    for e in main:
        st = by_name[e.model]
        m = acc.metrics[e.key]
        md = m.as_dict()
        comp = st.complexity[e.size]
        rows.append({
            "model": e.model, "target": e.target, "reference": e.target == REFERENCE,
            "input_size": list(e.size), "precision": e.precision,
            "backend": e.seg.backend.describe(),
            "artifact": _artifact_label(e),
            "artifact_bytes": artifact_bytes(e.artifact) if e.folder else st.weights_bytes,
            "exported_now": bool(e.folder) and e.target in st.exported.get(e.size, []),
            "baseline": e.baseline,
            "params": comp["params"], "gmacs": comp["gmacs"], "gflops": comp["gflops"],
            "latency": _latency(e),
            "memory": mem.get(e.key),
            "accuracy": {"miou": md["miou"], "pixel_acc": md["pixel_acc"], "mean_acc": md["mean_acc"],
                         "per_class_iou": md["per_class_iou"], "frames": acc.frames,
                         "miou_drop": miou_drop(ref_miou[e.model], m.miou),
                         "argmax_agreement": acc.agreement[e.key]},
            "power": power.get(e.key),
        })
    return rows


def _artifact_label(e: Entry) -> str:
    """The row's artifact path; a baseline built in the run's scratch folder (deleted afterwards) says so."""
    if e.baseline is not None and e.folder is not None and e.folder not in e.artifact.parents:
        return f"(temporary, rebuilt each run) {e.target}/{e.artifact.name}"
    return portable_path(e.artifact)


def _models_out(states: Sequence[_Model], ds: Any) -> dict[str, dict[str, Any]]:
    """The `models` section: each checkpoint, its classes, complexity at its own size and export folders."""
    from ..models.complexity import count_params

    out = {}
    for st in states:
        comp = st.complexity[st.size]
        out[st.name] = {
            "family": st.cfg["family"], "weights": portable_path(st.weights_path),
            "weights_sha256": st.cfg["weights_sha256"], "num_classes": st.cfg["num_classes"],
            "class_names": list(ds.class_names), "input_size": list(st.size), "params": count_params(st.module),
            "gmacs": comp["gmacs"], "gflops": comp["gflops"],
            "export_folders": {f"{s[0]}x{s[1]}": portable_path(f) for s, f in st.folders.items()},
        }
    return out


def _settings(cfg: BenchConfig, req: _Request, timing_frames: int, eval_frames: int,
              sweep_sizes: Sequence[tuple[int, int]], power_status: str, calib: Any,
              baselines: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `settings` section: how everything was measured."""
    import torch

    from ..models.complexity import CONVENTION

    return {
        "dataset": req.ds.name, "data": portable_path(req.data), "split": cfg.split, "eval_frames": eval_frames,
        "timing_frames": timing_frames, "warmup": cfg.warmup, "iters": cfg.iters, "threads": cfg.threads,
        "torch_threads": torch.get_num_threads(), "device": req.device, "targets": req.targets,
        "postprocess_end_to_end": req.postprocess, "postprocess_accuracy": "exact",
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
        "baselines": baselines,
    }


def run_bench(cfg: BenchConfig, reporter: Reporter | None = None) -> dict[str, Any]:
    """Run the whole benchmark (see module docstring) and return the results dict (schema: schema.py)."""
    from .machine import machine_info

    ui = reporter or Reporter()
    notes: list[str] = []
    t_start = time.perf_counter()
    req = _check_request(cfg)
    states = _resolve_models(cfg, req, notes)
    calib, plans = _plan_exports(cfg, req, states, notes)
    _count_complexity(states, ui)
    _run_exports(plans, calib, cfg, ui, notes)
    with ui.task("loading every model × target", len(states) * len(req.targets)) as advance:
        main = _open_entries(states, {st.name: st.size for st in states}, cfg.threads, req)
        advance(len(main))
    baselines = None
    with tempfile.TemporaryDirectory(prefix="segedge-baselines-") as scratch:
        try:
            if req.baselines:
                extra, baselines = _open_baselines(states, main, cfg, req, calib, Path(scratch), ui, notes)
                main = _by_model([*main, *extra], states)
            frames = _timing_frames(req.ds, req.indices, min(len(req.indices), cfg.iters))
            mem = _measure_memory(main, states, frames, cfg, req, ui, notes) if cfg.memory else {}
            _time_main(main, frames, cfg, ui)
            acc = _measure_accuracy(main, req, ui, notes)
            power, power_status = _measure_power(main, frames, cfg, req.power_mode, ui, notes)
            sweep_sizes = _unique(list(cfg.sizes))
            sweep = _time_sweep(states, main, sweep_sizes, frames, cfg, req, ui)
            rows = _rows(main, states, acc, mem, power)
        finally:
            _close(main)
    return _clean({
        "format": RESULTS_FORMAT,
        "created": _utc_now(),
        "command": [portable_spec(str(a)) for a in cfg.command],
        "duration_s": time.perf_counter() - t_start,
        "machine": machine_info(cfg.threads),
        "settings": _settings(cfg, req, len(frames), acc.frames, sweep_sizes, power_status, calib, baselines),
        "models": _models_out(states, req.ds),
        "rows": rows,
        "sweep": sweep,
        "notes": notes,
    })


def _utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


__all__ = ["BenchConfig", "DEFAULT_TARGETS", "Entry", "RESULTS_FORMAT", "Reporter", "RichReporter", "parse_targets",
           "run_bench", "time_entries"]
