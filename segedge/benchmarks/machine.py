"""What machine a benchmark ran on: CPU, cores, OS, accelerators, library versions and the segedge git commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# Distributions whose versions shape the numbers (missing ones are left out).
LIBRARIES = ("segedge", "torch", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf", "tensorrt", "coremltools",
             "onnx", "numpy", "opencv-python-headless", "opencv-python", "psutil")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None


def cpu_model() -> str:
    """CPU brand string (Linux /proc/cpuinfo, macOS sysctl, Jetson device-tree model), else platform.processor()."""
    info = _read("/proc/cpuinfo")
    if info:
        for key in ("model name", "Model", "Hardware", "cpu model"):
            m = re.search(rf"^{key}\s*:\s*(.+)$", info, re.MULTILINE)
            if m:
                return m.group(1).strip()
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries in LIBRARIES."""
    out = {}
    for dist in LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_commit(repo: Path | None = None) -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None} of the repository holding segedge (read-only git calls)."""
    repo = repo or Path(__file__).resolve().parents[2]
    out: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        r = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            out["commit"] = r.stdout.strip()
        # --no-optional-locks: status must not refresh (write) the index of a tree others are working in.
        s = subprocess.run(["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True, timeout=20)
        if s.returncode == 0:
            out["dirty"] = bool(s.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def accelerators() -> dict[str, Any]:
    """CUDA devices seen by torch, ONNX Runtime providers, OpenVINO devices, Jetson model (each when available)."""
    out: dict[str, Any] = {}
    try:
        import torch

        out["torch_cuda"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            out["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            out["cuda_version"] = torch.version.cuda
        mps = getattr(torch.backends, "mps", None)
        out["torch_mps"] = bool(mps is not None and mps.is_available())
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        out["onnxruntime_providers"] = list(ort.get_available_providers())
    except ImportError:
        pass
    try:
        import openvino as ov

        out["openvino_devices"] = list(ov.Core().available_devices)
    except Exception:  # noqa: BLE001 - openvino absent or without a usable device
        pass
    jetson = _read("/proc/device-tree/model")
    if jetson and "jetson" in jetson.lower():
        out["jetson_model"] = jetson
        rel = _read("/etc/nv_tegra_release")
        if rel:
            out["l4t_release"] = rel.splitlines()[0]
    return out


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Everything needed to read the numbers later: CPU, cores, threads used, memory, OS, versions, git commit and
    the `segedge doctor` record."""
    import psutil

    from ..doctor import environment_report

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "cores_available": affinity,
        "threads": threads,
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "load_average_at_start": load,
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "accelerators": accelerators(),
        "git": git_commit(),
        "environment": environment_report(),  # the `segedge doctor --json` record: toolkits, ISA flags, targets
    }


__all__ = ["accelerators", "cpu_model", "git_commit", "library_versions", "machine_info"]
