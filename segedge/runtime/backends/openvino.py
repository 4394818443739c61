"""OpenVINO backend: an OpenVINO IR (.xml + .bin) compiled for CPU with an explicit inference precision.

The precision hint is always set (see segedge.toolkits.openvino): `precision=` when given, else the
`inference_precision_hint` recorded by `segedge export` (manifest entry, then the IR's rt_info), else "f32". The hint
asked for and the precision the compiled model really uses are both in `describe()`. An IR written by
`segedge export` carries the contract in its rt_info (section "segedge"), so a lone .xml is self-describing.

Thread safety: an OpenVINO infer request serves one inference at a time (a second caller gets "Infer Request is
busy", or worse, reads another call's output), so each calling thread gets its own request on the shared compiled
model; the compiled model itself is thread-safe.
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
from .base import Backend, InputSpec

_OV_TYPES = {"f32": "float32", "u8": "uint8", "f16": "float16", "i8": "int8"}


@register_backend
class OpenVINOBackend(Backend):
    """An OpenVINO compiled model (CPU, latency mode) over an .xml IR or an in-memory ov.Model."""

    name = "openvino"
    suffixes = (".xml",)
    toolkit = "openvino"

    def __init__(self, model: Any, threads: int | None = None, precision: str | None = None,
                 device: str = "CPU", description: dict[str, Any] | None = None,
                 precision_source: str | None = None, library_defaults: bool = False) -> None:
        """`library_defaults=True` compiles with OpenVINO's own defaults (only the thread count set) and reads any
        model file OpenVINO reads (e.g. an .onnx): what a user calling `compile_model` bare gets (bench baselines)."""
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
            config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.config = config
        try:
            self.compiled = self.core.compile_model(model, device, config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with long multi-line messages
            raise SegedgeError(f"OpenVINO cannot compile the model for {device} ({first_line(e)}); re-export it "
                               "with `segedge export --target openvino`") from e
        self._local = threading.local()
        self._spec = self._port_spec(model.input(0))
        self._out = self._port_spec(model.output(0))
        self.description = description

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
                   description=meta if describes_model(meta) else None, precision_source=source)

    def input_spec(self) -> InputSpec:
        return self._spec

    def output_spec(self) -> InputSpec:
        return self._out

    @property
    def request(self) -> Any:
        """This thread's infer request (created on its first call)."""
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """One synchronous inference on this thread's request; returns a copy of the first output."""
        req = self.request
        req.infer({0: np.ascontiguousarray(x)})
        return np.array(req.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self._local = threading.local()
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
                "performance_hint": prop("PERFORMANCE_HINT"), "openvino": str(ov.__version__),
                "config": dict(self.config)}
