"""The interface every inference backend implements, with its lifecycle (as Polygraphy's runners).

A backend is opened from a file (`open`), checks every input against its `input_spec` in one place (`run`), runs
it (`run_impl`, the one method a backend must write), waits for its device (`synchronize`: a no-op on CPU) and
releases what it holds (`close`, also through `with`). Heavy libraries are imported inside the methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ...errors import SegedgeError


@dataclass(frozen=True)
class InputSpec:
    """Shape (None for a dynamic dimension) and dtype of a model's single input."""

    shape: tuple[int | None, ...]
    dtype: str  # numpy dtype name: float32 | uint8 | float16

    def describe(self) -> str:
        """'float32 1×3×384×512' (dynamic dimensions as '?')."""
        return f"{self.dtype} " + "×".join("?" if d is None else str(d) for d in self.shape)

    def check(self, x: Any) -> np.ndarray:
        """Return `x` when it fits this spec, else raise one line naming what was expected and what came."""
        if not isinstance(x, np.ndarray):
            raise SegedgeError(f"model input must be a numpy array ({self.describe()}), got {type(x).__name__}; "
                               "pass frames through Segmenter.predict, which prepares them")
        fits = x.dtype == np.dtype(self.dtype) and x.ndim == len(self.shape) and all(
            d is None or d == n for d, n in zip(self.shape, x.shape))
        if not fits:
            got = f"{x.dtype} " + "×".join(str(n) for n in x.shape)
            raise SegedgeError(f"model input must be {self.describe()}, got {got}; pass frames through "
                               "Segmenter.predict (it resizes and normalises them to the model's contract)")
        return x


class Pending:
    """An inference started by `Backend.submit`; `wait()` returns its output (once)."""

    def __init__(self, output: np.ndarray) -> None:
        self._output = output

    def wait(self) -> np.ndarray:
        """Block until the output is ready and return it."""
        return self._output


class Backend:
    """Runs one model: `run(batch) -> output batch` on model inputs prepared by the Segmenter.

    Subclasses set `name`, `suffixes` (file kinds they open) and `toolkit` (the segedge.toolkits module they need),
    implement `open`, `input_spec` and `run_impl`, and may fill `description` (the manifest-style model keys they
    found in the file, e.g. ONNX metadata_props) so a lone file is self-describing. GPU backends override
    `synchronize`; backends holding native resources override `close` (and call `super().close()`).
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()
    toolkit: ClassVar[str | None] = None  # name in segedge.toolkits whose availability this backend needs
    description: dict[str, Any] | None = None
    _closed: bool = False

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run here (missing package, no device), or None when it can."""
        if cls.toolkit is None:
            return None
        from ...toolkits import get_toolkit

        return get_toolkit(cls.toolkit).unavailable()

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "Backend":
        """Load the model file at `path`."""
        raise NotImplementedError

    def input_spec(self) -> InputSpec:
        """The model input's shape and dtype (dynamic dimensions None)."""
        raise NotImplementedError

    def output_spec(self) -> InputSpec | None:
        """The first output's shape and dtype when the backend knows it before running (None otherwise)."""
        return None

    def run(self, x: np.ndarray) -> np.ndarray:
        """One forward pass on a model-input batch, checked against `input_spec` first."""
        if self._closed:
            raise SegedgeError(f"this {self.name} backend is closed; load the model again (Segmenter.load)")
        return self.run_impl(self.input_spec().check(x))

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """The forward pass proper on an input that fits `input_spec` (float32 N×3×H×W or uint8 N×H×W×3)."""
        raise NotImplementedError

    @property
    def parallel_requests(self) -> int:
        """How many inferences this backend runs at the same time (streams); `submit` may have that many in flight."""
        return 1

    def submit(self, x: np.ndarray) -> Pending:
        """Start one inference and return at once where the backend can overlap several (`parallel_requests` > 1);
        the base class runs it to completion here. Outputs come back in `wait()`, in any order the caller picks."""
        return Pending(self.run(x))

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (no-op for synchronous CPU runtimes)."""

    def close(self) -> None:
        """Release the session / engine; `run` refuses afterwards. Idempotent."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """Whether `close` has been called."""
        return self._closed

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def supports_batch(self) -> bool:
        """Whether `run` accepts N > 1 (static-batch graphs are run frame by frame)."""
        shape = self.input_spec().shape
        return not shape or shape[0] is None or shape[0] != 1

    def describe(self) -> dict[str, Any]:
        """Backend details for logs and benchmarks (providers, threads, device)."""
        return {"backend": self.name}
