"""CoreML (coremltools): converts to .mlpackage anywhere, predicts only on macOS.

The constants and checks the `coreml-*` export targets and the CoreML runtime backend share: deployment targets
(iOS 15+ / macOS 12+: the first with ML programs), palettisation bit widths, compute units, and a quiet import
(coremltools logs a line per missing native proxy on Linux and warns about untested torch / scikit-learn versions,
none of which matters for conversion).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from ..errors import SegedgeError
from . import Toolkit, register_toolkit

INSTALL_HINT = "pip install 'segedge[coreml]' (coremltools; needs numpy < 2.4)"
DEFAULT_DEPLOYMENT_TARGET = "iOS17"  # mlprogram with FP16 compute; macOS 14 equivalent
# Deployment target → coremltools AvailableTarget value (= the Core ML specification version it implies).
DEPLOYMENT_TARGETS = {"iOS15": 6, "iOS16": 7, "iOS17": 8, "iOS18": 9}
MACOS_EQUIVALENT = {"macOS12": "iOS15", "macOS13": "iOS16", "macOS14": "iOS17", "macOS15": "iOS18"}
PALETTIZE_BITS = (4, 6, 8)
COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_only": "CPU_ONLY", "cpu_and_gpu": "CPU_AND_GPU"}
METADATA_PREFIX = "com.github.apple.coremltools."  # keys coremltools writes itself (not segedge's)


def macos_problem() -> str | None:
    """None on macOS, else why CoreML packages cannot be run here."""
    return None if sys.platform == "darwin" else "CoreML prediction needs macOS (conversion works anywhere)"


class _CoreMLToolkit(Toolkit):
    """The CoreML toolkit, whose availability check imports coremltools quietly."""

    def unavailable(self) -> str | None:
        return _quiet(super().unavailable)


TOOLKIT = register_toolkit(_CoreMLToolkit(
    name="coreml", title="CoreML (coremltools)", module="coremltools", distributions=("coremltools",),
    install_hint=INSTALL_HINT, host_check=macos_problem, purpose="converts .mlpackage; predicts on macOS"))


def coremltools() -> Any:
    """The coremltools module, imported without its import-time noise; one line with the install hint if missing."""
    why = _quiet(TOOLKIT.unavailable)
    if why:
        raise SegedgeError(f"the CoreML targets need coremltools: {why}")
    import coremltools as ct

    return ct


def _quiet(fn: Any) -> Any:
    """Run `fn` with coremltools' logger and Python warnings muted (its first import logs ~8 irrelevant lines)."""
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    finally:
        log.setLevel(level)


def check_deployment_target(value: Any) -> str:
    """'ios17', 'iOS17', 'macos14' … → the canonical iOS name ('iOS17'), or one line naming the choices."""
    text = str(value).strip().replace(" ", "").lower()
    for name in (*DEPLOYMENT_TARGETS, *MACOS_EQUIVALENT):
        if text == name.lower():
            return MACOS_EQUIVALENT.get(name, name)
    raise SegedgeError(f"unknown CoreML deployment target '{value}': choose one of "
                       f"{', '.join([*DEPLOYMENT_TARGETS, *MACOS_EQUIVALENT])} (ML programs need iOS 15 / macOS 12 "
                       "or newer)")


def check_palettize(value: Any) -> int | None:
    """A `--palettize` value: None/0/'none' (int8 weights) or 4, 6, 8 bits; anything else is one line."""
    if value is None or str(value).strip().lower() in ("", "0", "none", "off"):
        return None
    try:
        bits = int(str(value).strip())
    except ValueError:
        bits = -1
    if bits not in PALETTIZE_BITS:
        raise SegedgeError(f"--palettize takes 4, 6 or 8 (bits per weight index), got '{value}'; omit it for int8 "
                           "per-channel weights")
    return bits


def check_compute_units(value: Any) -> str:
    """'all' | 'cpu_and_ne' ('cpu+ne') | 'cpu_only' ('cpu') | 'cpu_and_gpu' → the coremltools ComputeUnit name."""
    key = str(value).strip().lower().replace("+", "_and_").replace("-", "_")
    key = {"cpu": "cpu_only", "ne": "cpu_and_ne", "ane": "cpu_and_ne", "gpu": "cpu_and_gpu"}.get(key, key)
    if key not in COMPUTE_UNITS:
        raise SegedgeError(f"unknown CoreML compute_units '{value}': choose all, cpu_and_ne or cpu_only")
    return COMPUTE_UNITS[key]
