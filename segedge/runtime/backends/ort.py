"""ONNX Runtime backend: TensorRT and CUDA execution providers first when present, then CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import SegedgeError
from . import register_backend
from .base import Backend

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def default_providers() -> list[str]:
    """The preferred execution providers that this onnxruntime build offers, best first."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


@register_backend
class OnnxRuntimeBackend(Backend):
    """An onnxruntime.InferenceSession over an .onnx file, serialized bytes or an onnx.ModelProto."""

    name = "onnxruntime"
    suffixes = (".onnx",)

    def __init__(self, model: Any, threads: int | None = None, providers: Sequence[str] | None = None,
                 description: dict[str, Any] | None = None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        src = model.SerializeToString() if hasattr(model, "SerializeToString") else (
            bytes(model) if isinstance(model, (bytes, bytearray)) else str(model))
        try:
            self.session = ort.InferenceSession(src, so, providers=list(providers or default_providers()))
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            where = Path(model).name if isinstance(model, (str, Path)) else "the model"
            raise SegedgeError(f"onnxruntime cannot load {where}: {str(e).splitlines()[0][:160]}; re-export it "
                               "with `segedge export`") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self._batch_dim = inp.shape[0] if inp.shape else 1
        self.threads = threads
        self.description = description

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "OnnxRuntimeBackend":
        """Load an .onnx file and its segedge metadata_props (read through the session: no second parse)."""
        from ...export.manifest import decode_metadata

        backend = cls(str(path), threads=threads, providers=options.get("providers"))
        meta = decode_metadata(backend.session.get_modelmeta().custom_metadata_map)
        backend.description = meta if "input" in meta and "output" in meta else None
        return backend

    def run(self, x: np.ndarray) -> np.ndarray:
        """session.run on the single input; returns the first output."""
        return self.session.run(None, {self.input_name: x})[0]

    @property
    def supports_batch(self) -> bool:
        return not isinstance(self._batch_dim, int) or self._batch_dim != 1

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "providers": self.session.get_providers(), "threads": self.threads}
