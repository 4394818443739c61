"""`export_model`: PyTorch → verified FP32 ONNX → each requested target → manifest, committed all at once.

Steps (one function each): resolve options (model, weights, size, io, targets and their own options) → load
check/calibration frames → trace (the raw-io wrapper when asked) → simplify → onnx.checker → compare with PyTorch on
real frames (gate) → build each target from the registry → write manifest.json. The folder's whole next state is
built beside it and swapped in at once (segedge.export.folder), so an interrupted or failed export leaves the
previous export complete and untouched; targets not re-exported are carried over while still valid for the new graph
and otherwise refused (`--replace` drops them).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..contract import (MANIFEST_FORMAT, MANIFEST_NAME, DynamicAxes, InputContract, Manifest, ModelContract,
                        OutputContract, tool_versions, utc_now)
from ..errors import CheckpointError, ExportError, SegedgeError
from ..io import ensure_writable_dir
from ..models import create_model, default_weights, deploy_form, get_spec, parse_size, validate_input_size
from ..runtime.backends.base import Backend
from . import verify as _verify
from ..testhooks import pause_point
from .calibration import (DEFAULT_CALIB_COUNT, CalibrationFrames, check_method, get_calibration_table,
                          load_calibration_frames)
from .assemble import (RunBackend, build_targets, commit, make_input, pre_quant, previous_export,
                       summarize_result, val_pairs)
from .folder import FolderTransaction
from .options import DEFAULT_OPSET, IO_MODES, ExportOptions, ExportResult
from .targets import ExportContext, TargetSpec, resolve_targets
from .targets import resolve_option_values as _resolve_option_values
from .torch2onnx import EXPORTER, MAX_OPSET, MIN_OPSET, check, export_module, opset_of, simplify
from .wrappers import RawIOWrapper

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
    """The output path must be a folder (or not exist yet) in a writable parent: the next state is staged beside it."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"output path {out} exists and is not a folder; choose another --out")
    ensure_writable_dir(Path(os.path.abspath(out)).parent, f"beside output folder {out}", "choose another --out",
                        ExportError)


def _torch_reference(module: torch.nn.Module, raw: bool) -> Callable[[np.ndarray], np.ndarray]:
    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return (module.logits(t) if raw else module(t)).numpy()
    return run


