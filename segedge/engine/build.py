"""`segedge engine build`: turn a device bundle into a checked TensorRT engine, installed in the export folder.

The steps, each a function below:
1. `read_bundle`: the manifest's trt target, its `engine` block, the flavour ONNX and reference.npz (both checked
   against the manifest's sha256 and size);
2. `require_tensorrt` + `check_generation`: TensorRT, Polygraphy and a GPU are here, and the bundle was made for
   this TensorRT generation;
3. `builder_options` + `build_serialized`: Polygraphy's loaders build the engine as the bundle's `builder` dict
   says (strongly typed for generation 11; FP16/INT8 flags with obeyed precision constraints for ≤ 10, the FP32
   islands pinned by ONNX node name), with the workspace pool, timing cache and DLA core asked for. INT8 comes from
   the graph's Q/DQ nodes only: no calibrator anywhere;
4. `verify_engine` (+ `val_figures` with --val): the engine runs on the reference inputs through the TensorRT
   backend and is compared with the FP32 ONNX's outputs; below the argmax floor it is refused (`--keep-failed`
   installs it anyway, marked failed);
5. `install`: the engine and the updated manifest are swapped in as one FolderTransaction, so an interrupted build
   leaves the bundle exactly as it was.
Torch-free: a Jetson with JetPack's TensorRT and `pip install 'segedge[trt]'` runs all of it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..contract import MANIFEST_NAME, Manifest, TargetEntry
from ..errors import SegedgeError, first_line
from .bundle import (BUILT, GENERATIONS, REFERENCE_NAME, Reference, build_command, describe_islands, engine_block,
                     engine_file, generation_of, onnx_file)

# Least share of pixels whose class must match the FP32 ONNX for an engine to be installed.
ARGMAX_FLOORS = {"fp16": 0.99, "int8": 0.95}
PROXY_MARGIN, PROXY_FLOOR_MIN = 0.03, 0.80  # INT8: floor = proxy agreement - margin, within [min, 0.95]
MAX_DYNAMIC_BATCH = 8  # optimization profile's largest batch for exports with a dynamic batch axis
MIN_DYNAMIC_SIDE = 32  # smallest height/width of the profile for exports with dynamic height/width


@dataclass
class Bundle:
    """A trt target of an export folder, read and checked: what the build needs."""

    folder: Path
    manifest: Manifest
    target: str
    entry: TargetEntry
    block: dict[str, Any]
    onnx: Path
    files: dict[str, dict[str, Any]]  # name → {sha256, size_bytes} of the ONNX and the reference
    reference: Reference

    @property
    def precision(self) -> str:
        """'int8' or 'fp16'."""
        return str(self.entry.precision or ("int8" if self.target.endswith("int8") else "fp16"))


@dataclass
class BuildResult:
    """What `build_serialized` made: the plan and what happened to the FP32 islands and the DLA placement."""

    plan: bytes
    islands: dict[str, Any] = field(default_factory=dict)
    dla: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


# -- 1. the bundle --------------------------------------------------------------------------------------------------
def _plain_name(name: str, folder: Path) -> str:
    if Path(name).name != name or name in ("", ".", ".."):
        raise SegedgeError(f"{folder}/{MANIFEST_NAME} names {name!r}, outside the export folder; re-export the "
                           "bundle with `segedge export`")
    return name


def _check_file(folder: Path, name: str, record: Mapping[str, Any], target: str) -> Path:
    """`folder/name` exists and matches its recorded size and sha256, or one line naming the fix."""
    from ..io import sha256_file

    p = folder / _plain_name(name, folder)
    fix = (f"copy the export folder from the host again, or re-export it there with `segedge export --target "
           f"{target}`")
    if not p.is_file():
        raise SegedgeError(f"{name} is missing from {folder}: the {target} engine cannot be built without it; {fix}")
    size, digest = record.get("size_bytes"), record.get("sha256")
    if size is not None and p.stat().st_size != int(size):
        raise SegedgeError(f"{name} is {p.stat().st_size} bytes but {MANIFEST_NAME} recorded {size}: the file was "
                           f"truncated or replaced; {fix}")
    if digest and sha256_file(p) != digest:
        raise SegedgeError(f"{name} does not match the sha256 in {MANIFEST_NAME}: the file was corrupted or "
                           f"replaced; {fix}")
    return p


def read_bundle(folder: str | Path, target: str = "trt-int8") -> Bundle:
    """The target's bundle in `folder`, every file checked; one line when it is missing, foreign or damaged."""
    folder = Path(folder)
    man = Manifest.read(folder)
    name, entry = man.choose(target, folder)
    block = engine_block(entry.to_dict())
    if block is None:
        raise SegedgeError(f"target '{name}' in {folder} is not a TensorRT bundle (its manifest entry has no engine "
                           "block); export one with `segedge export --target trt-int8` (or trt-fp16)")
    if str(block.get("generation")) not in GENERATIONS:
        raise SegedgeError(f"target '{name}' in {folder} names TensorRT generation {block.get('generation')!r}, not "
                           f"one of {', '.join(GENERATIONS)}; re-export it with `--trt-version`")
    records = {entry.file: {"sha256": entry.sha256, "size_bytes": entry.size_bytes}, **entry.companion_files}
    files = {}
    for want in (str(block.get("onnx") or onnx_file(name)), str(block.get("reference") or REFERENCE_NAME)):
        if want not in records:
            raise SegedgeError(f"{folder}/{MANIFEST_NAME} does not list {want} for target '{name}'; re-export the "
                               f"bundle with `segedge export --target {name}`")
        _check_file(folder, want, records[want], name)
        files[want] = {"sha256": records[want].get("sha256"), "size_bytes": records[want].get("size_bytes")}
    onnx_name, ref_name = list(files)
    return Bundle(folder, man, name, entry, block, folder / onnx_name, files, Reference.load(folder / ref_name))


