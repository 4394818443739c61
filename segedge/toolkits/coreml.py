"""CoreML (coremltools): converts to .mlpackage anywhere, predicts only on macOS."""

from __future__ import annotations

import sys

from . import Toolkit, register_toolkit

INSTALL_HINT = "pip install 'segedge[coreml]' (coremltools; needs numpy < 2.4)"
DEFAULT_DEPLOYMENT_TARGET = "iOS17"  # mlprogram with FP16 compute; macOS 14 equivalent


def macos_problem() -> str | None:
    """None on macOS, else why CoreML packages cannot be run here."""
    return None if sys.platform == "darwin" else "CoreML prediction needs macOS (conversion works anywhere)"


TOOLKIT = register_toolkit(Toolkit(
    name="coreml", title="CoreML (coremltools)", module="coremltools", distributions=("coremltools",),
    install_hint=INSTALL_HINT, host_check=macos_problem, purpose="converts .mlpackage; predicts on macOS"))
