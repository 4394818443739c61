"""Facts about the device an engine is built on: TensorRT, CUDA, the GPU, and Jetson's L4T / JetPack / power mode.

An engine is valid for one GPU (compute capability) and one TensorRT version, so `segedge engine build` records
these facts as the manifest's `engine.built_on`, and the TensorRT backend compares them with the device it opens
the engine on (`engine_mismatch`). Every fact is optional: a missing tool or library leaves its key None. The GPU is
read through cuda-python, else torch.cuda (only when torch is installed), else nvidia-smi; Jetson facts come from
`segedge.doctor.gpu_report`. Nothing here imports torch, tensorrt or cuda at module import.
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
from typing import Any, Mapping


def cuda_runtime() -> Any | None:
    """cuda-python's runtime bindings (`cuda.bindings.runtime`, or the older `cuda.cudart`), or None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA install raising at import
            continue
    return None


def _cuda_version_text(value: int) -> str:
    """CUDA's integer version (12060) → '12.6'."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def _ok(cudart: Any, result: Any) -> Any:
    """The value of a cuda-python call's (error, value) tuple, or None when the call failed."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != int(cudart.cudaError_t.cudaSuccess):
        return None
    return rest[0] if rest else True


def cuda_versions() -> dict[str, str | None]:
    """{'runtime', 'driver'} CUDA versions through cuda-python (None for each one it cannot tell)."""
    cudart = cuda_runtime()
    if cudart is None:
        return {"runtime": None, "driver": None}
    out: dict[str, str | None] = {}
    for key, fn in (("runtime", "cudaRuntimeGetVersion"), ("driver", "cudaDriverGetVersion")):
        try:
            v = _ok(cudart, getattr(cudart, fn)())
        except Exception:  # noqa: BLE001 - no driver loaded: the fact is unknown, not an error
            v = None
        out[key] = _cuda_version_text(int(v)) if v else None
    return out


def _gpu_from_cuda_python(device: int) -> dict[str, Any] | None:
    cudart = cuda_runtime()
    if cudart is None:
        return None
    try:
        prop = _ok(cudart, cudart.cudaGetDeviceProperties(device))
    except Exception:  # noqa: BLE001 - no device / no driver
        return None
    if prop is None:
        return None
    name = prop.name.decode(errors="replace") if isinstance(prop.name, (bytes, bytearray)) else str(prop.name)
    return {"name": name.split("\x00")[0].strip(), "compute_capability": f"{prop.major}.{prop.minor}",
            "source": "cuda-python"}


def _gpu_from_torch(device: int) -> dict[str, Any] | None:
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        if not torch.cuda.is_available() or device >= torch.cuda.device_count():
            return None
        p = torch.cuda.get_device_properties(device)
    except Exception:  # noqa: BLE001 - a CPU-only torch build raises in many ways
        return None
    return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}", "source": "torch"}


def _gpu_from_smi(device: int, report: Mapping[str, Any]) -> dict[str, Any] | None:
    gpus = report.get("nvidia") or []
    if device >= len(gpus):
        return None
    g = gpus[device]
    return {"name": g.get("name"), "compute_capability": g.get("compute_capability") or None,
            "source": "nvidia-smi"}


def gpu_identity(device: int = 0, report: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """{'name', 'compute_capability' ('8.7'), 'source'} of CUDA device `device`, or None when none is seen."""
    found = _gpu_from_cuda_python(device) or _gpu_from_torch(device)
    if found is None:
        from ..doctor import gpu_report

        found = _gpu_from_smi(device, report if report is not None else gpu_report())
    return found


def tensorrt_version() -> str | None:
    """`tensorrt.__version__`, or None when TensorRT does not import."""
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except Exception:  # noqa: BLE001 - absent or broken: the fact is unknown
        return None


def built_on(device: int = 0) -> dict[str, Any]:
    """The device facts an engine records: TensorRT, CUDA runtime/driver, GPU, Jetson model/L4T/JetPack/power."""
    from ..doctor import gpu_report

    report = gpu_report()
    smi = (report.get("nvidia") or [{}])[device] if device < len(report.get("nvidia") or []) else {}
    return {"tensorrt": tensorrt_version(), "cuda": cuda_versions(), "gpu": gpu_identity(device, report),
            "gpu_driver": smi.get("driver") or None, "jetson": report.get("jetson"), "arch": platform.machine()}


def engine_mismatch(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    """Why an engine built on `recorded` (a `built_on` dict) cannot run on `here`, or None; unknown facts pass."""
    trt_then, trt_now = recorded.get("tensorrt"), here.get("tensorrt")
    if trt_then and trt_now and str(trt_then) != str(trt_now):
        return f"it was built with TensorRT {trt_then} and this device has TensorRT {trt_now}"
    then, now = recorded.get("gpu") or {}, here.get("gpu") or {}
    cc_then, cc_now = then.get("compute_capability"), now.get("compute_capability")
    if cc_then and cc_now and str(cc_then) != str(cc_now):
        return (f"it was built for {then.get('name') or 'a GPU'} (compute capability {cc_then}) and this GPU is "
                f"{now.get('name') or 'another'} (compute capability {cc_now})")
    if then.get("name") and now.get("name") and then["name"] != now["name"]:
        return f"it was built for {then['name']} and this GPU is {now['name']}"
    return None


__all__ = ["built_on", "cuda_runtime", "cuda_versions", "engine_mismatch", "gpu_identity", "tensorrt_version"]