# -- 2. the environment ---------------------------------------------------------------------------------------------
def require_tensorrt(target: str) -> Any:
    """The tensorrt module when TensorRT, Polygraphy and an NVIDIA GPU are all here, else one line naming the gap."""
    from ..toolkits import tensorrt as trt_toolkit

    why = trt_toolkit.build_problem()
    if why:
        raise SegedgeError(f"cannot build the {target} engine here: {why}")
    return trt_toolkit.import_tensorrt()


def check_generation(bundle: Bundle, trt_version: str) -> str:
    """This TensorRT's generation when the bundle was made for it, else one line naming the re-export."""
    here = generation_of(trt_version)
    made_for = str(bundle.block.get("generation"))
    if here != made_for:
        raise SegedgeError(f"the {bundle.target} bundle in {bundle.folder} was made for TensorRT {made_for} but this "
                           f"device has TensorRT {trt_version}; re-export it on the host with `segedge export "
                           f"--target {bundle.target} --trt-version {here}`")
    return here


# -- 3. the build ---------------------------------------------------------------------------------------------------
def _profile_shapes(bundle: Bundle) -> dict[str, Any] | None:
    """{name, min, opt, max} of the input's optimization profile when the export has dynamic axes, else None."""
    inp = bundle.manifest.contract.input
    dyn = inp.dynamic
    if not (dyn.batch or dyn.height or dyn.width):
        return None
    step = inp.size_multiple or MIN_DYNAMIC_SIDE

    def shape(n: int, h: int, w: int) -> list[int]:
        return [n, h, w, 3] if inp.layout == "NHWC" else [n, 3, h, w]

    from ..contract import MAX_INPUT_SIDE

    lo_h, lo_w = (step if dyn.height else inp.height), (step if dyn.width else inp.width)
    hi_h = min(2 * inp.height, MAX_INPUT_SIDE) if dyn.height else inp.height
    hi_w = min(2 * inp.width, MAX_INPUT_SIDE) if dyn.width else inp.width
    hi_n = max(MAX_DYNAMIC_BATCH, len(bundle.reference.inputs)) if dyn.batch else 1
    return {"name": inp.name, "min": shape(1, lo_h, lo_w), "opt": shape(1, inp.height, inp.width),
            "max": shape(hi_n, hi_h, hi_w)}


