"""TensorRT: engines for NVIDIA GPUs and Jetson (the `trt-*` targets and their backend build on this module).

TensorRT comes from JetPack (Jetson) or NVIDIA's installers, not from segedge's extras; building or running an
engine needs a CUDA GPU. Polygraphy (NVIDIA's loaders, `segedge[trt]`) imports TensorRT lazily.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from . import Toolkit, register_toolkit

INSTALL_HINT = ("TensorRT comes with JetPack on Jetson (python3-libnvinfer) or from NVIDIA's installers on x86 "
                "(pip install tensorrt with NVIDIA's index); then pip install 'segedge[trt]'")
# The TensorRT generations segedge makes ONNX flavours for. JetPack 5.1 = 8.5 (no LayerNormalization import: opset
# 16, LN decomposed), 8.6 (LN imported), JetPack 6.x = 10.3 (explicit Q/DQ, FP16 by flag), 11 (strongly typed only:
# precisions come from the graph's types, no FP16/INT8 builder flags, no implicit calibrator).
GENERATIONS = ("8.5", "8.6", "10", "11")


def cuda_gpu_problem() -> str | None:
    """None when an NVIDIA GPU with a driver is visible (Jetson's iGPU included), else why not."""
    if sys.platform == "darwin":
        return "TensorRT needs an NVIDIA GPU; macOS has none"
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/etc/nv_tegra_release") \
            or shutil.which("nvidia-smi"):
        return None
    return "no NVIDIA GPU or driver is visible here; build and run engines on the device"


TOOLKIT = register_toolkit(Toolkit(
    name="tensorrt", title="TensorRT", module="tensorrt", distributions=("tensorrt", "tensorrt-cu12", "tensorrt-cu11"),
    install_hint=INSTALL_HINT, host_check=cuda_gpu_problem, purpose="builds and runs .engine / .plan files"))
POLYGRAPHY = register_toolkit(Toolkit(
    name="polygraphy", title="Polygraphy", module="polygraphy", distributions=("polygraphy",),
    install_hint="pip install 'segedge[trt]'", purpose="TensorRT engine loaders and golden-output checks"))


def run_problem() -> str | None:
    """Why engines cannot run here (TensorRT missing or broken, no NVIDIA GPU), or None; looked up at call time."""
    return TOOLKIT.unavailable() or cuda_gpu_problem()


def build_problem() -> str | None:
    """Why engines cannot be built here: `run_problem`, or Polygraphy (the loaders segedge builds with) missing."""
    return run_problem() or POLYGRAPHY.unavailable()


def import_tensorrt() -> Any:
    """The `tensorrt` module, or a SegedgeError whose one line names what is missing and how to install it."""
    from ..errors import SegedgeError

    why = TOOLKIT.unavailable()
    if why:
        raise SegedgeError(why)
    import tensorrt

    return tensorrt
