"""Opening what a benchmark row measures: the PyTorch reference (`torch`) or a target of an export folder.

The main process and the isolated memory probe (`memprobe.py`) open targets through these same functions, so the
probe measures exactly what is timed.
"""

from __future__ import annotations

import os
import re
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


def portable_path(path: str | Path) -> str:
    """`path` as results files should record it: relative to the current directory when it lies inside it (or was
    typed as the current directory plus a relative part, e.g. `$PWD/../data`), else as given; never a resolved
    absolute path of the working tree. Results written in a repository then carry no machine-specific paths."""
    s = str(path)
    if not os.path.isabs(s):
        return s
    cwd = os.getcwd()
    real, real_cwd = os.path.realpath(s), os.path.realpath(cwd)
    if real == real_cwd or real.startswith(real_cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(real, real_cwd)
    if s.startswith(cwd.rstrip(os.sep) + os.sep):
        return os.path.relpath(s, cwd)
    return s


def portable_spec(spec: str) -> str:
    """A command-line value with each absolute path in it made portable (`portable_path`): a plain path, a
    `DATASET:ROOT[:SPLIT]` spec or a comma-separated list of them."""
    return "".join(portable_path(p) if p.startswith("/") else p for p in re.split(r"([,:])", spec))


def path_bytes(path: str | Path) -> int:
    """Size on disk of a file or a folder (all files under it)."""
    from ..io import path_size

    return path_size(path)


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


__all__ = ["REFERENCE", "artifact_bytes", "artifact_files", "export_segmenter", "path_bytes",
           "portable_path", "portable_spec", "resolve_device", "same_backend", "torch_segmenter"]