def builder_options(bundle: Bundle, workspace_mb: int | None = None, dla_core: int | None = None,
                    timing_cache: str | Path | None = None) -> dict[str, Any]:
    """The options the build uses: the bundle's `builder` dict made explicit, plus the device's choices."""
    want = dict(bundle.block.get("builder") or {})
    strongly = bool(want.get("strongly_typed", bundle.block.get("generation") == "11"))
    if workspace_mb is not None and int(workspace_mb) < 1:
        raise SegedgeError(f"--workspace must be a positive number of MiB, got {workspace_mb}")
    if dla_core is not None and int(dla_core) < 0:
        raise SegedgeError(f"--dla must be a DLA core index (0 or 1 on Jetson AGX/NX Orin), got {dla_core}")
    used: dict[str, Any] = {"strongly_typed": strongly}
    if not strongly:  # generation 11 has no precision flags: the graph's types decide
        used.update(fp16=bool(want.get("fp16", False)), int8=bool(want.get("int8", False)), tf32=False,
                    precision_constraints=want.get("precision_constraints", "obey"))
    used.update(workspace_mb=int(workspace_mb) if workspace_mb is not None else None,
                dla_core=int(dla_core) if dla_core is not None else None, gpu_fallback=dla_core is not None,
                timing_cache=str(timing_cache) if timing_cache else None, profile=_profile_shapes(bundle))
    return used


_ONNX_LAYER = re.compile(r"\[ONNX Layer:\s*([^\]]+)\]")


def onnx_node_of(layer_name: str, metadata: str | None, wanted: set[str] | frozenset[str]) -> str | None:
    """The ONNX node (among `wanted`) a TensorRT layer came from: the parser names layers after their nodes (a
    `_N` suffix when the name repeats) and TensorRT ≥ 10 also records `[ONNX Layer: name]` metadata."""
    candidates = [m.strip() for m in _ONNX_LAYER.findall(metadata or "")]
    candidates += [layer_name, re.sub(r"_\d+$", "", layer_name)]
    return next((c for c in candidates if c in wanted), None)


def set_island_precisions(network: Any, islands: Sequence[Mapping[str, Any]], trt: Any) -> dict[str, Any]:
    """Pin every layer made from an FP32-island node to FP32 (precision and float output types); returns
    {'nodes', 'matched_nodes', 'layers', 'unmatched': [node names that matched no layer]}."""
    wanted = frozenset(str(i["node"]) for i in islands if i.get("node"))
    floats = (trt.float32, trt.float16)
    matched: dict[str, int] = {}
    for idx in range(network.num_layers):
        layer = network.get_layer(idx)
        node = onnx_node_of(layer.name, getattr(layer, "metadata", None), wanted)
        outputs = [layer.get_output(o) for o in range(layer.num_outputs)]
        if node is None or not outputs or any(t.dtype not in floats for t in outputs):
            continue  # shape and index layers of an island node stay as they are
        layer.precision = trt.float32
        for o in range(layer.num_outputs):
            layer.set_output_type(o, trt.float32)
        matched[node] = matched.get(node, 0) + 1
    return {"nodes": len(wanted), "matched_nodes": len(matched), "layers": sum(matched.values()),
            "unmatched": sorted(wanted - set(matched))}


def _dla_config_step(dla_core: int, report: dict[str, Any]) -> Callable[[Any, Any, Any], None]:
    """A PostprocessConfig step: DLA core `dla_core`, and the layers the builder says cannot run on DLA."""
    def step(builder: Any, network: Any, config: Any) -> None:
        cores = int(getattr(builder, "num_DLA_cores", 0))
        if dla_core >= cores:
            raise SegedgeError(f"--dla {dla_core} asks for a DLA core but this device has {cores}; drop --dla or "
                               f"pass one below {cores}" if cores else "--dla asks for a DLA core but this device has "
                               "none (only Jetson AGX/NX Orin and Xavier do); drop --dla")
        config.DLA_core = dla_core
        report["not_dla_capable"] = [network.get_layer(i).name for i in range(network.num_layers)
                                     if not config.can_run_on_DLA(network.get_layer(i))]
    return step


