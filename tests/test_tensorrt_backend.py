"""The TensorRT backend: engine I/O through the name-based tensor API, CUDA memory through cuda-python, one stream,
idempotent close, the lock, deserialize failures and `built_on` refusals as one line.

TensorRT and CUDA are absent here, so the dispatch logic runs against fakes injected into sys.modules: a fake
`tensorrt` whose "engine" computes its output with ONNX Runtime from a real tiny ONNX (so results are real
numbers), and a fake `cuda.bindings.runtime` whose "device" memory is host memory (copies are real memmoves). The
real path is covered by the `gpu` tests at the end, skipped here with the reason. test_engine_build.py reuses the
fakes.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segedge.errors import SegedgeError

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"


# -- a tiny real ONNX -----------------------------------------------------------------------------------------------
def tiny_onnx(path: Path, classes: int = 4, size: int = 16, dynamic_batch: bool = False, labels: bool = False) -> Path:
    """Conv (stride 4) → Softmax: N×3×size×size float → N×classes×size/4×size/4 logits (or uint8 labels)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [classes, 3, 4, 4], rng.normal(0, 0.5, (classes, 3, 4, 4))
                           .astype(np.float32).ravel().tolist())
    n = "N" if dynamic_batch else 1
    nodes = [helper.make_node("Conv", ["input", "W"], ["conv"], name="/head/Conv", strides=[4, 4]),
             helper.make_node("Softmax", ["conv"], ["logits" if not labels else "probs"], name="/head/Softmax", axis=1)]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, classes, size // 4, size // 4])
    if labels:
        nodes += [helper.make_node("ArgMax", ["probs"], ["idx"], name="/post/ArgMax", axis=1, keepdims=0),
                  helper.make_node("Cast", ["idx"], ["labels"], name="/post/Cast", to=TensorProto.UINT8)]
        out = helper.make_tensor_value_info("labels", TensorProto.UINT8, [n, size // 4, size // 4])
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            [n, 3, size, size])], [out], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def onnx_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) of an ONNX file as the fake engine describes them: name, shape (-1 dynamic), dtype."""
    import onnx

    m = onnx.load(str(path))
    kinds = {1: "FLOAT", 2: "UINT8", 6: "INT32", 10: "HALF"}

    def desc(vi: Any) -> dict[str, Any]:
        t = vi.type.tensor_type
        return {"name": vi.name, "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim],
                "dtype": kinds[t.elem_type]}
    return [desc(v) for v in m.graph.input], [desc(v) for v in m.graph.output]


def engine_bytes(onnx_path: Path, **knobs: Any) -> bytes:
    """A fake serialized engine: the magic line and a JSON spec (ONNX path, I/O, knobs such as roll/delay)."""
    inputs, outputs = onnx_io(onnx_path)
    return ENGINE_MAGIC + json.dumps({"onnx": str(onnx_path), "inputs": inputs, "outputs": outputs,
                                      **knobs}).encode()


# -- fake cuda-python -----------------------------------------------------------------------------------------------
class FakeCudart(types.ModuleType):
    """cuda.bindings.runtime with host memory as "device" memory; records copies and live allocations."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    def __init__(self, cc: tuple[int, int] = (8, 7), name: bytes = b"Fake GPU") -> None:
        super().__init__("cuda.bindings.runtime")
        self.live: dict[int, np.ndarray] = {}
        self.copies: list[tuple[str, int]] = []
        self.streams: set[int] = set()
        self.cc, self.gpu_name = cc, name
        ok = self.cudaError_t.cudaSuccess
        self.cudaSetDevice = lambda d: (ok,)
        self.cudaRuntimeGetVersion = lambda: (ok, 12060)
        self.cudaDriverGetVersion = lambda: (ok, 12080)

    def cudaGetDeviceProperties(self, device: int) -> tuple[Any, Any]:  # noqa: N802
        return self.cudaError_t.cudaSuccess, types.SimpleNamespace(name=self.gpu_name + b"\x00\x00",
                                                                   major=self.cc[0], minor=self.cc[1])

    def cudaStreamCreate(self) -> tuple[Any, int]:  # noqa: N802
        self.streams.add(7)
        return self.cudaError_t.cudaSuccess, 7

    def cudaStreamDestroy(self, s: int) -> tuple[Any]:  # noqa: N802
        self.streams.discard(int(s))
        return (self.cudaError_t.cudaSuccess,)

    def _alloc(self, n: int) -> tuple[Any, int]:
        a = np.zeros(n, np.uint8)
        self.live[a.ctypes.data] = a
        return self.cudaError_t.cudaSuccess, a.ctypes.data

    def cudaMalloc(self, n: int) -> tuple[Any, int]:  # noqa: N802
        return self._alloc(n)

    def cudaMallocHost(self, n: int) -> tuple[Any, int]:  # noqa: N802
        return self._alloc(n)

    def cudaFree(self, p: int) -> tuple[Any]:  # noqa: N802
        del self.live[int(p)]
        return (self.cudaError_t.cudaSuccess,)

    cudaFreeHost = cudaFree  # noqa: N815

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: Any, stream: int) -> tuple[Any]:  # noqa: N802
        assert int(stream) in self.streams
        ctypes.memmove(int(dst), int(src), int(n))
        self.copies.append(("h2d" if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else "d2h", int(n)))
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, s: int) -> tuple[Any]:  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)


