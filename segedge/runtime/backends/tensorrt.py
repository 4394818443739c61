"""TensorRT backend: runs a serialized engine (.engine / .plan) built by `segedge engine build`.

I/O goes through TensorRT's name-based tensor API (TensorRT ≥ 8.5: `num_io_tensors`, `get_tensor_name/mode/shape/
dtype`, `set_input_shape`, `set_tensor_address`, `execute_async_v3`). CUDA memory comes from one small provider
chosen at open: cuda-python (`cuda.bindings.runtime`, or the older `cuda.cudart`), else torch.cuda when PyTorch with
CUDA is installed. Each run copies the input into a pinned host buffer, then queues host→device copy, execution and
device→host copy on one CUDA stream and waits for it. Engines are specific to one GPU and one TensorRT version: an
engine whose manifest records another device (`engine.built_on`) is refused before TensorRT sees it.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import SegedgeError, first_line
from . import register_backend
from .base import Backend, InputSpec

MEMORY_PROVIDERS = ("cuda-python", "torch")
_REBUILD = "rebuild it on this device with `segedge engine build EXPORT_DIR --target TARGET`"


@dataclass
class Buffer:
    """A pinned host buffer and a device buffer of the same capacity (bytes)."""

    host: np.ndarray  # uint8 view of page-locked host memory
    device: int  # device pointer
    capacity: int
    owners: tuple[Any, ...] = ()  # what the provider must keep alive or free (pointers, tensors)


class CudaPythonMemory:
    """CUDA memory, copies and one stream through cuda-python's runtime bindings."""

    name = "cuda-python"

    def __init__(self, cudart: Any, device: int = 0) -> None:
        self.cudart = cudart
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream_handle = int(self.stream)

    def _check(self, result: Any, what: str) -> Any:
        """The value of an (error, value…) result; a CUDA error becomes one line."""
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != int(self.cudart.cudaError_t.cudaSuccess):
            raise SegedgeError(f"CUDA {what} failed ({getattr(err, 'name', err)}); check the GPU with `nvidia-smi` "
                               "(or tegrastats on Jetson) and free GPU memory")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> Buffer:
        """A pinned host buffer and a device buffer of `nbytes` each."""
        dev = self._check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        try:
            host_ptr = self._check(self.cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        except SegedgeError:
            self.cudart.cudaFree(dev)
            raise
        host = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(host_ptr)))
        return Buffer(host, int(dev), nbytes, (host_ptr, dev))

    def h2d(self, buf: Buffer, nbytes: int) -> None:
        """Queue host → device of the first `nbytes`."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.cudart.cudaMemcpyAsync(buf.device, buf.host.ctypes.data, nbytes, kind, self.stream),
                    "cudaMemcpyAsync (host to device)")

    def d2h(self, buf: Buffer, nbytes: int) -> None:
        """Queue device → host of the first `nbytes`."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.cudart.cudaMemcpyAsync(buf.host.ctypes.data, buf.device, nbytes, kind, self.stream),
                    "cudaMemcpyAsync (device to host)")

    def synchronize(self) -> None:
        """Wait for the stream."""
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self, buf: Buffer) -> None:
        """Release both halves of a buffer."""
        host_ptr, dev = buf.owners
        self.cudart.cudaFreeHost(host_ptr)
        self.cudart.cudaFree(dev)

    def close(self) -> None:
        """Destroy the stream."""
        self.cudart.cudaStreamDestroy(self.stream)