def build_serialized(bundle: Bundle, used: Mapping[str, Any], trt: Any) -> BuildResult:
    """Build the engine plan with Polygraphy's loaders as `used` says (see `builder_options`)."""
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessConfig,
                                        PostprocessNetwork, Profile)

    result = BuildResult(b"")
    # strongly_typed= only when asked: the Polygraphy of a JetPack 5 (TensorRT 8.5) install predates the keyword
    network: Any = NetworkFromOnnxPath(str(bundle.onnx), strongly_typed=True) if used["strongly_typed"] \
        else NetworkFromOnnxPath(str(bundle.onnx))
    islands = list(bundle.block.get("fp32_islands") or [])
    if islands and used.get("fp16") and not used["strongly_typed"]:
        def pin(network: Any) -> None:
            result.islands = set_island_precisions(network, islands, trt)
        network = PostprocessNetwork(network, pin, "segedge FP32 islands")
    kwargs: dict[str, Any] = {}
    if not used["strongly_typed"]:
        kwargs.update(fp16=used["fp16"], int8=used["int8"], tf32=False,
                      precision_constraints=used["precision_constraints"])
    if used.get("workspace_mb"):
        kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(used["workspace_mb"]) << 20}
    if used.get("timing_cache"):
        kwargs["load_timing_cache"] = used["timing_cache"]
    if used.get("profile"):
        p = used["profile"]
        kwargs["profiles"] = [Profile().add(p["name"], min=p["min"], opt=p["opt"], max=p["max"])]
    if used.get("dla_core") is not None:
        kwargs.update(use_dla=True, allow_gpu_fallback=True)
    config: Any = CreateConfig(**kwargs)
    if used.get("dla_core") is not None:
        config = PostprocessConfig(config, _dla_config_step(int(used["dla_core"]), result.dla))
    t0 = time.perf_counter()
    try:
        plan = EngineBytesFromNetwork(network, config=config, save_timing_cache=used.get("timing_cache"))()
    except SegedgeError:
        raise
    except Exception as e:  # noqa: BLE001 - Polygraphy raises PolygraphyException; TensorRT raises its own
        raise SegedgeError(f"TensorRT could not build the {bundle.target} engine from {bundle.onnx.name}: "
                           f"{first_line(e, 240)}; run with SEGEDGE_DEBUG=1 for the builder log") from e
    result.seconds = time.perf_counter() - t0
    result.plan = bytes(plan)
    return result


def dla_engine_layers(engine: Any, trt: Any) -> list[str]:
    """Layers of a built engine that run on the GPU, from the engine inspector's JSON (DLA subgraphs left out)."""
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    out = []
    for layer in info.get("Layers", []) if isinstance(info, dict) else []:
        name, kind = (layer, "") if isinstance(layer, str) else (layer.get("Name", ""), layer.get("LayerType", ""))
        text = f"{kind} {layer if isinstance(layer, str) else layer.get('Origin', '')}".upper()
        if "DLA" not in text and kind != "Reformat":
            out.append(str(name))
    return out


# -- 4. the check ---------------------------------------------------------------------------------------------------
def verify_engine(run: Callable[[np.ndarray], np.ndarray], reference: Reference) -> dict[str, Any]:
    """The engine's outputs on the reference inputs against the FP32 ONNX's: max |Δlogits| and argmax agreement
    (logits), or label agreement (raw-io exports, whose graph outputs labels)."""
    from ..export.verify import compare_run_to_torch

    outs = [np.asarray(run(reference.inputs[i:i + 1])) for i in range(len(reference.inputs))]
    got_shape = (len(outs), *outs[0].shape[1:])
    if got_shape != reference.logits.shape:
        raise SegedgeError(f"the engine outputs shape {got_shape} but {REFERENCE_NAME} holds {reference.logits.shape}; "
                           "the bundle's ONNX and reference disagree: re-export the bundle")
    source = f"{REFERENCE_NAME} (FP32 ONNX, onnxruntime)"
    if reference.logits.ndim == 3:  # labels
        got = np.concatenate(outs).astype(np.int64)
        agree = float(np.mean(got == reference.logits.astype(np.int64)))
        return {"reference": source, "output": "labels", "argmax_agreement": agree, "pixels": int(got.size),
                "frames": len(outs)}
    it = iter(outs)
    res = compare_run_to_torch(lambda x: next(it), [reference.inputs[i:i + 1] for i in range(len(outs))],
                               [reference.logits[i:i + 1] for i in range(len(outs))])
    res.update(reference=source, output="logits", frames=len(outs))
    return res