# -- fake tensorrt --------------------------------------------------------------------------------------------------
class _DType:
    def __init__(self, name: str, np_type: Any) -> None:
        self.name, self.np_type = name, np_type

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


def _from_address(addr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    n = int(np.prod(shape)) * dtype.itemsize
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(addr)).view(dtype).reshape(shape)


class FakeContext:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.bound: tuple[int, ...] | None = None
        self.shape_calls: list[tuple[int, ...]] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shape_calls.append(tuple(shape))
        if shape[0] > self.engine.spec.get("max_batch", 8):
            return False
        self.bound = tuple(shape)
        return True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = int(ptr)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = list(self.engine.get_tensor_shape(name))
        if shape and shape[0] < 0 and self.bound is not None:
            shape[0] = self.bound[0]
        return tuple(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        spec, trt = self.engine.spec, self.engine.trt
        inp = spec["inputs"][0]
        x = _from_address(self.addresses[inp["name"]], self.get_tensor_shape(inp["name"]),
                          np.dtype(trt.nptype(trt.DataType_by_name[inp["dtype"]]))).copy()
        time.sleep(spec.get("delay", 0))  # widens the window a missing lock would let other runs into
        outs = self.engine.session().run(None, {inp["name"]: x})
        for o, y in zip(spec["outputs"], outs):
            y = np.ascontiguousarray(np.roll(y, spec.get("roll", 0), axis=1) if y.ndim == 4 else y)
            ctypes.memmove(self.addresses[o["name"]], y.ctypes.data, y.nbytes)
        self.engine.executions.append(stream_handle)
        return True


class FakeEngine:
    def __init__(self, spec: dict[str, Any], trt: "types.ModuleType") -> None:
        self.spec, self.trt = spec, trt
        self.io = [*spec["inputs"], *spec["outputs"]]
        self.executions: list[int] = []
        self.contexts: list[FakeContext] = []
        self._session = None

    def session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(self.spec["onnx"], providers=["CPUExecutionProvider"])
        return self._session

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i]["name"]

    def _t(self, name: str) -> dict[str, Any]:
        return next(t for t in self.io if t["name"] == name)

    def get_tensor_mode(self, name: str) -> Any:
        mode = self.trt.TensorIOMode
        return mode.INPUT if any(t["name"] == name for t in self.spec["inputs"]) else mode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._t(name)["shape"])

    def get_tensor_dtype(self, name: str) -> Any:
        return self.trt.DataType_by_name[self._t(name)["dtype"]]

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]

    def create_engine_inspector(self) -> Any:
        layers = [{"Name": "{ForeignNode[/head/Conv]}", "LayerType": "DLA"},
                  {"Name": "/head/Softmax", "LayerType": "SoftMax"},
                  {"Name": "Reformatting CopyNode", "LayerType": "Reformat"}]
        return types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps({"Layers": layers}))


