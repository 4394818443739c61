"""The interface every inference backend implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class Backend:
    """Runs one model: `run(batch) -> output batch` on model inputs prepared by the Segmenter.

    Subclasses set `name` and `suffixes`, implement `open` and `run`, and may fill `description` (the manifest-style
    model keys they found in the file, e.g. ONNX metadata_props) so a lone file is self-describing.
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    description: dict[str, Any] | None = None

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run here (missing package, no device), or None when it can."""
        return None

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "Backend":
        """Load the model file at `path`."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        """One forward pass on a model-input batch (float32 N×3×H×W, or uint8 N×H×W×3 for raw io)."""
        raise NotImplementedError

    @property
    def supports_batch(self) -> bool:
        """Whether `run` accepts N > 1 (static-batch graphs are run frame by frame)."""
        return True

    def describe(self) -> dict[str, Any]:
        """Backend details for logs and benchmarks (providers, threads, device)."""
        return {"backend": self.name}