def argmax_floor(bundle: Bundle) -> float:
    """The agreement an engine must reach: ARGMAX_FLOORS, lowered for INT8 to 3 points under what the bundle's own
    Q/DQ graph reached through ONNX Runtime at export (an INT8 model that agrees 95.2 % with FP32 in the proxy is
    not broken on the device at 94 %); never under PROXY_FLOOR_MIN."""
    floor = ARGMAX_FLOORS.get(bundle.precision, ARGMAX_FLOORS["fp16"])
    proxy = (bundle.entry.get("bundle_verification") or bundle.entry.verification or {}).get("argmax_agreement")
    if bundle.precision == "int8" and isinstance(proxy, (int, float)):
        floor = max(PROXY_FLOOR_MIN, min(floor, float(proxy) - PROXY_MARGIN))
    return round(floor, 4)


def check_floor(figures: dict[str, Any], bundle: Bundle, keep_failed: bool) -> dict[str, Any]:
    """Add the floor and pass/fail to `figures`; refuse a failing engine unless `keep_failed` (one line)."""
    floor = argmax_floor(bundle)
    figures.update(argmax_floor=floor, passed=figures["argmax_agreement"] >= floor)
    if not figures["passed"] and not keep_failed:
        delta = f", max |Δlogits| {figures['max_abs_diff']:.3g}" if "max_abs_diff" in figures else ""
        raise SegedgeError(f"the {bundle.target} engine agrees with the FP32 reference on "
                           f"{figures['argmax_agreement']:.2%} of pixels (needs {floor:.2%}){delta}; nothing was "
                           "installed: re-export with more FP32 islands (--keep-float) or pass --keep-failed to "
                           "install it anyway")
    return figures