class TorchMemory:
    """CUDA memory, copies and one stream through torch.cuda (for hosts with PyTorch but no cuda-python)."""

    name = "torch"

    def __init__(self, device: int = 0) -> None:
        import torch

        self.torch = torch
        self.device = torch.device("cuda", device)
        self.stream = torch.cuda.Stream(device=self.device)
        self.stream_handle = int(self.stream.cuda_stream)

    def alloc(self, nbytes: int) -> Buffer:
        """A pinned host tensor and a device tensor of `nbytes` each."""
        host = self.torch.empty(nbytes, dtype=self.torch.uint8, pin_memory=True)
        dev = self.torch.empty(nbytes, dtype=self.torch.uint8, device=self.device)
        return Buffer(host.numpy(), int(dev.data_ptr()), nbytes, (host, dev))

    def h2d(self, buf: Buffer, nbytes: int) -> None:
        """Queue host → device of the first `nbytes`."""
        host, dev = buf.owners
        with self.torch.cuda.stream(self.stream):
            dev[:nbytes].copy_(host[:nbytes], non_blocking=True)

    def d2h(self, buf: Buffer, nbytes: int) -> None:
        """Queue device → host of the first `nbytes`."""
        host, dev = buf.owners
        with self.torch.cuda.stream(self.stream):
            host[:nbytes].copy_(dev[:nbytes], non_blocking=True)

    def synchronize(self) -> None:
        """Wait for the stream."""
        self.stream.synchronize()

    def free(self, buf: Buffer) -> None:
        """Drop the tensors (torch's caching allocators reclaim them)."""
        buf.owners = ()

    def close(self) -> None:
        """Nothing beyond the tensors: the stream goes with the object."""


def open_memory(choice: str | None = None, device: int = 0) -> CudaPythonMemory | TorchMemory:
    """The CUDA memory provider: `choice` ('cuda-python' | 'torch'), or the first that works (cuda-python first)."""
    from ...engine.device import cuda_runtime

    if choice is not None and choice not in MEMORY_PROVIDERS:
        raise SegedgeError(f"memory={choice!r} is not a CUDA memory provider: choose one of "
                           f"{', '.join(MEMORY_PROVIDERS)} or leave it out")
    if choice in (None, "cuda-python"):
        cudart = cuda_runtime()
        if cudart is not None:
            return CudaPythonMemory(cudart, device)
        if choice == "cuda-python":
            raise SegedgeError("cuda-python is not installed: pip install 'segedge[trt]' (or cuda-python matching "
                               "your CUDA version)")
    if _torch_cuda_ready():
        return TorchMemory(device)
    raise SegedgeError("the TensorRT backend needs cuda-python (pip install 'segedge[trt]') or PyTorch with CUDA "
                       "for GPU memory, and neither works here" + ("" if choice is None else f" (memory={choice!r})"))


def _torch_cuda_ready() -> bool:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken torch install is as good as none here
        return False


def _capturing_logger(trt: Any) -> Any:
    """A trt.ILogger that keeps TensorRT's error messages (to turn a failed deserialize into one line)."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return CapturingLogger()


def _np_dtype(trt: Any, dtype: Any) -> np.dtype:
    """numpy dtype of a TensorRT DataType."""
    return np.dtype(trt.nptype(dtype))


def _manifest_target(path: Path) -> tuple[str, Any] | None:
    """(target, entry) of `path` in its folder's manifest.json, or None."""
    from ...contract import MANIFEST_NAME, Manifest

    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    try:
        return Manifest.read(path.parent).entry_for_file(path.name)
    except SegedgeError:
        return None


def check_built_on(path: Path, entry: Any, target: str | None, device: int = 0) -> None:
    """Refuse an engine whose manifest entry records another GPU or TensorRT version (one line naming the fix)."""
    from ...engine.bundle import build_command, engine_block
    from ...engine.device import engine_mismatch, gpu_identity, tensorrt_version

    block = engine_block(entry.to_dict() if hasattr(entry, "to_dict") else entry) if entry is not None else None
    recorded = (block or {}).get("built_on")
    if not isinstance(recorded, dict):
        return
    why = engine_mismatch(recorded, {"tensorrt": tensorrt_version(), "gpu": gpu_identity(device)})
    if why:
        fix = f"`{build_command(path.parent, target)}`" if target else "`segedge engine build`"
        raise SegedgeError(f"{path.name} cannot run here: {why}; engines are specific to one GPU and TensorRT "
                           f"version: rebuild it on this device with {fix}")


