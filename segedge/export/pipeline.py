"""`export_model`: PyTorch → verified FP32 ONNX → each requested target → manifest, committed all at once.

Steps: resolve options (model, weights, size, io, dynamic axes, targets) → load check/calibration frames → trace
(the raw-io wrapper when asked) → simplify → onnx.checker → compare with PyTorch on real frames (gate) → build
each target from the registry → write manifest.json. Artifacts are staged in a hidden folder inside the output
folder and moved into place only when every step has passed; the old manifest is removed first and the new one
written last, so an interrupted or failed export never leaves a model.onnx / manifest.json that looks valid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, ExportError, SegedgeError
from ..io import sha256_file
from ..models import create_model, default_weights, get_spec, parse_size, validate_input_size
from ..runtime.backends.base import Backend
from ..runtime.preprocess import preprocess, to_raw_input
from . import verify as _verify
from .calibration import (DEFAULT_CALIB_COUNT, CalibrationFrames, check_method, get_calibration_table,
                          load_calibration_frames)
from .manifest import (MANIFEST_FORMAT, MANIFEST_NAME, ManifestBuilder, read_manifest, tool_versions, utc_now)
from .quantize import check_ort_scope
from .targets import ExportContext, resolve_targets
from .torch2onnx import EXPORTER, MAX_OPSET, MIN_OPSET, check, export_module, opset_of, simplify
from .wrappers import RawIOWrapper

IO_MODES = ("float", "raw")
DEFAULT_OPSET = 17
VERIFY_FRAMES = 4
DEFAULT_VAL_COUNT = 32
OV_PRECISIONS = ("f32", "bf16")  # OpenVINO CPU INFERENCE_PRECISION_HINT used to check the openvino* targets


@dataclass
class ExportOptions:
    """Everything `segedge export` accepts (see the CLI help for each flag)."""

    model: str
    weights: str | Path | None = None  # None → the embedded demo checkpoint
    targets: Sequence[str] | str = ("onnx",)
    input_size: str | tuple[int, int] | None = None  # None → the checkpoint's training size
    calib: Any = None  # folder | video | "dataset:ROOT[:SPLIT]" | iterable/callable of BGR frames | dataset
    calib_count: int | None = None
    calib_method: str = "minmax"
    calib_seed: int = 0
    video_step: int | None = None
    opset: int = DEFAULT_OPSET
    dynamic: bool = False  # dynamic batch, height and width (SegFormer)
    dynamic_batch: bool = False  # dynamic batch only (any family)
    io: str = "float"
    raw_color: str = "BGR"
    upsample: bool = False  # raw io: labels at the input size instead of the output stride
    keep_float: Sequence[str] = ()
    quantize_all: bool = False
    val: Any = None  # folder | dataset | iterable/callable of (frame, label) pairs
    val_count: int | None = DEFAULT_VAL_COUNT
    out: str | Path | None = None
    verify_frames: int = VERIFY_FRAMES
    ov_precision: str = "f32"  # openvino targets: inference precision hint of their check (f32 | bf16)
    ort_scope: str = "auto"  # ort-int8: auto (per family) | all | conv, see segedge.export.quantize


@dataclass
class ExportResult:
    """What an export produced."""

    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    artifacts: dict[str, Path]
    notes: list[str] = field(default_factory=list)


def default_out_dir(model: str, size: tuple[int, int], io: str = "float", dynamic: bool = False,
                    dynamic_batch: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """exports/<model>-<H>x<W>[-raw][-dynamic|-dynbatch][-opsetN]."""
    name = f"{model}-{size[0]}x{size[1]}"
    if io == "raw":
        name += "-raw"
    if dynamic:
        name += "-dynamic"
    elif dynamic_batch:
        name += "-dynbatch"
    if opset != DEFAULT_OPSET:
        name += f"-opset{opset}"
    return Path("exports") / name


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create output folder {out}: {e.strerror or e}; choose a writable --out") from None
    if not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a folder; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".segedge-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"output folder {out} is not writable ({e.strerror or e}); choose another --out") from None


def _val_pairs(val: Any, count: int | None, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, label) pairs from a folder (dataset layout auto-detected), a dataset, or an iterable/callable."""
    if callable(val) and not hasattr(val, "samples"):
        val = val()
    if isinstance(val, (str, Path)):
        from ..data.datasets import open_dataset

        root = Path(val)
        if not root.is_dir():
            raise ExportError(f"--val folder not found: {root}; pass a labelled dataset folder")
        if (root / "valannot").is_dir() or (root / "testannot").is_dir():
            kind, split = "camvid", "val" if (root / "valannot").is_dir() else "test"
        elif (root / "leftImg8bit").is_dir():
            kind, split = "cityscapes", "val"
        elif (root / "ADEChallengeData2016").is_dir() or (root / "annotations").is_dir():
            kind, split = "ade20k", "val"
        else:
            kind, split = "folder", "val"
        kwargs = {"num_classes": num_classes} if kind == "folder" else {}
        val = open_dataset(kind, root, split, **kwargs)
    if hasattr(val, "samples") and hasattr(val, "__getitem__"):
        if getattr(val, "num_classes", num_classes) != num_classes:
            raise ExportError(f"--val dataset has {val.num_classes} classes but the model has {num_classes}")
        n = len(val) if count is None else min(count, len(val))
        return [val[i] for i in range(n)]
    pairs = []
    for item in val:
        if count is not None and len(pairs) >= count:
            break
        frame, label = item
        pairs.append((np.asarray(frame), np.asarray(label)))
    return pairs