@dataclass
class _Plan:
    """An export's options once resolved and validated (step 1), shared by the steps that follow."""

    opts: ExportOptions
    spec: Any  # ModelSpec
    model: torch.nn.Module
    cfg: dict[str, Any]  # model.pretrained_cfg
    size: tuple[int, int]
    io: str
    raw_color: str
    targets: list[TargetSpec]
    target_options: dict[str, Any]
    method: str
    needs_calib: bool
    notes: list[str]
    folded: list[str] = field(default_factory=list)  # module paths traced in their inference form (deploy_form)

    @property
    def raw(self) -> bool:
        return self.io == "raw"

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.cfg["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(v) for v in self.cfg["std"]]

    @property
    def io_names(self) -> tuple[str, str]:
        return ("frames", "labels") if self.raw else ("input", "logits")

    @property
    def dynamic(self) -> DynamicAxes:
        dyn_hw = bool(self.opts.dynamic)
        return DynamicAxes(batch=bool(self.opts.dynamic or self.opts.dynamic_batch), height=dyn_hw, width=dyn_hw)


def _check_options(opts: ExportOptions) -> tuple[Any, str, str]:
    """Validate the flags that need no model: (spec, io, raw colour)."""
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
    if opts.calib_count is not None and int(opts.calib_count) <= 0:
        raise SegedgeError(f"--calib-count must be positive, got {opts.calib_count}")
    if isinstance(opts.val, (str, Path)) and not Path(opts.val).is_dir():  # before the weights load and the trace
        raise ExportError(f"--val folder not found: {opts.val}; pass a labelled dataset folder")
    return spec, io, raw_color


def _check_budget(opts: ExportOptions, targets: Sequence[TargetSpec], notes: list[str]) -> None:
    """--max-miou-drop needs --val and an ONNX INT8 target (or cpu, which always measures drops and so always needs
    --val); checked before the weights load."""
    from .sensitivity import BUDGET_TARGETS, check_budget

    opts.max_miou_drop = check_budget(opts.max_miou_drop)
    names = [t.name for t in targets]
    if "cpu" in names and opts.val is None:
        raise SegedgeError("--target cpu measures every candidate's mIoU drop: add --val DIR (a labelled dataset "
                           "folder such as CamVid)")
    if opts.max_miou_drop is None:
        return
    if opts.val is None:
        raise SegedgeError("--max-miou-drop needs labelled frames to measure the drop: add --val DIR (a labelled "
                           "dataset folder such as CamVid)")
    searched = (*BUDGET_TARGETS, "openvino-int8", "cpu")
    if not any(n in searched for n in names):
        raise SegedgeError(f"--max-miou-drop applies to the targets {', '.join(searched)}; add one to --target or "
                           "drop --max-miou-drop")
    if any(n.endswith("int8") and n not in searched for n in names):
        notes.append("--max-miou-drop does not search " + ", ".join(n for n in names if n.endswith("int8") and n not in
                                                                   searched) + " yet: they keep their defaults")


def _load_model(spec: Any, opts: ExportOptions, notes: list[str]) -> tuple[torch.nn.Module, tuple[int, int]]:
    """The model with its weights (the embedded demo checkpoint when none is given) and the validated input size."""
    weights = opts.weights
    if weights is None:
        demo = default_weights(spec.name)
        if demo is None:
            raise CheckpointError(f"no --weights given and no embedded demo checkpoint for {spec.name} is available; "
                                  "pass --weights PATH (segedge, Hugging Face, NVlabs/mmseg or TopFormer checkpoint)")
        weights = demo
        notes.append(f"no --weights given: using the embedded demo checkpoint {demo.name}")
    # Parse/validate the size before loading weights so a typo fails fast.
    size = validate_input_size(spec.name, parse_size(opts.input_size)) if opts.input_size is not None else None
    if size is not None:
        _check_memory(spec.name, size)
    model = create_model(spec.name, weights=weights).eval()
    if size is None:
        size = validate_input_size(spec.name, parse_size(model.pretrained_cfg["input_size"]))
        _check_memory(spec.name, size)
    return model, size


# An export holds PyTorch's forward, the traced graph and an ONNX Runtime session of it at once.
_EXPORT_MEMORY_FACTOR = 3


def _check_memory(name: str, size: tuple[int, int]) -> None:
    """Refuse an input size whose export would not fit in the memory available now (estimated, before allocating)."""
    import psutil

    from ..models.registry import estimate_forward_bytes

    need = _EXPORT_MEMORY_FACTOR * estimate_forward_bytes(name, size)
    have = psutil.virtual_memory().available
    if need > have:
        raise ExportError(f"exporting {name} at {size[0]}x{size[1]} needs about {need / 1e9:.1f} GB of memory and "
                          f"{have / 1e9:.1f} GB are available; choose a smaller --input-size")


def _resolve(opts: ExportOptions, say: Callable[[str], None]) -> _Plan:
    """Step 1: every option checked (cheap ones before the weights load), targets and their options resolved."""
    notes: list[str] = []
    spec, io, raw_color = _check_options(opts)
    targets = resolve_targets(opts.targets)
    target_options = _resolve_option_values(targets, dict(opts.target_options or {}))
    method = check_method(opts.calib_method)
    needs_calib = any(t.needs_calibration for t in targets)
    _check_budget(opts, targets, notes)
    if not needs_calib and (opts.keep_float or opts.quantize_all):
        notes.append("--keep-float / --quantize-all only affect INT8 targets (e.g. --target ort-int8); ignored")
    say(f"loading {spec.name} weights")
    model, size = _load_model(spec, opts, notes)
    cfg = model.pretrained_cfg
    if io == "raw" and cfg["num_classes"] > 256:
        raise ExportError(f"--io raw outputs uint8 labels, but {spec.name} has {cfg['num_classes']} classes; use "
                          "--io float")
    return _Plan(opts, spec, model, cfg, size, io, raw_color, targets, target_options, method, needs_calib, notes)


def export_model(options: ExportOptions, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Run one export (see module docstring); raises SegedgeError subclasses with one-line messages."""
    say = progress or (lambda msg: None)
    plan = _resolve(options, say)
    opts = plan.opts
    out = Path(opts.out) if opts.out else default_out_dir(plan.spec.name, plan.size, plan.io, opts.dynamic,
                                                         opts.dynamic_batch, opts.opset)
    _prepare_out(out)
    return _export_into(out, plan, say)


def recorded_fold(contract: ModelContract | None) -> bool:
    """The `fold` option that re-traces a folder's graph as it is: folders written before segedge recorded its
    graph form were traced as trained; a new folder (None) gets the default."""
    if contract is None:
        return ExportOptions.fold
    return (contract.graph_form or {}).get("form") == "inference"


def _load_frames(plan: _Plan, say: Callable[[str], None]) -> CalibrationFrames:
    """Step 2: calibration frames (`calib_count` of them) or the few check frames an FP32 export needs."""
    opts = plan.opts
    count = (opts.calib_count or DEFAULT_CALIB_COUNT) if plan.needs_calib else max(1, opts.verify_frames)
    say("reading calibration frames" if plan.needs_calib else "reading check frames")
    frames = load_calibration_frames(opts.calib, count, opts.calib_seed, opts.video_step)
    if frames.skipped:
        plan.notes.append(f"skipped {frames.skipped} unreadable image file(s) in {frames.source}")
    if plan.needs_calib and opts.calib_count and len(frames) < opts.calib_count:
        plan.notes.append(f"calibrating on {len(frames)} frames: only {len(frames)} found for --calib-count "
                          f"{opts.calib_count}")
    return frames


def _dynamic_axes(plan: _Plan) -> dict[str, dict[int, str]] | None:
    """torch.onnx dynamic_axes for the requested dynamic dimensions (None when static)."""
    dyn = plan.dynamic
    if not dyn.batch:
        return None
    input_name, output_name = plan.io_names
    in_axes, out_axes = {0: "batch"}, {0: "batch"}
    if dyn.height:
        in_axes.update({1: "height", 2: "width"} if plan.raw else {2: "height", 3: "width"})
        out_axes.update({1: "out_height", 2: "out_width"} if plan.raw else {2: "out_height", 3: "out_width"})
    return {input_name: in_axes, output_name: out_axes}


def _check_batches(plan: _Plan, frames: CalibrationFrames, make_input: Callable[..., np.ndarray]
                   ) -> tuple[list[np.ndarray], torch.Tensor]:
    """(check batches, trace example): the first frames, a batch of 2 when the batch is dynamic (a batch-1 example
    can freeze the batch dim, so it is traced and checked with 2), and a second size when H/W are dynamic."""
    dyn = plan.dynamic
    batches = [make_input(f) for f in frames.frames[:max(1, plan.opts.verify_frames)]]
    example = torch.from_numpy(np.concatenate(batches[:2] if dyn.batch and len(batches) > 1 else
                                              [batches[0]] * (2 if dyn.batch else 1)))
    if dyn.batch:
        batches.append(example.numpy())
    if dyn.height:
        m, (h, w) = plan.spec.size_multiple, plan.size
        batches.append(make_input(frames.frames[0], (h + m, w + 2 * m)))
    return batches, example


def _trace_fp32(plan: _Plan, module: torch.nn.Module, example: torch.Tensor, work: Path,
                say: Callable[[str], None]) -> tuple[Any, str, str, Path]:
    """Step 3: export, simplify and check the FP32 graph; (model, simplifier, graph sha256, staged path)."""
    import onnx

    say(f"exporting FP32 ONNX (opset {plan.opts.opset})")
    input_name, output_name = plan.io_names
    onnx_model = export_module(module, example, plan.opts.opset, input_name, output_name, _dynamic_axes(plan))
    onnx_model, simplifier = simplify(onnx_model)
    check(onnx_model)
    graph_sha = hashlib.sha256(onnx_model.SerializeToString()).hexdigest()
    fp32_path = work / "model.fp32-nometa.onnx"
    onnx.save(onnx_model, str(fp32_path))
    return onnx_model, simplifier, graph_sha, fp32_path


def _contract(plan: _Plan, onnx_model: Any, simplifier: str, graph_sha: str) -> ModelContract:
    """The model contract every artifact of this export carries."""
    spec, cfg, opts, (h, w) = plan.spec, plan.cfg, plan.opts, plan.size
    input_name, output_name = plan.io_names
    upsampled = plan.raw and opts.upsample
    stride = 1 if upsampled else spec.output_stride
    return ModelContract(
        format=MANIFEST_FORMAT, segedge_version=tool_versions()["segedge"], model=spec.name, family=spec.family,
        weights={"path": str(cfg["weights"]), "sha256": cfg["weights_sha256"], "format": cfg["weights_format"],
                 "embedded": opts.weights is None},
        num_classes=cfg["num_classes"], class_names=list(cfg["class_names"]),
        input=InputContract(
            h, w, name=input_name, layout="NHWC" if plan.raw else "NCHW",
            color_order=plan.raw_color if plan.raw else "RGB", dtype="uint8" if plan.raw else "float32",
            mean=tuple(plan.mean), std=tuple(plan.std), io=plan.io, size_multiple=spec.size_multiple,
            dynamic=plan.dynamic,
            preprocess="resize to HxW (cv2.INTER_LINEAR), BGR->RGB, (x - mean) / std" + (
                " (in-graph)" if plan.raw else "")),
        output=OutputContract(kind="labels" if plan.raw else "logits", stride=stride,
                              dtype="uint8" if plan.raw else "float32", name=output_name,
                              size=(h // stride, w // stride)),
        opset=opset_of(onnx_model), exporter=f"{EXPORTER}; simplified with {simplifier}", graph_sha256=graph_sha,
        graph_form={"form": "inference" if plan.folded else "as-trained", "folded": list(plan.folded)},
        tool_versions=tool_versions(), created=utc_now())


class _Checks:
    """Every artifact's check against PyTorch: the reference outputs on the check batches (computed once: eager
    PyTorch is the slow part) and, with --val, mIoU on labelled frames next to PyTorch's."""

    def __init__(self, plan: _Plan, module: torch.nn.Module, batches: list[np.ndarray], contract: ModelContract,
                 say: Callable[[str], None]) -> None:
        self.plan, self.batches, self.contract, self.say = plan, batches, contract, say
        ref = _torch_reference(module, plan.raw)
        self.reference = [ref(x) for x in batches]
        opts = plan.opts
        self.val_pairs = val_pairs(opts.val, opts.val_count, plan.cfg["num_classes"]) if opts.val is not None \
            else None
        self._torch_miou: float | None = None

    def _miou(self, predict: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        cfg = self.plan.cfg
        return _verify.evaluate_miou(predict, self.val_pairs, cfg["num_classes"], cfg["class_names"])

    def run_val(self, backend: Backend) -> dict[str, Any]:
        """mIoU of `backend` on the labelled frames (exact post-processing), with PyTorch's beside it."""
        from ..runtime.backends.pytorch import TorchBackend, describe_pretrained
        from ..runtime.modelinfo import ModelInfo
        from ..runtime.segmenter import Segmenter

        res = self._miou(Segmenter(backend, ModelInfo(self.contract), postprocess="exact").predict)
        if self._torch_miou is None:
            plan = self.plan
            info = ModelInfo.from_description(describe_pretrained(plan.cfg, plan.size))
            self._torch_miou = self._miou(Segmenter(TorchBackend(plan.model), info, postprocess="exact").predict)["miou"]
        res["pytorch_miou"] = self._torch_miou
        return res

    def verify_model(self, onnx_m: Any, what: str) -> dict[str, Any]:
        """Compare an ONNX ModelProto with PyTorch (+ mIoU with --val)."""
        from ..runtime.backends.ort import OnnxRuntimeBackend

        self.say(f"checking {what} against PyTorch")
        res = _verify.compare_to_torch(onnx_m, self.batches, self.reference)
        if self.val_pairs is not None:
            self.say(f"measuring {what} mIoU on {len(self.val_pairs)} labelled frames")
            res["val"] = self.run_val(OnnxRuntimeBackend(onnx_m))
        return res

    def verify_run(self, run: Callable[[np.ndarray], Any], what: str) -> dict[str, Any]:
        """`verify_model` for a non-ONNX runtime: `run(batch)` → logits, or (first output, logits)."""
        self.say(f"checking {what} against PyTorch")
        res = _verify.compare_run_to_torch(run, self.batches, self.reference)
        if self.val_pairs is not None:
            self.say(f"measuring {what} mIoU on {len(self.val_pairs)} labelled frames")
            res["val"] = self.run_val(RunBackend(run, self.contract))
        return res


def _export_into(out: Path, plan: _Plan, say: Callable[[str], None]) -> ExportResult:
    """The export proper, once options are resolved: everything is built in a FolderTransaction, then committed."""
    frames = _load_frames(plan, say)
    traced, plan.folded = deploy_form(plan.model) if plan.opts.fold else (plan.model, [])
    if plan.folded:
        say(f"tracing the inference form of {', '.join(plan.folded)}")

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        return RawIOWrapper(model, plan.mean, plan.std, plan.raw_color, plan.opts.upsample).eval() if plan.raw \
            else model

    module, reference = wrap(traced), wrap(plan.model)  # every check compares with the model as trained
    to_input = functools.partial(make_input, size=plan.size, raw=plan.raw, raw_color=plan.raw_color,
                                 mean=plan.mean, std=plan.std)
    batches, example = _check_batches(plan, frames, lambda f, at=plan.size: to_input(f, size=at))
    txn = FolderTransaction(out)
    plan.notes.extend(txn.notes)
    try:
        onnx_model, simplifier, graph_sha, fp32_path = _trace_fp32(plan, module, example, txn.work, say)
        old = previous_export(out)
        _check_replacement(out, old, plan, graph_sha)
        manifest = Manifest(_contract(plan, onnx_model, simplifier, graph_sha))
        say("checking the FP32 ONNX against PyTorch")
        checks = _Checks(plan, reference, batches, manifest.contract, say)
        fp32_ver = _verify.compare_to_torch(onnx_model, batches, checks.reference)
        _verify.check_fp32(fp32_ver, "the FP32 ONNX export")
        if checks.val_pairs is not None:
            from ..runtime.backends.ort import OnnxRuntimeBackend

            fp32_ver["val"] = checks.run_val(OnnxRuntimeBackend(onnx_model))
        ctx = ExportContext(
            out_dir=out, stage_dir=txn.stage, options=plan.opts, manifest=manifest, fp32_model=onnx_model,
            fp32_path=fp32_path, graph_sha256=graph_sha, input_name=plan.io_names[0], make_input=to_input,
            frames=frames, verify=checks.verify_model, progress=say, verify_with=checks.verify_run,
            _pre_quant=functools.partial(pre_quant, fp32_path, txn.work, say), target_options=plan.target_options,
            work_dir=txn.work, torch_module=plan.model)
        ctx._calibration = lambda: get_calibration_table(
            out, ctx.pre_quant_model(), graph_sha, frames, to_input, plan.io_names[0], plan.method,
            plan.opts.calib_seed, say, save_to=txn.stage, work_dir=txn.work)
        ctx.cache["fp32_verification"] = fp32_ver
        ctx.cache["val_pairs"] = checks.val_pairs  # the --max-miou-drop search splits them (budget / held back)
        staged = build_targets(plan.targets, ctx)
        pause_point("export:staged")
        say("writing the export folder")
        commit(txn, old, manifest, staged, graph_sha, plan.notes)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT) and (e.filename is None or txn.stage.name in str(e.filename)):
            # The staged files vanish with the abort: name the folder the user asked for, not one of them.
            raise OSError(e.errno, e.strerror, str(out)) from e
        raise
    finally:
        txn.abort()  # a no-op once committed: the staging folder has become the export folder
    manifest = _build_engines_here(out, manifest, ctx.cache.get("trt_build_after_commit", ()), say)
    data = manifest.to_dict()
    artifacts = {name: out / e.file for name, e in manifest.targets.items()}
    return ExportResult(out, out / MANIFEST_NAME, data, artifacts, plan.notes)


def _build_engines_here(out: Path, manifest: Manifest, targets: Sequence[str], say: Callable[[str], None]
                        ) -> Manifest:
    """Step 6, on a host with TensorRT and a GPU: build the committed bundles' engines now, as the device would."""
    if not targets:
        return manifest
    from ..engine.build import build_engine

    for target in targets:
        say(f"building the {target} engine here (TensorRT and a GPU are present)")
        build_engine(out, target)
    return Manifest.read(out)


def _check_replacement(out: Path, old: Manifest | None, plan: _Plan, graph_sha: str) -> None:
    """Refuse to drop the folder's other targets silently: a new graph invalidates them unless they are re-exported
    too or `--replace` says to drop them."""
    if old is None or old.contract.graph_sha256 == graph_sha or plan.opts.replace:
        return
    requested = {t.name for t in plan.targets}
    lost = [name for name in old.targets if name not in requested]
    if lost:
        was, now = old.contract.input, plan.size
        raise ExportError(
            f"{out} holds {', '.join(lost)} built from another graph ({old.contract.model} {was.height}x{was.width} "
            f"io {was.io}, now {plan.spec.name} {now[0]}x{now[1]} io {plan.io}); re-export them too "
            f"(--target {','.join(sorted(requested | set(lost)))}), pass --replace to drop them, or choose another "
            "--out")


_make_input, _pre_quant = make_input, pre_quant  # the names benchmarks and older callers import
__all__ = ["ExportOptions", "ExportResult", "default_out_dir", "export_model", "recorded_fold", "summarize_result"]