def _val_pairs(val: str | Path, count: int, num_classes: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(frame, label) pairs from a labelled folder, its layout detected as `segedge export --val` does."""
    from ..data.datasets import open_labelled_folder

    ds = open_labelled_folder(val, num_classes)
    return [ds[i] for i in range(min(count, len(ds)))]


def val_figures(backend: Any, manifest: Manifest, val: str | Path, count: int = 32) -> dict[str, Any]:
    """mIoU of the engine on labelled frames (exact post-processing, segedge.evaluation's loop)."""
    from ..export.verify import evaluate_miou
    from ..runtime.modelinfo import ModelInfo
    from ..runtime.segmenter import Segmenter

    c = manifest.contract
    seg = Segmenter(backend, ModelInfo(c), postprocess="exact")  # not closed here: the caller owns the backend
    return evaluate_miou(seg.predict, _val_pairs(val, count, c.num_classes), c.num_classes, c.class_names)


def check_engine(bundle: Bundle, result: BuildResult, used: Mapping[str, Any], trt: Any,
                 val: str | Path | None = None, val_count: int = 32) -> dict[str, Any]:
    """Run the new engine through the TensorRT backend: reference figures, DLA placement, --val mIoU."""
    from ..runtime.backends.tensorrt import TensorRTBackend

    with TensorRTBackend(result.plan, where=f"the new {bundle.target} engine") as backend:
        figures = verify_engine(backend.run, bundle.reference)
        if used.get("dla_core") is not None:
            result.dla["gpu_engine_layers"] = dla_engine_layers(backend.engine, trt)
        if val is not None:
            figures["val"] = val_figures(backend, bundle.manifest, val, val_count)
    return figures


# -- 5. installation ------------------------------------------------------------------------------------------------
def _built_entry(bundle: Bundle, engine_name: str, engine_record: dict[str, Any], used: dict[str, Any],
                 result: BuildResult, figures: dict[str, Any], built_on: dict[str, Any]) -> dict[str, Any]:
    """The target's manifest entry once built: the engine as `file`, the ONNX and reference as companions."""
    e = bundle.entry.to_dict()
    pending = str(bundle.block.get("status")) != BUILT
    if pending and "verification" in e:
        e["bundle_verification"] = e["verification"]  # the export's ONNX Runtime proxy figures, kept for comparison
    companions = {k: v for k, v in (e.get("companion_files") or {}).items() if k != engine_name}
    companions.update(bundle.files)
    block = dict(bundle.block, status=BUILT, file=engine_name, built_on=built_on, builder=used,
                 build_seconds=round(result.seconds, 1), build_command=build_command(bundle.folder, bundle.target))
    if result.islands:
        block["fp32_islands_applied"] = result.islands
    if result.dla:
        block["dla"] = result.dla
    e.update(file=engine_name, runtime="tensorrt", companion_files=companions, verification=figures, engine=block,
             **engine_record)
    return e


def install(bundle: Bundle, result: BuildResult, used: dict[str, Any], figures: dict[str, Any],
            built_on: dict[str, Any]) -> Path:
    """Write the engine and the updated manifest into the folder as one transaction; returns the engine path."""
    import hashlib

    from ..export.folder import FolderTransaction
    from ..io import sha256_file, write_bytes_atomic

    name = engine_file(bundle.target)
    now = Manifest.read(bundle.folder)
    if now.targets.get(bundle.target) is None or now.targets[bundle.target].to_dict() != bundle.entry.to_dict():
        raise SegedgeError(f"{bundle.folder}/{MANIFEST_NAME} changed while the engine was being built; run "
                           f"`{build_command(bundle.folder, bundle.target)}` again")
    if used.get("timing_cache") and Path(used["timing_cache"]).is_file():
        used["timing_cache_sha256"] = sha256_file(used["timing_cache"])
    record = {"sha256": hashlib.sha256(result.plan).hexdigest(), "size_bytes": len(result.plan)}
    txn = FolderTransaction(bundle.folder)
    try:
        write_bytes_atomic(txn.path(name), result.plan)
        now.add_target(bundle.target, _built_entry(bundle, name, record, used, result, figures, built_on))
        txn.keep([p.name for p in bundle.folder.iterdir() if p.name not in (MANIFEST_NAME, name)])
        now.write(txn.stage)
        txn.commit()
    finally:
        txn.abort()  # a no-op once committed
    return bundle.folder / name


# -- the whole build ------------------------------------------------------------------------------------------------
def build_engine(folder: str | Path, target: str = "trt-int8", workspace_mb: int | None = None,
                 dla_core: int | None = None, timing_cache: str | Path | None = None, val: str | Path | None = None,
                 val_count: int = 32, keep_failed: bool = False,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build, check and install `target`'s engine in the export folder; returns the target's new manifest entry
    plus `engine_path`."""
    from .device import built_on

    say = progress or (lambda msg: None)
    bundle = read_bundle(folder, target)
    trt = require_tensorrt(bundle.target)
    check_generation(bundle, str(trt.__version__))
    used = builder_options(bundle, workspace_mb, dla_core, timing_cache)
    if used.get("timing_cache"):
        from ..io import ensure_writable_dir

        ensure_writable_dir(Path(used["timing_cache"]).parent, "the timing cache")
    say(f"building the {bundle.target} engine with TensorRT {trt.__version__} "
        f"({describe_islands(bundle.block.get('fp32_islands') or [])})")
    result = build_serialized(bundle, used, trt)
    say(f"checking the engine on {len(bundle.reference.inputs)} reference inputs")
    figures = check_floor(check_engine(bundle, result, used, trt, val, val_count), bundle, keep_failed)
    path = install(bundle, result, used, figures, built_on())
    entry = Manifest.read(bundle.folder).targets[bundle.target].to_dict()
    return {**entry, "engine_path": str(path)}


__all__ = ["ARGMAX_FLOORS", "Bundle", "BuildResult", "build_engine", "build_serialized", "builder_options",
           "check_engine", "check_floor", "check_generation", "dla_engine_layers", "install", "onnx_node_of",
           "read_bundle", "require_tensorrt", "set_island_precisions", "val_figures", "verify_engine"]
