"""OpenVINO backend: an OpenVINO IR (.xml + .bin) compiled for CPU with an explicit inference precision.

The precision hint is always set (see segedge.toolkits.openvino): `precision=` when given, else the
`inference_precision_hint` recorded by `segedge export` (manifest entry, then the IR's rt_info), else "f32". The hint
asked for and the precision the compiled model really uses are both in `describe()`. An IR written by
`segedge export` carries the contract in its rt_info (section "segedge"), so a lone .xml is self-describing.

Thread safety: an OpenVINO infer request serves one inference at a time (a second caller gets "Infer Request is
busy", or worse, reads another call's output), so each calling thread gets its own request on the shared compiled
model; the compiled model itself is thread-safe.

Frame input: given the contract's mean, std and colour order (`frame_input=`, which `Segmenter.load` passes for
float-io models unless `frame_input=False`), the backend also takes uint8 N×H×W×3 BGR frames at the model size, and
OpenVINO's PrePostProcessor does the colour swap, float conversion, mean/std and layout in the graph
(segedge.toolkits.openvino.with_frame_input); float model inputs keep running on the plain compiled model.

Performance hint: `latency` (default: one stream using every thread, the lowest time per frame) or `throughput`
(OpenVINO picks several streams, each with fewer threads, and `submit` keeps that many inferences in flight: more
frames per second, each one slower; what a video pipeline processing every frame wants). B0 bf16 on a 2-core AMD
EPYC: 2 streams gave ~1.2x the frames per second of latency mode (benchmarks/results/video-pipeline/).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...contract import describes_model, read_rt_info
from ...errors import SegedgeError, first_line
from ...toolkits.openvino import DEFAULT_PRECISION, check_precision, core
from . import register_backend
from .base import Backend, InputSpec, Pending

PERFORMANCE_HINTS = ("latency", "throughput")
_OV_TYPES = {"f32": "float32", "u8": "uint8", "f16": "float16", "i8": "int8"}


@register_backend
class OpenVINOBackend(Backend):
    """An OpenVINO compiled model (CPU, latency mode) over an .xml IR or an in-memory ov.Model."""

    name = "openvino"
    suffixes = (".xml",)
    toolkit = "openvino"

    def __init__(self, model: Any, threads: int | None = None, precision: str | None = None,
                 device: str = "CPU", description: dict[str, Any] | None = None,
                 precision_source: str | None = None, library_defaults: bool = False,
                 performance_hint: str = "latency", frame_input: dict[str, Any] | None = None) -> None:
        """`library_defaults=True` compiles with OpenVINO's own defaults (only the thread count set) and reads any
        model file OpenVINO reads (e.g. an .onnx): what a user calling `compile_model` bare gets (bench baselines).
        `performance_hint`: latency | throughput (see the module docstring). `frame_input` ({mean, std,
        color_order} of a float-io contract) also accepts uint8 N×H×W×3 BGR frames at the model size, normalised in
        the graph (see the module docstring)."""
        if performance_hint not in PERFORMANCE_HINTS:
            raise SegedgeError(f"unknown OpenVINO performance hint '{performance_hint}': choose latency (one frame as "
                               "fast as possible) or throughput (several frames in flight)")
        self.core = core()
        if isinstance(model, (str, Path)):
            model = self.core.read_model(str(model)) if library_defaults else self.read(self.core, model)
        self.model = model
        self.device = device
        self.threads = threads
        if library_defaults:
            self.precision, self.precision_source = None, "openvino default (no hint set)"
            config: dict[str, Any] = {}
        else:
            self.precision = check_precision(precision or DEFAULT_PRECISION)
            self.precision_source = precision_source or ("option" if precision else "default")
            config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": performance_hint.upper()}
        self.performance_hint = None if library_defaults else performance_hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.config = config
        try:
            self.compiled = self.core.compile_model(model, device, config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with long multi-line messages
            raise SegedgeError(f"OpenVINO cannot compile the model for {device} ({first_line(e)}); re-export it "
                               "with `segedge export --target openvino`") from e
        self._parallel = self._optimal_requests() if performance_hint == "throughput" else 1
        self._plain = _Requests(self.compiled, self._parallel)
        self._spec = self._port_spec(model.input(0))
        self._out = self._port_spec(model.output(0))
        self.description = description
        self._frame_input = self._check_frame_input(frame_input)
        self._framed: _Requests | None = None  # the frame-input model, compiled on its first frame
        self._framed_lock = threading.Lock()

    def _optimal_requests(self) -> int:
        """The number of requests OpenVINO says keeps its streams busy (1 when the plugin does not say)."""
        try:
            return max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # noqa: BLE001 - property not supported by this device/plugin
            return 1

    @staticmethod
    def _port_spec(port: Any) -> InputSpec:
        shape = tuple(None if d.is_dynamic else d.get_length() for d in port.get_partial_shape())
        return InputSpec(shape, _OV_TYPES.get(port.get_element_type().get_type_name(), "float32"))

    @staticmethod
    def read(core: Any, path: str | Path) -> Any:
        """core.read_model with a one-line error (a missing/corrupt .bin is the usual cause)."""
        p = Path(path)
        if not p.with_suffix(".bin").is_file():
            raise SegedgeError(f"{p.name} needs its weights file {p.with_suffix('.bin').name} next to it; copy both "
                               "or re-export with `segedge export --target openvino`")
        try:
            return core.read_model(str(p))
        except Exception as e:  # noqa: BLE001
            raise SegedgeError(f"{p.name} + {p.with_suffix('.bin').name} is not a readable OpenVINO IR "
                               f"({first_line(e)}); re-export it with `segedge export --target openvino`") from e

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "OpenVINOBackend":
        """Read the IR and its rt_info keys; precision: `precision=`, else the recorded hint (the manifest entry
        the Segmenter passes as `manifest_entry=`, then rt_info), else f32. `device=` defaults to CPU."""
        model = cls.read(core(), path)
        meta = read_rt_info(model)
        entry = options.get("manifest_entry")
        precision, source = options.get("precision"), "option"
        if not precision and entry is not None and entry.get("inference_precision_hint"):
            precision, source = entry.get("inference_precision_hint"), "manifest"
        if not precision and meta.get("inference_precision_hint"):
            precision, source = meta["inference_precision_hint"], "rt_info"
        if not precision:
            precision, source = DEFAULT_PRECISION, "default"
        return cls(model, threads=threads, precision=str(precision), device=str(options.get("device") or "CPU"),
                   description=meta if describes_model(meta) else None, precision_source=source,
                   performance_hint=str(options.get("performance_hint") or "latency"),
                   frame_input=options.get("frame_input"))

    def input_spec(self) -> InputSpec:
        return self._spec

    def output_spec(self) -> InputSpec:
        return self._out

    @property
    def request(self) -> Any:
        """This thread's infer request on the float-input model (created on its first call)."""
        return self._plain.request()

    @staticmethod
    def _check_frame_input(spec: dict[str, Any] | None) -> dict[str, Any] | None:
        if spec is None:
            return None
        missing = [k for k in ("mean", "std", "color_order") if k not in spec]
        if missing:
            raise SegedgeError(f"frame_input needs the contract's mean, std and color_order; missing {missing}")
        return dict(spec)

    @property
    def accepts_frames(self) -> bool:
        """Whether `run`/`submit` also take uint8 N×H×W×3 BGR frames at the model size (normalised in the graph)."""
        return self._frame_input is not None and len(self._spec.shape) == 4 and self._spec.shape[1] == 3

    def frame_spec(self) -> InputSpec:
        """The frame input: uint8 N×H×W×3 (BGR) at the model's size."""
        n, _, h, w = self._spec.shape
        return InputSpec((n, h, w, 3), "uint8")

    def _session_for(self, x: Any) -> tuple["_Requests", np.ndarray]:
        """The compiled model an input runs on: frames (uint8) on the frame-input one, model inputs on the plain one."""
        if self._closed:
            raise SegedgeError(f"this {self.name} backend is closed; load the model again (Segmenter.load)")
        if self.accepts_frames and isinstance(x, np.ndarray) and x.dtype == np.uint8:
            return self._frames(), np.ascontiguousarray(self.frame_spec().check(x))
        return self._plain, np.ascontiguousarray(self.input_spec().check(x))

    def _frames(self) -> "_Requests":
        with self._framed_lock:
            if self._framed is None:
                from ...toolkits.openvino import with_frame_input

                f = self._frame_input or {}
                model = with_frame_input(self.model, f["mean"], f["std"], f["color_order"])
                self._framed = _Requests(self.core.compile_model(model, self.device, self.config), self._parallel)
            return self._framed

    def run(self, x: np.ndarray) -> np.ndarray:
        """One forward pass on a model-input batch, or on a uint8 frame batch when `accepts_frames`."""
        session, x = self._session_for(x)
        return session.infer(x)

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """One synchronous inference on this thread's request; returns a copy of the first output."""
        return self._plain.infer(np.ascontiguousarray(x))

    @property
    def parallel_requests(self) -> int:
        return self._parallel

    def submit(self, x: np.ndarray) -> Pending:
        """Start an asynchronous inference on an idle request; at most `parallel_requests` in flight."""
        session, x = self._session_for(x)
        req = session.acquire()
        try:
            req.start_async({0: x})
        except BaseException:
            session.release(req)
            raise
        return _OVPending(session, req)

    def close(self) -> None:
        self._plain = _Requests(None, 0)
        self._framed = None
        self.compiled = None
        super().close()

    def describe(self) -> dict[str, Any]:
        import openvino as ov

        def prop(name: str) -> Any:
            try:
                v = self.compiled.get_property(name)
            except Exception:  # noqa: BLE001 - property not supported by this device/plugin
                return None
            return v.get_type_name() if hasattr(v, "get_type_name") else (v if isinstance(v, (int, float)) else str(v))

        return {"backend": self.name, "device": self.device, "inference_precision_hint": self.precision,
                "inference_precision": prop("INFERENCE_PRECISION_HINT"), "precision_source": self.precision_source,
                "threads": self.threads, "num_threads": prop("INFERENCE_NUM_THREADS"),
                "performance_hint": prop("PERFORMANCE_HINT"), "num_streams": prop("NUM_STREAMS"),
                "parallel_requests": self._parallel, "openvino": str(ov.__version__),
                "frame_input": self.accepts_frames,
                "config": dict(self.config)}


