"""OpenVINO (+ NNCF for INT8): the `openvino` and `openvino-int8` targets and their runtime backend.

OpenVINO runs in bf16 by default on CPUs with AVX-512 BF16 / AMX, which moves the logits far more than FP32 vs INT8
noise would suggest; segedge therefore always sets the inference precision hint and records it.
"""

from __future__ import annotations

from typing import Any

from ..errors import SegedgeError
from . import Toolkit, register_toolkit

INSTALL_HINT = "pip install 'segedge[ov]' to run IR files ('segedge[openvino]' adds NNCF for export)"
EXPORT_HINT = "pip install 'segedge[openvino]'"
DEFAULT_PRECISION = "f32"
PRECISIONS = {"f32": "f32", "fp32": "f32", "bf16": "bf16", "f16": "f16", "fp16": "f16"}
RT_INFO_SECTION = "segedge"  # the IR's rt_info section holding the model contract

TOOLKIT = register_toolkit(Toolkit(
    name="openvino", title="OpenVINO", module="openvino", distributions=("openvino",),
    install_hint=INSTALL_HINT, purpose="runs .xml IR targets; converts openvino / openvino-int8"))
NNCF = register_toolkit(Toolkit(
    name="nncf", title="NNCF", module="nncf", distributions=("nncf",), install_hint=EXPORT_HINT,
    purpose="post-training INT8 for openvino-int8 (export only)"))

_CORE: Any = None


def core() -> Any:
    """One ov.Core per process (creating it loads the device plugins)."""
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


def check_precision(precision: str) -> str:
    """Normalise an inference precision hint or raise a one-line error naming the valid ones."""
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise SegedgeError(f"unknown OpenVINO precision '{precision}': choose f32, bf16 or f16")
    return PRECISIONS[key]


def devices() -> list[str]:
    """OpenVINO devices seen here (empty when OpenVINO is not installed)."""
    if TOOLKIT.unavailable():
        return []
    try:
        return list(core().available_devices)
    except Exception:  # noqa: BLE001 - a plugin that fails to load shows no device
        return []


def with_frame_input(model: Any, mean: Any, std: Any, color_order: str) -> Any:
    """A copy of a float-input model (N×3×H×W, (x − mean) / std in `color_order`) that takes uint8 N×H×W×3 BGR frames
    at the model's size. OpenVINO's PrePostProcessor puts the colour swap, the float conversion, mean/std and the
    layout change into the graph, where the CPU plugin merges them with the input reorder it makes anyway (bf16 NHWC
    for the first convolution), instead of NumPy writing and OpenVINO re-reading a float frame: TopFormer-T 384×512
    frame → labels 4.43 → 3.86 ms on a 2-core Xeon with AMX (bf16)."""
    from openvino import Layout, Type
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model.clone())
    ppp.input().tensor().set_element_type(Type.u8).set_layout(Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(Layout("NCHW"))
    steps = ppp.input().preprocess()
    if str(color_order).upper() == "RGB":
        steps.convert_color(ColorFormat.RGB)
    steps.convert_element_type(Type.f32).mean([float(m) for m in mean]).scale([float(s) for s in std])
    return ppp.build()
