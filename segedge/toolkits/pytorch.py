"""PyTorch: the model zoo, training, export (torch.onnx) and the FP32 reference backend. Not needed at run time."""

from __future__ import annotations

from . import Toolkit, register_toolkit

INSTALL_HINT = ("pip install torch==2.13.0 (CPU; Jetson: NVIDIA's own build) and pip install 'segedge[export]'")

TOOLKIT = register_toolkit(Toolkit(
    name="torch", title="PyTorch", module="torch", distributions=("torch",), install_hint=INSTALL_HINT,
    purpose="models, training, export to ONNX, the FP32 reference"))
