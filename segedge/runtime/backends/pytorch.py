"""PyTorch backend: runs a segedge checkpoint (or any in-memory model) eagerly, the reference for every export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SegedgeError
from . import register_backend
from .base import Backend


def checkpoint_model_name(path: str | Path) -> str | None:
    """The model name stored in a segedge checkpoint's header, or None for other formats."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("segedge", "{}")).get("model")
    except Exception:  # noqa: BLE001 - unreadable headers are reported by read_checkpoint with a clear message
        return None


def describe_pretrained(cfg: dict[str, Any], input_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """Manifest-style keys for a model built by create_model (float io, logits at the output stride)."""
    h, w = input_size or tuple(cfg["input_size"])
    return {
        "model": cfg["model"], "family": cfg["family"], "num_classes": cfg["num_classes"],
        "class_names": cfg["class_names"],
        "input": {"height": int(h), "width": int(w), "layout": "NCHW", "color_order": "RGB", "dtype": "float32",
                  "mean": list(cfg["mean"]), "std": list(cfg["std"]), "io": "float",
                  "dynamic": {"batch": True, "height": True, "width": True}},
        "output": {"kind": "logits", "stride": int(cfg["output_stride"]), "dtype": "float32"},
    }


@register_backend
class TorchBackend(Backend):
    """Eager PyTorch on CPU (or the module's device)."""

    name = "torch"
    suffixes = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")

    def __init__(self, module: Any, threads: int | None = None, description: dict[str, Any] | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(int(threads))  # process-wide in PyTorch
        self.module = module.eval()
        self.threads = threads
        self.description = description
        try:
            self.device = next(module.parameters()).device
        except StopIteration:
            self.device = torch.device("cpu")

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "TorchBackend":
        """Build the model named in the checkpoint (or `model=`) and load its weights."""
        from ...models import create_model

        name = options.get("model") or checkpoint_model_name(path)
        if not name:
            raise SegedgeError(f"{Path(path).name} does not say which model it holds; pass the model name, e.g. "
                               "Segmenter.load(path, model='b0')")
        model = create_model(name, weights=path)
        size = options.get("input_size")
        return cls(model, threads=threads, description=describe_pretrained(model.pretrained_cfg, size))

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward pass without autograd; returns the logits as float32 NumPy."""
        import torch

        with torch.inference_mode():
            y = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return y.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        import torch

        return {"backend": self.name, "device": str(self.device), "threads": torch.get_num_threads()}
