"""PyTorch backend: runs a segedge checkpoint (or any in-memory model) eagerly, the reference for every export.

The only backend that needs torch; the others never import it. Forward passes under inference_mode are safe to run
from several threads on one module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SegedgeError
from . import register_backend
from .base import Backend, InputSpec


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
    """The contract of a model built by create_model (float io, logits at the output stride), as manifest keys."""
    from ...contract import DynamicAxes, InputContract, ModelContract, OutputContract

    h, w = input_size or tuple(cfg["input_size"])
    return ModelContract(
        num_classes=int(cfg["num_classes"]), class_names=list(cfg["class_names"]),
        input=InputContract(int(h), int(w), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                            dynamic=DynamicAxes(True, True, True)),
        output=OutputContract(stride=int(cfg["output_stride"])), model=cfg["model"], family=cfg["family"],
    ).to_dict()


@register_backend
class TorchBackend(Backend):
    """Eager PyTorch on CPU (or the module's device)."""

    name = "torch"
    suffixes = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
    toolkit = "torch"

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
        if not name and Path(path).suffix == ".safetensors":
            from ...models.checkpoints import read_raw

            read_raw(path)  # an unreadable file fails here with its own message, not "pass model="
        if not name:
            raise SegedgeError(f"{Path(path).name} does not say which model it holds; pass the model name, e.g. "
                               "Segmenter.load(path, model='b0')")
        model = create_model(name, weights=path)
        size = options.get("input_size")
        return cls(model, threads=threads, description=describe_pretrained(model.pretrained_cfg, size))

    def input_spec(self) -> InputSpec:
        """Float32 N×3×H×W, any batch and size (the contract's size is what the Segmenter feeds)."""
        return InputSpec((None, 3, None, None), "float32")

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """Forward pass without autograd; returns the logits as float32 NumPy."""
        import torch

        with torch.inference_mode():
            y = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return y.float().cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued CUDA / MPS work (no-op on CPU)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def close(self) -> None:
        self.module = None
        super().close()

    def describe(self) -> dict[str, Any]:
        import torch

        return {"backend": self.name, "device": str(self.device), "threads": torch.get_num_threads()}
