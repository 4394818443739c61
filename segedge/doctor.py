"""What this machine can do with segedge: toolkits, CPU features, GPUs, and which targets build and run here.

`environment_report()` is the record `segedge doctor` prints and every benchmark result embeds. It never imports
torch (a device install has none) and reports plug-in modules that failed to import instead of hiding them.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# CPU features that change which deployment is fastest: INT8 dot products (VNNI / ARM dotprod, i8mm), bf16 and
# Intel AMX tiles (OpenVINO and ONNX Runtime pick kernels by them).
ISA_FLAGS = {
    "avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_vnni": ("avx512_vnni",), "avx_vnni": ("avx_vnni",),
    "avx512_bf16": ("avx512_bf16",), "amx_tile": ("amx_tile",), "amx_int8": ("amx_int8",),
    "amx_bf16": ("amx_bf16",), "neon": ("asimd", "neon"), "arm_dotprod": ("asimddp",), "arm_i8mm": ("i8mm",),
    "arm_bf16": ("bf16",), "sve": ("sve",),
}


def isa_flags(cpuinfo: str) -> dict[str, bool]:
    """Which of ISA_FLAGS a /proc/cpuinfo text lists (x86 'flags' or ARM 'Features' lines)."""
    words: set[str] = set()
    for m in re.finditer(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, re.MULTILINE):
        words.update(m.group(1).split())
    return {name: any(w in words for w in aliases) for name, aliases in ISA_FLAGS.items()}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_report() -> dict[str, Any]:
    """CPU model, architecture, cores and ISA flags."""
    from .benchmarks.machine import cpu_model

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    flags = isa_flags(_read("/proc/cpuinfo") or "")
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags.update(neon=True, arm_dotprod=True)  # every Apple silicon core has them
    return {"model": cpu_model(), "arch": platform.machine(), "cores_available": cores, "isa": flags}


def _run_text(argv: list[str], timeout: float = 10) -> str | None:
    """stdout of a short command, or None when it is missing, fails or hangs (device tools are optional)."""
    if not shutil.which(argv[0]):
        return None
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def l4t_version(release: str | None) -> str | None:
    """'# R35 (release), REVISION: 3.1, …' (/etc/nv_tegra_release) → '35.3.1', or None."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release or "")
    return f"{m.group(1)}.{m.group(2)}" if m else None


def power_mode(nvpmodel_q: str | None) -> str | None:
    """`nvpmodel -q` output ('NV Power Mode: MAXN\\n0') → 'MAXN (0)', or None."""
    m = re.search(r"NV Power Mode:\s*(.+)", nvpmodel_q or "")
    if not m:
        return None
    ident = next((ln.strip() for ln in (nvpmodel_q or "").splitlines()[1:] if ln.strip().isdigit()), None)
    return f"{m.group(1).strip()} ({ident})" if ident else m.group(1).strip()


def jetson_report() -> dict[str, Any] | None:
    """Jetson model, L4T release, JetPack version and power mode, or None off Jetson."""
    model = _read("/proc/device-tree/model")
    if not model or "jetson" not in model.lower():
        return None
    rel = _read("/etc/nv_tegra_release")
    first = rel.splitlines()[0] if rel else None
    jetpack = _run_text(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"])
    return {"model": model, "l4t_release": first, "l4t": l4t_version(first),
            "jetpack": (jetpack or "").strip() or None,
            "power_mode": power_mode(_run_text(["nvpmodel", "-q"]))}


def gpu_report() -> dict[str, Any]:
    """NVIDIA GPUs (nvidia-smi), Jetson model, L4T, JetPack and power mode, Apple silicon; no torch needed."""
    out: dict[str, Any] = {"nvidia": [], "jetson": None, "apple_silicon": sys.platform == "darwin"
                           and platform.machine() == "arm64"}
    smi = _run_text(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
                     "--format=csv,noheader"])
    for line in (smi or "").strip().splitlines():
        name, cap, driver, mem = ([p.strip() for p in line.split(",")] + ["", "", "", ""])[:4]
        out["nvidia"].append({"name": name, "compute_capability": cap, "driver": driver, "memory": mem})
    out["jetson"] = jetson_report()
    return out


def _targets_report() -> list[dict[str, Any]]:
    from .export.targets import list_targets

    rows = []
    for t in list_targets():
        build_why, run_why = t.unavailable(), t.run_unavailable()
        rows.append({"name": t.name, "precision": t.precision, "toolkits": list(t.toolkits), "backend": t.backend,
                     "build_here": build_why is None, "build_reason": build_why,
                     "run_here": run_why is None, "run_reason": run_why})
    return rows


def _backends_report() -> list[dict[str, Any]]:
    from .runtime.backends import list_backends

    rows = []
    for b in list_backends():
        why = b.unavailable()
        rows.append({"name": b.name, "suffixes": list(b.suffixes), "toolkit": b.toolkit, "available": why is None,
                     "reason": why})
    return rows


def environment_report() -> dict[str, Any]:
    """The full record: segedge and Python versions, OS, CPU, GPUs, toolkits, backends, targets, plug-in errors."""
    from . import __version__
    from .plugins import import_errors
    from .toolkits import list_toolkits

    toolkits = [t.describe() for t in list_toolkits()]
    backends = _backends_report()
    targets = _targets_report()
    return {
        "segedge": __version__, "python": platform.python_version(), "os": platform.platform(),
        "cpu": cpu_report(), "gpus": gpu_report(), "toolkits": toolkits, "backends": backends, "targets": targets,
        "plugin_errors": import_errors(),
    }


__all__ = ["ISA_FLAGS", "cpu_report", "environment_report", "gpu_report", "isa_flags", "jetson_report", "l4t_version",
           "power_mode"]
