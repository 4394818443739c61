"""ONNX Runtime: runs the `onnx`, `ort-int8` and `qdq` targets (CPU, CUDA and TensorRT execution providers)."""

from __future__ import annotations

from . import Toolkit, register_toolkit

INSTALL_HINT = "pip install 'segedge[ort]' (onnxruntime; on Jetson NVIDIA's onnxruntime-gpu wheel)"
# Execution providers the runtime prefers, best first; the CPU one is always there.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

TOOLKIT = register_toolkit(Toolkit(
    name="onnxruntime", title="ONNX Runtime", module="onnxruntime",
    distributions=("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
    install_hint=INSTALL_HINT, purpose="runs .onnx targets; quantizes ort-int8 and qdq"))


def default_providers() -> list[str]:
    """The preferred execution providers that this onnxruntime build offers, best first."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available] or ["CPUExecutionProvider"]


def available_providers() -> list[str]:
    """Every execution provider this onnxruntime build offers (empty when it is not installed)."""
    if TOOLKIT.unavailable():
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())
