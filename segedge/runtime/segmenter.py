"""Segmenter: one object that turns BGR frames into label maps, whatever produced the model.

    seg = Segmenter.load("exports/b0-384x512", target="ort-int8")
    labels = seg.predict(frame)              # H×W uint8 at the frame's size
    cv2.imwrite("out.png", seg.overlay(frame, labels))

`load` accepts an export folder (target picked from manifest.json: the only one, or `cpu` — the target `--target cpu`
tuned on this machine, with its thread count — when there are several), an .onnx file (contract from its
metadata_props), a file another backend opens (e.g. OpenVINO .xml, via its backend module and the folder's
manifest), or a segedge checkpoint (.safetensors → PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..contract import MANIFEST_NAME, Manifest, TargetEntry
from ..errors import SegedgeError, SegedgeWarning
from .backends import Backend, backend_for_path, get_backend
from .backends.base import Pending
from .checks import check_io, check_verify_mode, verify_files
from .modelinfo import ModelInfo
from .palette import overlay as _overlay
from .palette import palette_for
from .postprocess import check_mode, resize_labels, to_labels
from .preprocess import check_frame, preprocess, to_raw_input


def _manifest_entry_for_file(path: Path) -> tuple[Manifest, str, TargetEntry] | None:
    """(manifest, target, entry) when `path` is listed in its folder's manifest.json."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    try:
        man = Manifest.read(path.parent)
    except SegedgeError:
        return None
    found = man.entry_for_file(path.name)
    return (man, *found) if found else None


def _refuse_pending_engine(folder: Path, target: str, entry: TargetEntry) -> None:
    """A TensorRT target whose engine is still to be built on the device cannot run: say how to build it."""
    from ..engine.bundle import PENDING, engine_block, pending_message

    block = engine_block(entry.to_dict())
    if block is not None and block.get("status") == PENDING:
        raise SegedgeError(pending_message(folder, target, block))


def _artifact_path(folder: Path, target: str, entry: TargetEntry) -> Path:
    """The target's file inside `folder`; a name that leaves the folder or a missing file is one line."""
    name = Path(entry.file)
    if name.is_absolute() or ".." in name.parts:
        raise SegedgeError(f"{folder}/{MANIFEST_NAME} points target '{target}' at {entry.file}, outside the export "
                           "folder; re-run `segedge export` (a manifest never names files outside its folder)")
    file = folder / name
    if not file.exists():
        raise SegedgeError(f"{folder}/{MANIFEST_NAME} lists {entry.file} for target '{target}' but the file is "
                           "missing; re-run `segedge export`")
    return file


def _tuned_threads(target: str | None, entry: TargetEntry, threads: int | None) -> int | None:
    """The thread count a CPU-tuned target was chosen with (unless `threads` is given), and a warning when this CPU
    is not the one it was tuned on: the choice (runtime, INT8 scheme, precision hint, threads) may not be the
    fastest here."""
    import warnings

    tuned = entry.get("tuned")
    if not isinstance(tuned, dict):
        return threads
    from ..doctor import cpu_report

    was, here = tuned.get("cpu") or {}, cpu_report()
    if (was.get("model"), was.get("isa")) != (here.get("model"), here.get("isa")):
        warnings.warn(f"target '{target}' was tuned on {was.get('model')} ({was.get('arch')}) and runs on "
                      f"{here.get('model')} ({here.get('arch')}): its choice may not be the fastest here; re-run "
                      "`segedge tune` on this machine", SegedgeWarning, stacklevel=3)
    return threads if threads is not None else entry.get("threads")


def frame_input_spec(contract: dict[str, Any] | None) -> dict[str, Any] | None:
    """The OpenVINO backend's `frame_input` for a float-io contract (mean, std, colour order), None otherwise."""
    inp = (contract or {}).get("input") or {}
    if inp.get("io", "float") != "float" or "mean" not in inp:
        return None
    return {"mean": inp["mean"], "std": inp["std"], "color_order": inp.get("color_order", "RGB")}


