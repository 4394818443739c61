"""ONNX Runtime backend: TensorRT and CUDA execution providers first when present, then CPU.

An InferenceSession is safe to call from several threads at once (ONNX Runtime documents `Run` as thread-safe),
so one backend serves every thread of a camera pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...contract import decode_metadata, describes_model
from ...errors import SegedgeError, first_line
from ...toolkits.onnxruntime import default_providers
from . import register_backend
from .base import Backend, InputSpec

_ORT_TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(float16)": "float16",
              "tensor(int8)": "int8"}


def _check_providers(providers: Any, available: Sequence[str]) -> list[Any]:
    """`providers=` as a list (one name is a list of one), each offered by this onnxruntime build, or one line."""
    if providers is None:
        return []
    if isinstance(providers, (str, tuple)):
        providers = [providers]  # one name, or one (name, options) pair
    out = list(providers)
    for p in out:
        name = p[0] if isinstance(p, tuple) and p else p
        if name not in available:
            raise SegedgeError(f"execution provider {name!r} is not available in this onnxruntime build; choose from "
                               f"{', '.join(available)} (`segedge doctor` shows what is installed)")
    return out


@register_backend
class OnnxRuntimeBackend(Backend):
    """An onnxruntime.InferenceSession over an .onnx file, serialized bytes or an onnx.ModelProto."""

    name = "onnxruntime"
    suffixes = (".onnx",)
    toolkit = "onnxruntime"

    def __init__(self, model: Any, threads: int | None = None, providers: Sequence[str] | None = None,
                 description: dict[str, Any] | None = None, spinning: bool | None = None) -> None:
        """`spinning=False` lets idle intra-op threads sleep instead of spin-waiting for the next parallel section:
        slower alone, but it leaves the cores to the other stages of a pipeline sharing the CPU."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        if spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.spinning = spinning
        providers = _check_providers(providers, ort.get_available_providers())
        src = model.SerializeToString() if hasattr(model, "SerializeToString") else (
            bytes(model) if isinstance(model, (bytes, bytearray)) else str(model))
        try:
            self.session = ort.InferenceSession(src, so, providers=providers or default_providers())
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            where = Path(model).name if isinstance(model, (str, Path)) else "the model"
            raise SegedgeError(f"onnxruntime cannot load {where}: {first_line(e)}; re-export it with "
                               "`segedge export`") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self._spec = InputSpec(tuple(d if isinstance(d, int) else None for d in inp.shape),
                               _ORT_TYPES.get(inp.type, "float32"))
        out = self.session.get_outputs()[0]
        self._out = InputSpec(tuple(d if isinstance(d, int) else None for d in (out.shape or ())),
                              _ORT_TYPES.get(out.type, "float32"))
        self.threads = threads
        self.description = description

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "OnnxRuntimeBackend":
        """Load an .onnx file and its segedge metadata_props (read through the session: no second parse)."""
        backend = cls(str(path), threads=threads, providers=options.get("providers"), spinning=options.get("spinning"))
        meta = decode_metadata(backend.session.get_modelmeta().custom_metadata_map)
        backend.description = meta if describes_model(meta) else None
        return backend

    def input_spec(self) -> InputSpec:
        return self._spec

    def output_spec(self) -> InputSpec:
        return self._out

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """session.run on the single input; returns the first output."""
        return self.session.run(None, {self.input_name: x})[0]

    def close(self) -> None:
        self.session = None  # type: ignore[assignment] - drops the native session now, not at garbage collection
        super().close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": self.session.get_providers() if self.session else [],
                "threads": self.threads, "spinning": self.spinning}
