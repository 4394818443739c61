"""ONNX and onnxsim: the FP32 graph every export target is built from (export side only)."""

from __future__ import annotations

from . import Toolkit, register_toolkit

INSTALL_HINT = "pip install 'segedge[export]'"

TOOLKIT = register_toolkit(Toolkit(
    name="onnx", title="ONNX", module="onnx", distributions=("onnx",), install_hint=INSTALL_HINT,
    purpose="the FP32 graph every target is built from (export only)"))
ONNXSIM = register_toolkit(Toolkit(
    name="onnxsim", title="onnxsim", module="onnxsim", distributions=("onnxsim",), install_hint=INSTALL_HINT,
    purpose="simplifies the exported graph (export only)"))