def _frame_input_option(backend: str, contract: dict[str, Any] | None, options: dict[str, Any]) -> dict[str, Any]:
    """Backend options with `frame_input` resolved: OpenVINO normalises frames in the graph for float-io contracts
    (unless frame_input=False); other backends get no such option."""
    wanted = options.pop("frame_input", True)
    if wanted not in (True, False):
        raise SegedgeError(f"frame_input must be True or False, got {wanted!r}")
    spec = frame_input_spec(contract) if backend == "openvino" and wanted else None
    if spec is not None:
        options["frame_input"] = spec
    return options


class Segmenter:
    """Frames in, labels out, over any backend; pre-/post-processing follow the model's recorded contract."""

    def __init__(self, backend: Backend, info: ModelInfo, postprocess: str = "fast") -> None:
        self.backend = backend
        self.info = info
        self.postprocess = check_mode(postprocess)
        self.palette = palette_for(info.class_names)

    @classmethod
    def load(cls, path: str | Path, target: str | None = None, backend: str | None = None,
             threads: int | None = None, postprocess: str = "fast", **options: Any) -> "Segmenter":
        """Open an export folder, an .onnx / other exported file, or a checkpoint (see module docstring).

        options: `model=` names the architecture of a foreign checkpoint; `providers=` overrides ONNX Runtime's
        execution providers; `precision=` sets OpenVINO's inference precision hint (default: the one recorded at
        export, else f32); `performance_hint=` "latency" (default) | "throughput" compiles an OpenVINO model for
        several requests in flight (see `submit`); `verify=` "fast" (default) | "full" | "off" checks the artifact
        against its manifest's size and sha256 (segedge.runtime.checks); `frame_input=False` keeps OpenVINO from
        normalising frames in the graph (on by default for float-io models: `prepare` then only resizes). The backend
        also receives the manifest entry as `manifest_entry=`.
        """
        if not isinstance(path, (str, Path)):
            raise SegedgeError(f"Segmenter.load needs a path (export folder, model file or checkpoint), got "
                               f"{type(path).__name__}")
        p = Path(path)
        if not p.exists():
            raise SegedgeError(f"model path not found: {p}; pass an export folder, an .onnx file or a checkpoint")
        verify = check_verify_mode(options.pop("verify", "fast"))
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise SegedgeError(f"threads must be a whole number ≥ 1 (or None for the runtime's default), got "
                               f"{threads!r}")
        contract: dict[str, Any] | None = None
        entry: TargetEntry | None = None
        if p.is_dir() and p.suffix.lower() not in (".mlpackage",):
            man = Manifest.read(p)
            target, entry = man.choose(target, p)
            _refuse_pending_engine(p, target, entry)
            threads = _tuned_threads(target, entry, threads)
            contract, p = man.contract.to_dict(), _artifact_path(p, target, entry)
            verify_files(p.parent, target, entry, verify)
        else:
            found = _manifest_entry_for_file(p)
            if found:
                man, found_target, entry = found
                _refuse_pending_engine(p.parent, found_target, entry)
                contract, target = man.contract.to_dict(), target or found_target
                verify_files(p.parent, found_target, entry, verify)
                threads = _tuned_threads(found_target, entry, threads)
        cls_ = get_backend(backend) if backend else backend_for_path(p)
        if backend and cls_.suffixes and p.suffix.lower() not in cls_.suffixes:
            raise SegedgeError(f"backend '{cls_.name}' opens {', '.join(cls_.suffixes)} files, not {p.name}; drop "
                               f"backend= (the file picks its own) or pass a file that backend opens")
        if entry is not None:
            options = {"manifest_entry": entry, **options}
        options = _frame_input_option(cls_.name, contract, options)
        be = cls_.open(p, threads=threads, **options)
        try:
            info = cls._info(p, be, contract, target, entry)
            check_io(be, info.contract, p.name)
        except BaseException:
            be.close()
            raise
        return cls(be, info, postprocess)

    @staticmethod
    def _info(p: Path, be: Backend, contract: dict[str, Any] | None, target: str | None,
              entry: TargetEntry | None) -> ModelInfo:
        if contract is None and be.description is not None:
            contract = be.description
        if contract is not None:
            return ModelInfo.from_description(contract, target=target, entry=entry,
                                              source="manifest" if entry else "metadata")
        if p.suffix.lower() == ".onnx":
            import onnx

            return ModelInfo.from_onnx_graph(onnx.load(str(p), load_external_data=False))
        raise SegedgeError(f"{p.name} carries no model description and is not in an export folder's "
                           "manifest; export it with `segedge export`")

    # -- lifecycle --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (session, compiled model, engine)."""
        self.backend.close()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        """Class names, index = label value."""
        return self.info.class_names

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return self.info.num_classes

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) the model runs at; frames are resized to it."""
        return self.info.input_size

    def __repr__(self) -> str:
        i = self.info
        return (f"Segmenter(model={i.model}, target={i.target}, backend={self.backend.name}, "
                f"input={i.input_size[0]}x{i.input_size[1]}, io={i.io}, postprocess={self.postprocess})")

    # -- inference --------------------------------------------------------------------------------------------
    def prepare(self, frame_bgr: np.ndarray) -> np.ndarray:
        """A BGR frame → one model-input batch (float NCHW normalised, or uint8 NHWC for raw-io models and for
        backends that normalise frames in the graph: OpenVINO's `accepts_frames`)."""
        if self.info.io == "raw":
            return to_raw_input(frame_bgr, self.info.input_size, self.info.color_order)
        if getattr(self.backend, "accepts_frames", False):
            return to_raw_input(frame_bgr, self.info.input_size, "BGR")
        return preprocess(frame_bgr, self.info.input_size, self.info.mean, self.info.std, "BGR")

    def _run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] == 1 or self.backend.supports_batch:
            return self.backend.run(batch)
        return np.concatenate([self.backend.run(batch[i:i + 1]) for i in range(batch.shape[0])], axis=0)

    def _labels(self, out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if self.info.output_kind == "labels":
            return resize_labels(out.astype(np.uint8, copy=False), size)
        return to_labels(out, size, self.postprocess)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """The model's output for a batch from `prepare` (logits, or labels for raw-io models), one row per frame.

        With `prepare` and `labels_from_output` this is `predict` in three steps, so a pipeline can run
        pre-processing + inference and post-processing in different threads.
        """
        return self._run(batch)

    def submit(self, batch: np.ndarray) -> Pending:
        """`infer` started without waiting: `.wait()` gives its output. Backends that run several requests at once
        (OpenVINO with performance_hint="throughput": `backend.parallel_requests`) overlap that many submits."""
        if self.backend.parallel_requests > 1 and (batch.shape[0] == 1 or self.backend.supports_batch):
            return self.backend.submit(batch)
        return Pending(self._run(batch))  # one request at a time: run it now (what `infer` does)

    def labels_from_output(self, out: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """One row of `infer`'s output → H×W uint8 labels at `size` (the frame's (H, W)), as `predict` returns."""
        return self._labels(out, size)

    def predict(self, frame_bgr: np.ndarray) -> np.ndarray:
        """H×W uint8 labels at the frame's own size."""
        frame = check_frame(frame_bgr)
        out = self._run(self.prepare(frame))[0]
        return self._labels(out, frame.shape[:2])

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`predict` for several frames (sizes may differ), in one batched run when the model allows it."""
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            frames = list(frames)  # an N×H×W×C batch array
        if isinstance(frames, (np.ndarray, str, bytes)) or not isinstance(frames, Iterable):
            what = f"an array of shape {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise SegedgeError(f"predict_batch takes a list of frames (or an N×H×W×3 array), got {what}; for one "
                               "frame use predict")
        checked = [check_frame(f) for f in frames]
        if not checked:
            return []
        outs = self._run(np.concatenate([self.prepare(f) for f in checked], axis=0))
        return [self._labels(o, f.shape[:2]) for o, f in zip(outs, checked)]

    def logits(self, frame_bgr: np.ndarray) -> np.ndarray:
        """C×h×w float32 logits at the model's output stride (logits-output models only)."""
        if self.info.output_kind != "logits":
            raise SegedgeError("this model outputs labels (raw io export), not logits; export with --io float to "
                               "get logits")
        return np.asarray(self._run(self.prepare(check_frame(frame_bgr)))[0], np.float32)

    def overlay(self, frame_bgr: np.ndarray, labels: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
        """The frame with class colours blended in (labels predicted when not given); H×W×3 uint8 BGR."""
        frame = check_frame(frame_bgr)
        if labels is None:
            labels = self.predict(frame)
        return _overlay(frame, labels, self.palette, alpha)