def make_fake_trt(version: str = "10.3.0") -> types.ModuleType:
    """A `tensorrt` module with what segedge's backend and build touch."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    dtypes = {"FLOAT": _DType("FLOAT", np.float32), "HALF": _DType("HALF", np.float16),
              "INT32": _DType("INT32", np.int32), "UINT8": _DType("UINT8", np.uint8)}
    trt.DataType_by_name = dtypes
    trt.DataType = types.SimpleNamespace(**dtypes)
    trt.float32, trt.float16, trt.int32, trt.uint8 = dtypes["FLOAT"], dtypes["HALF"], dtypes["INT32"], dtypes["UINT8"]
    trt.nptype = lambda dt: dt.np_type
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="JSON", ONELINE="ONELINE")

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self) -> None:
            pass

    class Runtime:
        def __init__(self, logger: Any) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
            data = bytes(data)
            if not data.startswith(ENGINE_MAGIC):
                self.logger.log(ILogger.Severity.ERROR, "1: [stdArchiveReader.cpp::StdArchiveReader::42] Error Code "
                                "1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.)")
                return None
            return FakeEngine(json.loads(data[len(ENGINE_MAGIC):]), trt)

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    """Installs the fake cuda-python runtime (and hides the older `cuda.cudart` path)."""
    cudart = FakeCudart()
    pkg, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    pkg.bindings, bindings.runtime = bindings, cudart  # type: ignore[attr-defined]
    for name, mod in (("cuda", pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart),
                      ("cuda.cudart", None)):
        monkeypatch.setitem(sys.modules, name, mod)
    return cudart


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Installs the fake tensorrt and makes this host count as having an NVIDIA GPU."""
    import segedge.toolkits.tensorrt as trt_toolkit

    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_toolkit, "cuda_gpu_problem", lambda: None)
    return trt


@pytest.fixture
def engine_file(tmp_path: Path) -> Path:
    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    p = tmp_path / "model.engine"
    p.write_bytes(engine_bytes(onnx_path))
    return p


def _ort(onnx_path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return s.run(None, {"input": x})[0]


# -- here, without TensorRT -----------------------------------------------------------------------------------------
def test_registered_and_refused_without_tensorrt(engine_file: Path) -> None:
    from segedge.runtime.backends import BACKENDS, backend_for_path
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    assert BACKENDS.get("tensorrt") is TensorRTBackend and BACKENDS.get("trt") is TensorRTBackend
    assert TensorRTBackend.suffixes == (".engine", ".plan") and TensorRTBackend.toolkit == "tensorrt"
    if TensorRTBackend.unavailable() is None:
        pytest.skip("TensorRT and a GPU are present: the refusal cannot be observed")
    with pytest.raises(SegedgeError, match="needs the tensorrt backend, which cannot run here") as e:
        backend_for_path(engine_file)
    assert "\n" not in str(e.value)
    with pytest.raises(SegedgeError, match="TensorRT") as e:
        TensorRTBackend.open(engine_file)
    assert "\n" not in str(e.value)


def test_no_memory_provider_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from segedge.runtime.backends import tensorrt as be

    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)  # cuda-python absent
    monkeypatch.setattr(be, "_torch_cuda_ready", lambda: False)  # torch without CUDA, as here
    with pytest.raises(SegedgeError, match="needs cuda-python .* or PyTorch with CUDA"):
        be.open_memory()
    with pytest.raises(SegedgeError, match="cuda-python is not installed"):
        be.open_memory("cuda-python")
    with pytest.raises(SegedgeError, match="not a CUDA memory provider"):
        be.open_memory("opencl")