@register_backend
class TensorRTBackend(Backend):
    """A deserialized TensorRT engine with one execution context, its CUDA buffers and one stream.

    Thread safety: one backend owns one IExecutionContext, one set of buffers and one stream, so `run` holds a lock
    for the whole copy → execute → copy sequence: several threads may call `run` on the same backend and are served
    one at a time (results never mix). For parallel inference open one backend per thread (each gets its own
    context and stream). `close` takes the same lock, so it waits for a run in flight; it is idempotent.
    """

    name = "tensorrt"
    suffixes = (".engine", ".plan")
    toolkit = "tensorrt"

    @classmethod
    def unavailable(cls) -> str | None:
        """TensorRT must import and an NVIDIA GPU must be visible."""
        from ...toolkits.tensorrt import run_problem

        return run_problem()

    def __init__(self, engine_bytes: bytes, where: str = "the engine", memory: str | None = None,
                 device: int = 0) -> None:
        from ...toolkits.tensorrt import import_tensorrt

        self._lock = threading.Lock()
        self._buffers: dict[str, Buffer] = {}
        self._mem: CudaPythonMemory | TorchMemory | None = None
        self.runtime = self.engine = self.context = None
        self.trt = import_tensorrt()
        try:
            self._mem = open_memory(memory, device)
            self._logger = _capturing_logger(self.trt)
            self.runtime, self.engine = self._deserialize(engine_bytes, where)
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise SegedgeError(f"TensorRT cannot create an execution context for {where} "
                                   f"({self._last_error()}); free GPU memory or {_REBUILD}")
            self._inputs, self._outputs = self._io_names(where)
        except BaseException:
            self.close()
            raise
        self._bound: tuple[int, ...] | None = None
        self.where = where

    # -- opening ----------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "TensorRTBackend":
        """Load an engine file; refuse it first when its manifest records another GPU or TensorRT version.

        options: `memory=` 'cuda-python' | 'torch' (default: the first available), `device=` CUDA device index,
        `manifest_entry=` the file's manifest entry (Segmenter passes it). `threads` does not apply to a GPU.
        """
        from ...toolkits.tensorrt import import_tensorrt

        p = Path(path)
        if not p.is_file():
            raise SegedgeError(f"engine file not found: {p}; build it with `segedge engine build EXPORT_DIR`")
        import_tensorrt()  # missing TensorRT is named before anything else
        device = int(options.get("device", 0))
        found = _manifest_target(p)
        entry = options.get("manifest_entry") or (found[1] if found else None)
        check_built_on(p, entry, found[0] if found else None, device)
        return cls(p.read_bytes(), where=p.name, memory=options.get("memory"), device=device)

    def _last_error(self) -> str:
        errors = getattr(getattr(self, "_logger", None), "errors", None)
        return errors[-1] if errors else "no message from TensorRT"

    def _deserialize(self, data: bytes, where: str) -> tuple[Any, Any]:
        """(runtime, engine); TensorRT's own failure becomes one line."""
        runtime = self.trt.Runtime(self._logger)
        try:
            engine = runtime.deserialize_cuda_engine(data)
        except Exception as e:  # noqa: BLE001 - some TensorRT builds raise instead of returning None
            self._logger.errors.append(first_line(e))
            engine = None
        if engine is None:
            raise SegedgeError(f"TensorRT cannot load {where}: {first_line(self._last_error())}; an engine only runs "
                               f"with the GPU and TensorRT version it was built with: {_REBUILD}")
        return runtime, engine

    def _io_names(self, where: str) -> tuple[list[str], list[str]]:
        """Input and output tensor names, in engine order; segedge models have exactly one input."""
        trt, eng = self.trt, self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise SegedgeError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; segedge runs "
                               "segmentation engines with one input (build it with `segedge engine build`)")
        return inputs, outputs

    # -- specs ------------------------------------------------------------------------------------------------
    def _spec(self, name: str) -> InputSpec:
        shape = tuple(None if int(d) < 0 else int(d) for d in self.engine.get_tensor_shape(name))
        return InputSpec(shape, _np_dtype(self.trt, self.engine.get_tensor_dtype(name)).name)

    def input_spec(self) -> InputSpec:
        return self._spec(self._inputs[0])

    def output_spec(self) -> InputSpec:
        return self._spec(self._outputs[0])

    # -- running ----------------------------------------------------------------------------------------------
    def _output_shapes(self, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        """Bind the input shape (dynamic engines) and return every output's shape for it."""
        name = self._inputs[0]
        if any(int(d) < 0 for d in self.engine.get_tensor_shape(name)) and shape != self._bound:
            if self.context.set_input_shape(name, tuple(shape)) is False:
                raise SegedgeError(f"{self.where} does not accept input shape {tuple(shape)} (outside its "
                                   f"optimization profile); pass frames of the exported size or {_REBUILD}")
            self._bound = tuple(shape)
        out = {n: tuple(int(d) for d in self.context.get_tensor_shape(n)) for n in self._outputs}
        for n, s in out.items():
            if any(d < 0 for d in s):
                raise SegedgeError(f"{self.where}: output {n} has no static shape {s} for input {tuple(shape)}; "
                                   "segedge runs engines whose output shapes follow from the input")
        return out

    def _buffer(self, name: str, nbytes: int) -> Buffer:
        """The buffer pair of tensor `name`, grown to hold `nbytes`, with its device address bound."""
        buf = self._buffers.get(name)
        if buf is None or buf.capacity < nbytes:
            if buf is not None:
                self._mem.free(buf)
                del self._buffers[name]
            buf = self._buffers[name] = self._mem.alloc(max(int(nbytes), 256))
        self.context.set_tensor_address(name, buf.device)
        return buf

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """Pinned copy → async H2D → execute_async_v3 → async D2H on one stream → wait; the first output."""
        with self._lock:
            if self._closed:
                raise SegedgeError(f"this {self.name} backend is closed; load the model again (Segmenter.load)")
            shapes = self._output_shapes(tuple(x.shape))
            inp = self._buffer(self._inputs[0], x.nbytes)
            np.copyto(inp.host[:x.nbytes].view(x.dtype).reshape(x.shape), x)
            outs = []
            for name in self._outputs:
                dtype = _np_dtype(self.trt, self.engine.get_tensor_dtype(name))
                nbytes = int(np.prod(shapes[name], dtype=np.int64)) * dtype.itemsize
                outs.append((self._buffer(name, nbytes), dtype, shapes[name], nbytes))
            self._mem.h2d(inp, x.nbytes)
            if not self.context.execute_async_v3(self._mem.stream_handle):
                raise SegedgeError(f"TensorRT failed to run {self.where} ({self._last_error()}); {_REBUILD}")
            for buf, _, _, nbytes in outs:
                self._mem.d2h(buf, nbytes)
            self._mem.synchronize()
            buf, dtype, shape, nbytes = outs[0]
            return buf.host[:nbytes].view(dtype).reshape(shape).copy()  # the pinned buffer is reused next run

    def synchronize(self) -> None:
        """Wait for the stream (runs already wait for their own results)."""
        if self._mem is not None:
            self._mem.synchronize()

    def close(self) -> None:
        """Free buffers and stream, drop context, engine and runtime (in that order). Idempotent."""
        with self._lock:
            if self._mem is not None:
                try:
                    self._mem.synchronize()
                except SegedgeError:
                    pass  # a failed device still gets its memory back below
                for buf in self._buffers.values():
                    self._mem.free(buf)
                self._mem.close()
            self._buffers.clear()
            self._mem = None
            self.context = None
            self.engine = None
            self.runtime = None
            super().close()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "tensorrt": str(getattr(self.trt, "__version__", "")),
                "memory": self._mem.name if self._mem is not None else None}


__all__ = ["Buffer", "CudaPythonMemory", "MEMORY_PROVIDERS", "TensorRTBackend", "TorchMemory", "check_built_on",
           "open_memory"]
