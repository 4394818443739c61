"""OpenVINO backend: an OpenVINO IR (.xml + .bin) compiled for CPU with an explicit inference precision.

OpenVINO runs in bf16 by default on CPUs with AVX-512 BF16 / AMX (toolchain-facts.md), which moves the logits far
more than FP32 vs INT8 noise would suggest; the hint is therefore always set: `precision=` when given, else the
`inference_precision_hint` recorded by `segedge export` (manifest entry, then the IR's rt_info), else "f32". The
hint asked for and the precision the compiled model really uses are both in `describe()`. An IR written by
`segedge export` carries the manifest keys in its rt_info (section "segedge"), so a lone .xml is self-describing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SegedgeError
from . import register_backend
from .base import Backend

DEFAULT_PRECISION = "f32"
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
RT_INFO_SECTION = "segedge"
INSTALL_HINT = "pip install 'segedge[openvino]'"


_CORE: Any = None


def _core() -> Any:
    """One ov.Core per process (creating it loads the device plugins)."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def check_precision(precision: str) -> str:
    """Normalise an inference precision hint or raise a one-line error naming the valid ones."""
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise SegedgeError(f"unknown OpenVINO precision '{precision}': choose f32, bf16 or f16")
    return PRECISIONS[key]


def read_rt_info(model: Any) -> dict[str, Any]:
    """The segedge keys in an ov.Model's rt_info (empty for a foreign IR), decoded like ONNX metadata_props."""
    from ...export.manifest import decode_metadata

    try:
        if not model.has_rt_info([RT_INFO_SECTION]):
            return {}
        section = model.get_rt_info([RT_INFO_SECTION]).astype(dict)
        return decode_metadata({str(k): v.astype(str) if hasattr(v, "astype") else str(v)
                                for k, v in section.items()})
    except Exception:  # noqa: BLE001 - unreadable rt_info: a manifest next to the file can still describe it
        return {}


@register_backend
class OpenVINOBackend(Backend):
    """An OpenVINO compiled model (CPU, latency mode) over an .xml IR or an in-memory ov.Model."""

    name = "openvino"
    suffixes = (".xml",)

    def __init__(self, model: Any, threads: int | None = None, precision: str | None = None,
                 device: str = "CPU", description: dict[str, Any] | None = None,
                 precision_source: str | None = None) -> None:
        self.core = _core()
        if isinstance(model, (str, Path)):
            model = self.read(self.core, model)
        self.model = model
        self.device = device
        self.threads = threads
        self.precision = check_precision(precision or DEFAULT_PRECISION)
        self.precision_source = precision_source or ("option" if precision else "default")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = self.core.compile_model(model, device, config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with long multi-line messages
            raise SegedgeError(f"OpenVINO cannot compile the model for {device} ({_first_line(e)}); re-export it "
                               "with `segedge export --target openvino`") from None
        self.request = self.compiled.create_infer_request()
        self._batch_dim = model.input(0).get_partial_shape()[0] if model.inputs else None
        self.description = description

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
            raise SegedgeError(f"{p.name} is not a readable OpenVINO IR ({_first_line(e)}); re-export it with "
                               "`segedge export --target openvino`") from None

    @classmethod
    def unavailable(cls) -> str | None:
        try:
            import openvino  # noqa: F401
        except Exception as e:  # noqa: BLE001 - a broken install is as unusable as a missing one
            return f"openvino cannot be imported ({_first_line(e)}): {INSTALL_HINT}"
        return None

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "OpenVINOBackend":
        """Read the IR and its rt_info keys; precision: `precision=`, else the recorded hint (the manifest entry
        the Segmenter passes as `manifest_entry=`, then rt_info), else f32. `device=` defaults to CPU."""
        model = cls.read(_core(), path)
        meta = read_rt_info(model)
        entry = options.get("manifest_entry") or {}
        precision, source = options.get("precision"), "option"
        if not precision and entry.get("inference_precision_hint"):
            precision, source = entry["inference_precision_hint"], "manifest"
        if not precision and meta.get("inference_precision_hint"):
            precision, source = meta["inference_precision_hint"], "rt_info"
        if not precision:
            precision, source = DEFAULT_PRECISION, "default"
        return cls(model, threads=threads, precision=str(precision), device=str(options.get("device") or "CPU"),
                   description=meta if "input" in meta and "output" in meta else None, precision_source=source)

    def run(self, x: np.ndarray) -> np.ndarray:
        """One synchronous inference on the single input; returns a copy of the first output."""
        self.request.infer({0: np.ascontiguousarray(x)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)

    @property
    def supports_batch(self) -> bool:
        d = self._batch_dim
        return d is None or d.is_dynamic or d.get_length() != 1

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
                "performance_hint": prop("PERFORMANCE_HINT"), "openvino": str(ov.__version__)}
