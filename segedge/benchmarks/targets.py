"""Opening what a benchmark row measures: the PyTorch reference (`torch`) or a target of an export folder.

The main process and the isolated memory probe (`memprobe.py`) open targets through these same functions, so the
probe measures exactly what is timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import SegedgeError

REFERENCE = "torch"  # FP32 PyTorch eager: the reference row, always measured


def resolve_device(device: str = "auto") -> str:
    """'auto' → cuda when torch sees a GPU, else mps on Apple silicon, else cpu; explicit names are checked."""
    import torch

    d = str(device).strip().lower()
    if d == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise SegedgeError(f"--device {device}: torch sees no CUDA device here; use --device cpu or auto")
    if d == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SegedgeError("--device mps: MPS is not available here; use --device cpu or auto")
    if not (d == "cpu" or d == "mps" or d.startswith("cuda")):
        raise SegedgeError(f"unknown --device '{device}': choose auto, cpu, cuda[:N] or mps")
    return d


def torch_segmenter(module: Any, input_size: tuple[int, int], threads: int | None = None, device: str = "cpu",
                    postprocess: str = "fast") -> Any:
    """A Segmenter over an in-memory PyTorch model (moved to `device`), with the model's own pre-processing."""
    from ..runtime import ModelInfo, Segmenter
    from ..runtime.backends.pytorch import TorchBackend, describe_pretrained

    module = module.to(device).eval()
    desc = describe_pretrained(module.pretrained_cfg, input_size)
    backend = TorchBackend(module, threads=threads, description=desc)
    info = ModelInfo.from_description(desc, target=REFERENCE, entry={"precision": "fp32"}, source="checkpoint")
    return Segmenter(backend, info, postprocess)


def export_segmenter(folder: str | Path, target: str, threads: int | None = None, postprocess: str = "fast") -> Any:
    """A Segmenter over one target of an export folder (the backend is chosen by the artifact's file kind)."""
    from ..runtime import Segmenter

    return Segmenter.load(folder, target=target, threads=threads, postprocess=postprocess)


def same_backend(seg: Any, postprocess: str) -> Any:
    """Another Segmenter sharing `seg`'s loaded backend, with a different post-processing mode."""
    from ..runtime import Segmenter

    return Segmenter(seg.backend, seg.info, postprocess)


def make_sync(seg: Any) -> Any:
    """A function that waits for the device to finish (CUDA/MPS for PyTorch); a no-op for synchronous runtimes."""
    dev = str(getattr(seg.backend, "device", "cpu"))
    if dev.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    if dev == "mps":
        import torch

        return torch.mps.synchronize
    return lambda: None


def path_bytes(path: str | Path) -> int:
    """Size on disk of a file or a folder (all files under it)."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else 0


def artifact_files(path: str | Path) -> list[Path]:
    """An artifact and the companion files it needs at run time (OpenVINO .bin, ONNX external .data)."""
    p = Path(path)
    files = [p]
    for cand in (p.with_suffix(".bin") if p.suffix == ".xml" else None, Path(str(p) + ".data"),
                 p.with_suffix(".data") if p.suffix == ".onnx" else None):
        if cand is not None and cand.exists() and cand not in files:
            files.append(cand)
    return files


def artifact_bytes(path: str | Path) -> int:
    """Size on disk of an artifact with its companion files."""
    return sum(path_bytes(f) for f in artifact_files(path))


__all__ = ["REFERENCE", "artifact_bytes", "artifact_files", "export_segmenter", "make_sync", "path_bytes",
           "resolve_device", "same_backend", "torch_segmenter"]