def _torch_reference(module: torch.nn.Module, raw: bool) -> Callable[[np.ndarray], np.ndarray]:
    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return (module.logits(t) if raw else module(t)).numpy()
    return run


def export_model(options: ExportOptions, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Run one export (see module docstring); raises SegedgeError subclasses with one-line messages."""
    say = progress or (lambda msg: None)
    notes: list[str] = []
    opts = options
    spec = get_spec(opts.model)
    io = str(opts.io).lower()
    if io not in IO_MODES:
        raise SegedgeError(f"--io must be float or raw, got '{opts.io}'")
    raw_color = str(opts.raw_color).upper()
    if raw_color not in ("BGR", "RGB"):
        raise SegedgeError(f"--raw-color must be BGR or RGB, got '{opts.raw_color}'")
    if opts.upsample and io != "raw":
        raise SegedgeError("--upsample applies to --io raw only (float exports return logits at the output stride; "
                           "the runtime upsamples them)")
    if opts.dynamic and spec.family == "topformer":
        raise ExportError(f"{spec.name} cannot export dynamic height/width: TopFormer's pyramid pooling grid is "
                          "fixed by the input size; use --dynamic-batch and one export per input size")
    if not MIN_OPSET <= int(opts.opset) <= MAX_OPSET:
        raise ExportError(f"opset {opts.opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (17 default, 16 for "
                          "TensorRT 8.5 / JetPack 5)")
    targets = resolve_targets(opts.targets)
    method = check_method(opts.calib_method)
    needs_calib = any(t.needs_calibration for t in targets)
    if not needs_calib and (opts.keep_float or opts.quantize_all):
        notes.append("--keep-float / --quantize-all only affect INT8 targets (e.g. --target ort-int8); ignored")
    if opts.calib_count is not None and int(opts.calib_count) <= 0:
        raise SegedgeError(f"--calib-count must be positive, got {opts.calib_count}")
    check_ort_scope(opts.ort_scope)
    if str(opts.ov_precision).strip().lower() not in OV_PRECISIONS:
        raise SegedgeError(f"--ov-precision must be one of {', '.join(OV_PRECISIONS)}, got '{opts.ov_precision}'")

    # Weights: an explicit checkpoint, else the embedded demo one (said so in the notes).
    weights = opts.weights
    if weights is None:
        demo = default_weights(spec.name)
        if demo is None:
            raise CheckpointError(f"no --weights given and no embedded demo checkpoint for {spec.name} is available; "
                                  "pass --weights PATH (segedge, Hugging Face, NVlabs/mmseg or TopFormer checkpoint)")
        weights = demo
        notes.append(f"no --weights given: using the embedded demo checkpoint {demo.name}")
    size = opts.input_size
    # Parse/validate the size before loading weights so a typo fails fast.
    if size is not None:
        size = validate_input_size(spec.name, parse_size(size))
    say(f"loading {spec.name} weights")
    model = create_model(spec.name, weights=weights).eval()
    cfg = model.pretrained_cfg
    if size is None:
        size = validate_input_size(spec.name, parse_size(cfg["input_size"]))
    if io == "raw" and cfg["num_classes"] > 256:
        raise ExportError(f"--io raw outputs uint8 labels, but {spec.name} has {cfg['num_classes']} classes; use "
                          "--io float")

    out = Path(opts.out) if opts.out else default_out_dir(spec.name, size, io, opts.dynamic, opts.dynamic_batch,
                                                         opts.opset)
    created = not out.exists()
    _prepare_out(out)
    try:
        return _export_into(out, opts, spec, cfg, model, size, io, raw_color, targets, method, needs_calib, notes,
                            say)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed export leaves no empty folder it made itself
        raise


def _export_into(out: Path, opts: ExportOptions, spec: Any, cfg: dict[str, Any], model: torch.nn.Module,
                 size: tuple[int, int], io: str, raw_color: str, targets: list[Any], method: str, needs_calib: bool,
                 notes: list[str], say: Callable[[str], None]) -> ExportResult:
    """The export proper, once options are resolved and the output folder is known to be writable."""
    h, w = size
    # Frames: calibration needs `calib_count` of them; the PyTorch check uses the first few.
    count = (opts.calib_count or DEFAULT_CALIB_COUNT) if needs_calib else max(1, opts.verify_frames)
    say("reading calibration frames" if needs_calib else "reading check frames")
    frames: CalibrationFrames = load_calibration_frames(opts.calib, count, opts.calib_seed, opts.video_step)
    if frames.skipped:
        notes.append(f"skipped {frames.skipped} unreadable image file(s) in {frames.source}")
    if needs_calib and opts.calib_count and len(frames) < opts.calib_count:
        notes.append(f"calibrating on {len(frames)} frames: only {len(frames)} found for --calib-count "
                     f"{opts.calib_count}")

    mean, std = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    raw = io == "raw"
    module = RawIOWrapper(model, mean, std, raw_color, opts.upsample).eval() if raw else model

    def make_input(frame: np.ndarray, at: tuple[int, int] = size) -> np.ndarray:
        return to_raw_input(frame, at, raw_color) if raw else preprocess(frame, at, mean, std)

    input_name, output_name = ("frames", "labels") if raw else ("input", "logits")
    dyn_hw = bool(opts.dynamic)
    dyn_batch = bool(opts.dynamic or opts.dynamic_batch)
    dynamic_axes = None
    if dyn_batch:
        in_axes = {0: "batch"}
        out_axes = {0: "batch"}
        if dyn_hw:
            in_axes.update({1: "height", 2: "width"} if raw else {2: "height", 3: "width"})
            out_axes.update({1: "out_height", 2: "out_width"} if raw else {2: "out_height", 3: "out_width"})
        dynamic_axes = {input_name: in_axes, output_name: out_axes}

    check_frames = frames.frames[:max(1, opts.verify_frames)]
    batches = [make_input(f) for f in check_frames]
    # Dynamic batch: trace with a batch of 2 (a batch-1 example can freeze the batch dim) and check batch 2 too.
    example = torch.from_numpy(np.concatenate(batches[:2] if dyn_batch and len(batches) > 1 else
                                              [batches[0]] * (2 if dyn_batch else 1)))
    if dyn_batch:
        batches.append(example.numpy())
    if dyn_hw:  # check a second input size too
        m = spec.size_multiple
        batches.append(make_input(check_frames[0], (h + m, w + 2 * m)))

    stage = out / f".staging-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        say(f"exporting FP32 ONNX (opset {opts.opset})")
        onnx_model = export_module(module, example, opts.opset, input_name, output_name, dynamic_axes)
        onnx_model, simplifier = simplify(onnx_model)
        check(onnx_model)
        graph_sha = hashlib.sha256(onnx_model.SerializeToString()).hexdigest()
        fp32_path = stage / "model.fp32-nometa.onnx"
        import onnx

        onnx.save(onnx_model, str(fp32_path))

        say("checking the FP32 ONNX against PyTorch")
        # PyTorch outputs computed once and shared by every target's check (eager PyTorch is the slow part).
        reference = [_torch_reference(module, raw)(x) for x in batches]
        fp32_ver = _verify.compare_to_torch(onnx_model, batches, reference)
        _verify.check_fp32(fp32_ver, "the FP32 ONNX export")

        val_pairs = _val_pairs(opts.val, opts.val_count, cfg["num_classes"]) if opts.val is not None else None
        out_size = (h, w) if (raw and opts.upsample) else (h // spec.output_stride, w // spec.output_stride)
        description = {
            "format": MANIFEST_FORMAT,
            "segedge_version": tool_versions()["segedge"],
            "model": spec.name, "family": spec.family,
            "weights": {"path": str(cfg["weights"]), "sha256": cfg["weights_sha256"], "format": cfg["weights_format"],
                        "embedded": opts.weights is None},
            "num_classes": cfg["num_classes"], "class_names": list(cfg["class_names"]),
            "input": {"name": input_name, "height": h, "width": w, "layout": "NHWC" if raw else "NCHW",
                      "color_order": raw_color if raw else "RGB", "dtype": "uint8" if raw else "float32",
                      "mean": mean, "std": std, "io": io, "size_multiple": spec.size_multiple,
                      "dynamic": {"batch": dyn_batch, "height": dyn_hw, "width": dyn_hw},
                      "preprocess": "resize to HxW (cv2.INTER_LINEAR), BGR->RGB, (x - mean) / std" +
                                    (" (in-graph)" if raw else "")},
            "output": {"name": output_name, "kind": "labels" if raw else "logits",
                       "stride": 1 if (raw and opts.upsample) else spec.output_stride,
                       "size": list(out_size), "dtype": "uint8" if raw else "float32"},
            "opset": opset_of(onnx_model),
            "exporter": f"{EXPORTER}; simplified with {simplifier}",
            "graph_sha256": graph_sha,
            "tool_versions": tool_versions(),
            "created": utc_now(),
        }
        builder = ManifestBuilder(description)

        torch_val: dict[str, Any] = {}

        def run_val(onnx_m: Any, backend: Backend | None = None) -> dict[str, Any]:
            from ..runtime.backends.ort import OnnxRuntimeBackend
            from ..runtime.backends.pytorch import TorchBackend, describe_pretrained
            from ..runtime.modelinfo import ModelInfo
            from ..runtime.segmenter import Segmenter

            info = ModelInfo.from_description(description)
            seg = Segmenter(backend or OnnxRuntimeBackend(onnx_m), info, postprocess="exact")
            res = _verify.evaluate_miou(seg.predict, val_pairs, cfg["num_classes"], cfg["class_names"])
            if not torch_val:
                ref = Segmenter(TorchBackend(model), ModelInfo.from_description(describe_pretrained(cfg, size)),
                                postprocess="exact")
                torch_val.update(_verify.evaluate_miou(ref.predict, val_pairs, cfg["num_classes"],
                                                       cfg["class_names"]))
            res["pytorch_miou"] = torch_val["miou"]
            return res

        def verify_model(onnx_m: Any, what: str) -> dict[str, Any]:
            say(f"checking {what} against PyTorch")
            res = _verify.compare_to_torch(onnx_m, batches, reference)
            if val_pairs is not None:
                say(f"measuring {what} mIoU on {len(val_pairs)} labelled frames")
                res["val"] = run_val(onnx_m)
            return res

        def verify_run(run: Callable[[np.ndarray], Any], what: str) -> dict[str, Any]:
            """`verify_model` for a non-ONNX runtime: `run(batch)` → logits, or (first output, logits)."""
            say(f"checking {what} against PyTorch")
            res = _verify.compare_run_to_torch(run, batches, reference)
            if val_pairs is not None:
                say(f"measuring {what} mIoU on {len(val_pairs)} labelled frames")
                res["val"] = run_val(None, _RunBackend(run))
            return res

        if val_pairs is not None:
            fp32_ver["val"] = run_val(onnx_model)

        def pre_quant() -> Path:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            say("pre-processing the graph for quantization")
            dst = stage / "model.prequant.onnx"
            try:
                quant_pre_process(str(fp32_path), str(dst))
            except Exception:  # noqa: BLE001 - symbolic shape inference can fail on dynamic graphs
                quant_pre_process(str(fp32_path), str(dst), skip_symbolic_shape=True)
            return dst

        ctx = ExportContext(
            out_dir=out, stage_dir=stage, options=opts, manifest=builder, fp32_model=onnx_model, fp32_path=fp32_path,
            graph_sha256=graph_sha, input_name=input_name, make_input=make_input, frames=frames,
            verify=verify_model, progress=say, verify_with=verify_run,
            _calibration=lambda: get_calibration_table(out, ctx.pre_quant_model(), graph_sha, frames, make_input,
                                                       input_name, method, opts.calib_seed, say),
            _pre_quant=pre_quant,
        )
        ctx.cache["fp32_verification"] = fp32_ver

        staged: dict[str, Path] = {}
        for t in targets:
            say(f"building target {t.name}")
            art = t.build(ctx)
            entry = dict(art.entry)
            entry["sha256"] = sha256_file(art.path)
            entry["size_bytes"] = art.path.stat().st_size
            if art.extra_files:  # e.g. OpenVINO's .bin: hashed too, so a stale pair is never carried over
                entry["companion_files"] = {x.name: {"sha256": sha256_file(x), "size_bytes": x.stat().st_size}
                                            for x in art.extra_files}
            builder.add_target(t.name, entry)
            staged[entry["file"]] = art.path
            for extra in art.extra_files:
                staged[extra.name] = extra

        say("writing the export folder")
        _commit(out, staged, builder, graph_sha)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = builder.as_dict()
    artifacts = {name: out / e["file"] for name, e in manifest["targets"].items()}
    return ExportResult(out, out / MANIFEST_NAME, manifest, artifacts, notes)


def _commit(out: Path, staged: dict[str, Path], builder: ManifestBuilder, graph_sha: str) -> None:
    """Move staged files into `out` and write the manifest last; carry over still-valid targets of a previous
    export of the same graph, delete the files of stale ones."""
    old: dict[str, Any] = {}
    if (out / MANIFEST_NAME).is_file():
        try:
            old = read_manifest(out)
        except SegedgeError:
            old = {}
        os.unlink(out / MANIFEST_NAME)  # from here on the folder does not look like a finished export
    for name, entry in (old.get("targets") or {}).items():
        file = str(entry.get("file", ""))
        if not file or Path(file).name != file or name in builder.targets:
            continue
        p = out / file
        companions = {c: m for c, m in (entry.get("companion_files") or {}).items()
                      if isinstance(c, str) and c and Path(c).name == c and isinstance(m, dict)}
        if old.get("graph_sha256") == graph_sha and p.is_file() and entry.get("sha256") == sha256_file(p) \
                and file not in staged and all((out / c).is_file() and c not in staged
                                               and m.get("sha256") == sha256_file(out / c)
                                               for c, m in companions.items()):
            builder.add_target(name, entry)  # same FP32 graph: that artifact is still valid
        else:
            for f in (file, *companions):
                if (out / f).is_file() and f not in staged:
                    (out / f).unlink()
    for file, src in staged.items():
        os.replace(src, out / file)
    builder.write(out)


class _RunBackend(Backend):
    """A Backend over a plain `run(batch)` function (for the --val mIoU of non-ONNX targets during export)."""

    name = "export-check"

    def __init__(self, run: Callable[[np.ndarray], Any]) -> None:
        self._run = run

    def run(self, x: np.ndarray) -> np.ndarray:
        out = self._run(x)
        return out[0] if isinstance(out, tuple) else out

    @property
    def supports_batch(self) -> bool:
        return False


def summarize_result(result: ExportResult) -> list[str]:
    """One line per target with the verification figures (what the CLI prints at the end)."""
    lines = []
    for name, e in result.manifest["targets"].items():
        v = e.get("verification", {})
        companions = (e.get("companion_files") or {}).values()  # e.g. OpenVINO's .bin: the size is the pair's
        size = e.get("size_bytes", 0) + sum(c.get("size_bytes", 0) for c in companions)
        line = f"{name:<13} {e['file']:<18} {e['precision']:<5} {size / 1e6:6.1f} MB"
        if v:
            line += f"  max|Δ| {v.get('max_abs_diff', float('nan')):.3g}  argmax agree {v.get('argmax_agreement', 0):.2%}"
        if "val" in v and v["val"].get("miou") is not None:
            ref = v["val"].get("pytorch_miou")
            line += f"  mIoU {v['val']['miou']:.4f}" + (f" (PyTorch {ref:.4f})" if ref is not None else "")
        lines.append(line)
    return lines


def iter_targets_help() -> Iterable[str]:
    """'name: description' for every registered target (CLI help)."""
    from .targets import list_targets

    for t in list_targets():
        yield f"{t.name}: {t.description}"