# -- with the fakes -------------------------------------------------------------------------------------------------
def test_runs_engine_through_name_based_io(fake_trt: Any, fake_cuda: FakeCudart, engine_file: Path) -> None:
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    be = TensorRTBackend.open(engine_file)
    assert be.input_spec().describe() == "float32 1×3×16×16"
    assert be.output_spec().describe() == "float32 1×4×4×4"
    assert be.describe()["memory"] == "cuda-python" and not be.supports_batch
    x = np.random.default_rng(1).normal(size=(1, 3, 16, 16)).astype(np.float32)
    y = be.run(x)
    np.testing.assert_allclose(y, _ort(engine_file.parent / "tiny.onnx", x), rtol=1e-6, atol=1e-6)
    assert fake_cuda.copies == [("h2d", x.nbytes), ("d2h", y.nbytes)]  # one copy each way, on the one stream
    y2 = be.run(x * 2)  # the pinned output buffer is reused: the first result must not change under it
    assert not np.allclose(y, y2)
    np.testing.assert_allclose(y, _ort(engine_file.parent / "tiny.onnx", x), rtol=1e-6, atol=1e-6)
    with pytest.raises(SegedgeError, match="model input must be float32 1×3×16×16"):
        be.run(np.zeros((1, 3, 8, 8), np.float32))
    be.close()