class _Requests:
    """One compiled model's infer requests: one per calling thread for `infer`, an on-demand pool of at most
    `parallel` for asynchronous submits."""

    def __init__(self, compiled: Any, parallel: int) -> None:
        self.compiled, self.parallel = compiled, parallel
        self._local = threading.local()
        self._free: list[Any] = []  # idle infer requests for submit (created on demand, at most `parallel`)
        self._made = 0
        self._lock = threading.Lock()

    def request(self) -> Any:
        """This thread's request (created on its first call)."""
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One synchronous inference on this thread's request; a copy of the first output."""
        req = self.request()
        req.infer({0: x})
        return np.array(req.get_output_tensor(0).data, copy=True)

    def acquire(self) -> Any:
        """An idle request for an asynchronous inference; one line when `parallel` are already in flight."""
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._made < self.parallel:
                self._made += 1
                return self.compiled.create_infer_request()
        raise SegedgeError(f"{self.parallel} inferences are already in flight on this OpenVINO model; wait() for one "
                           "before submitting another")

    def release(self, req: Any) -> None:
        """Hand a finished request back to the pool."""
        with self._lock:
            self._free.append(req)


class _OVPending(Pending):
    """An OpenVINO request running asynchronously; `wait()` copies its output and hands the request back."""

    def __init__(self, backend: _Requests, request: Any) -> None:
        self._backend, self._request = backend, request
        self._output: np.ndarray | None = None

    def wait(self) -> np.ndarray:
        if self._output is None:
            req, self._request = self._request, None
            if req is None:
                raise SegedgeError("this inference failed already (see the first error); submit the frame again")
            try:
                req.wait()
                self._output = np.array(req.get_output_tensor(0).data, copy=True)
            finally:
                self._backend.release(req)
        return self._output