def test_dynamic_batch_rebinds_and_grows_buffers(fake_trt: Any, fake_cuda: FakeCudart, tmp_path: Path) -> None:
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    onnx_path = tiny_onnx(tmp_path / "dyn.onnx", dynamic_batch=True)
    be = TensorRTBackend(engine_bytes(onnx_path, max_batch=4), where="dyn.engine")
    assert be.input_spec().shape == (None, 3, 16, 16) and be.supports_batch
    rng = np.random.default_rng(2)
    for n in (1, 3, 3, 2):
        x = rng.normal(size=(n, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(be.run(x), _ort(onnx_path, x), rtol=1e-6, atol=1e-6)
    assert be.engine.contexts[0].shape_calls == [(1, 3, 16, 16), (3, 3, 16, 16), (2, 3, 16, 16)]  # only on change
    with pytest.raises(SegedgeError, match="outside its optimization profile"):
        be.run(np.zeros((5, 3, 16, 16), np.float32))
    be.close()
    assert fake_cuda.live == {}


def test_close_frees_everything_and_is_idempotent(fake_trt: Any, fake_cuda: FakeCudart, engine_file: Path) -> None:
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    be = TensorRTBackend.open(engine_file)
    be.run(np.zeros((1, 3, 16, 16), np.float32))
    assert len(fake_cuda.live) == 4 and fake_cuda.streams == {7}  # (host + device) × (input, output)
    be.synchronize()
    be.close()
    assert fake_cuda.live == {} and fake_cuda.streams == set() and be.engine is None and be.closed
    be.close()
    with pytest.raises(SegedgeError, match="closed"):
        be.run(np.zeros((1, 3, 16, 16), np.float32))


def test_concurrent_runs_do_not_mix(fake_trt: Any, fake_cuda: FakeCudart, tmp_path: Path) -> None:
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    be = TensorRTBackend(engine_bytes(onnx_path, delay=0.002), where="tiny.engine")
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    want = [_ort(onnx_path, x) for x in inputs]
    bad: list[int] = []

    def worker(k: int) -> None:
        for _ in range(6):
            if not np.allclose(be.run(inputs[k]), want[k], atol=1e-6):
                bad.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == [] and len(be.engine.executions) == 24
    be.close()


def test_deserialize_failure_is_one_line_and_frees(fake_trt: Any, fake_cuda: FakeCudart, tmp_path: Path) -> None:
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    p = tmp_path / "broken.engine"
    p.write_bytes(b"\x00not an engine")
    with pytest.raises(SegedgeError) as e:
        TensorRTBackend.open(p)
    msg = str(e.value)
    assert "\n" not in msg and "cannot load broken.engine" in msg and "magicTagRead" in msg
    assert "segedge engine build" in msg
    assert fake_cuda.live == {} and fake_cuda.streams == set()  # the stream made before the failure is gone too


def _built_folder(tmp_path: Path, engine_file: Path, built_on: dict[str, Any]) -> Path:
    """An export folder whose trt-int8 entry names `engine_file` (copied in) as built on `built_on`."""
    from segedge.contract import Manifest
    from segedge.io import sha256_file

    folder = tmp_path / "export"
    folder.mkdir()
    dst = folder / "model.trt-int8.engine"
    dst.write_bytes(engine_file.read_bytes())
    Manifest.from_dict({
        "num_classes": 4, "input": {"height": 16, "width": 16}, "output": {"stride": 4},
        "targets": {"trt-int8": {"file": dst.name, "precision": "int8", "sha256": sha256_file(dst),
                                 "size_bytes": dst.stat().st_size,
                                 "engine": {"status": "built", "generation": "10", "built_on": built_on}}},
    }).write(folder)
    return folder


@pytest.mark.parametrize("recorded, refused", [
    ({"tensorrt": "10.3.0", "gpu": {"name": "Fake GPU", "compute_capability": "8.7"}}, None),
    ({"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}},
     "compute capability 8.9"),
    ({"tensorrt": "8.5.2.2", "gpu": {"name": "Fake GPU", "compute_capability": "8.7"}}, "TensorRT 8.5.2.2"),
    ({"tensorrt": "10.3.0", "gpu": {"name": "Other GPU", "compute_capability": "8.7"}}, "built for Other GPU"),
])
def test_built_on_mismatch_is_refused(fake_trt: Any, fake_cuda: FakeCudart, engine_file: Path, tmp_path: Path,
                                      recorded: dict[str, Any], refused: str | None) -> None:
    from segedge.runtime import Segmenter
    from segedge.runtime.backends.tensorrt import TensorRTBackend

    folder = _built_folder(tmp_path, engine_file, recorded)
    if refused is None:
        with Segmenter.load(folder, target="trt-int8") as seg:  # the whole runtime path, over the fake engine
            assert seg.backend.name == "tensorrt"
            assert seg.predict(np.full((20, 24, 3), 90, np.uint8)).shape == (20, 24)
        return
    for load in (lambda: TensorRTBackend.open(folder / "model.trt-int8.engine"),
                 lambda: Segmenter.load(folder, target="trt-int8")):
        with pytest.raises(SegedgeError) as e:
            load()
        msg = str(e.value)
        assert refused in msg and "\n" not in msg
        assert f"segedge engine build {folder.as_posix()} --target trt-int8" in msg
    assert fake_cuda.live == {}  # refused before any CUDA memory was taken


# -- the real path (needs TensorRT and an NVIDIA GPU) -------------------------------------------------------------
def _need_real_tensorrt() -> None:
    from segedge.toolkits.tensorrt import build_problem

    why = build_problem()
    if why:
        pytest.skip(f"needs TensorRT, Polygraphy and an NVIDIA GPU: {why}")


@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(tmp_path: Path) -> None:
    _need_real_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath

    from segedge.runtime.backends.tensorrt import TensorRTBackend

    onnx_path = tiny_onnx(tmp_path / "tiny.onnx")
    plan = EngineBytesFromNetwork(NetworkFromOnnxPath(str(onnx_path)), config=CreateConfig())()
    (tmp_path / "tiny.engine").write_bytes(bytes(plan))
    x = np.random.default_rng(4).normal(size=(1, 3, 16, 16)).astype(np.float32)
    with TensorRTBackend.open(tmp_path / "tiny.engine") as be:
        assert be.input_spec().describe() == "float32 1×3×16×16"
        np.testing.assert_allclose(be.run(x), _ort(onnx_path, x), rtol=1e-3, atol=1e-4)
        assert be.describe()["memory"] in ("cuda-python", "torch")
