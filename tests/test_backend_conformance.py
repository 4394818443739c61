"""Backend conformance: every registered runtime backend, present and future, passes the same checks.

Open, input spec, run (shape, dtype), batch behaviour, describe, synchronize, close (and the context manager),
bad input as one line, and concurrent calls from several threads giving exactly the single-thread results. A backend
registered without an artifact maker below fails `test_every_backend_has_a_conformance_artifact`: a new backend
must join this suite (TensorRT under the `gpu` marker, CoreML under `mac`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch

from segedge.errors import SegedgeError
from segedge.export import ExportOptions, export_model
from segedge.models import create_model, save_checkpoint
from segedge.runtime import Segmenter
from segedge.runtime.backends import Backend, get_backend, list_backends

CLASSES = 5
SIZE = (128, 128)
MODEL = "topformer-t"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export with every CPU target this machine can build (ONNX always, OpenVINO when installed)."""
    tmp = tmp_path_factory.mktemp("conformance")
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model(MODEL, num_classes=CLASSES), tmp / "model.safetensors",
                           {"model": MODEL, "num_classes": CLASSES, "input_size": list(SIZE)})
    targets = "onnx" + (",openvino" if get_backend_or_none("openvino") else "")
    export_model(ExportOptions(MODEL, weights=ckpt, targets=targets, input_size=SIZE, verify_frames=1,
                               dynamic_batch=True, out=tmp / "export"))
    return tmp


def get_backend_or_none(name: str) -> type[Backend] | None:
    try:
        return get_backend(name)
    except SegedgeError:
        return None


# backend name → (marker or None, path of its artifact inside the conformance folder)
ARTIFACTS: dict[str, tuple[str | None, Callable[[Path], Path]]] = {
    "onnxruntime": (None, lambda tmp: tmp / "export" / "model.onnx"),
    "openvino": (None, lambda tmp: tmp / "export" / "model.xml"),
    "torch": (None, lambda tmp: tmp / "model.safetensors"),
    "tensorrt": ("gpu", lambda tmp: tmp / "export" / "model.trt-fp16.engine"),
    "coreml": ("mac", lambda tmp: tmp / "export" / "model.fp16.mlpackage"),
}
NAMES = sorted({b.name for b in list_backends()} | {"onnxruntime", "openvino", "torch"})


def test_every_backend_has_a_conformance_artifact() -> None:
    missing = [b.name for b in list_backends() if b.name not in ARTIFACTS]
    assert not missing, f"backends without a conformance artifact in this suite: {missing}"


@pytest.fixture(params=NAMES)
def seg(request: pytest.FixtureRequest, folder: Path) -> Segmenter:
    name = request.param
    marker, where = ARTIFACTS[name]
    if marker == "gpu":
        pytest.skip(f"{name}: needs an NVIDIA GPU with TensorRT (gpu marker); none here")
    if marker == "mac":
        pytest.skip(f"{name}: needs macOS for CoreML prediction (mac marker)")
    cls = get_backend_or_none(name)
    if cls is None:
        pytest.skip(f"{name}: {get_backend_unavailable(name)}")
    s = Segmenter.load(where(folder), backend=name, threads=1, model=MODEL)
    yield s
    s.close()


def get_backend_unavailable(name: str) -> str:
    from segedge.runtime.backends import BACKENDS

    return BACKENDS.get(name).unavailable() or "unavailable"


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [cv2.GaussianBlur(rng.integers(0, 256, (90 + 7 * i, 120, 3), dtype=np.uint8), (7, 7), 0)
            for i in range(n)]


def test_open_spec_run_and_describe(seg: Segmenter) -> None:
    be = seg.backend
    spec = be.input_spec()
    assert len(spec.shape) == 4 and spec.dtype == seg.info.contract.input.dtype
    x = seg.prepare(_frames(1)[0])
    out = be.run(x)
    h, w = seg.input_size
    stride = seg.info.output_stride
    assert out.shape == (1, CLASSES, h // stride, w // stride) and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert be.describe()["backend"] == be.name
    assert be.synchronize() is None


def test_batch_behaviour(seg: Segmenter) -> None:
    frames = _frames(3)
    singles = [seg.predict(f) for f in frames]
    batched = seg.predict_batch(frames)  # one batched run, or frame by frame for static-batch graphs
    assert all(np.array_equal(a, b) for a, b in zip(singles, batched))
    if seg.backend.supports_batch:
        x = np.concatenate([seg.prepare(f) for f in frames[:2]])
        y = seg.backend.run(x)
        assert y.shape[0] == 2
        np.testing.assert_allclose(y[1], seg.backend.run(x[1:2])[0], atol=1e-4)


@pytest.mark.parametrize("bad", ["not an array", np.zeros((1, 3, 128, 128), np.float64),
                                 np.zeros((1, 3, 64, 64, 1), np.float32), np.zeros((1, 128, 128, 3), np.uint8)])
def test_bad_input_is_one_line(seg: Segmenter, bad: object) -> None:
    if isinstance(bad, np.ndarray) and bad.dtype == np.uint8 and (seg.info.io == "raw" or
                                                                  getattr(seg.backend, "accepts_frames", False)):
        pytest.skip("uint8 NHWC frames are this model's input (raw io, or OpenVINO normalising them in the graph)")
    with pytest.raises(SegedgeError) as e:
        seg.backend.run(bad)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and "model input must be" in str(e.value)


def test_close_and_context_manager(folder: Path, seg: Segmenter) -> None:
    name = seg.backend.name
    with Segmenter.load(ARTIFACTS[name][1](folder), backend=name, model=MODEL) as s:
        s.predict(_frames(1)[0])
        be = s.backend
    assert be.closed
    with pytest.raises(SegedgeError, match="closed"):
        be.run(np.zeros(tuple(d or 1 for d in be.input_spec().shape), be.input_spec().dtype))
    be.close()  # idempotent


def test_concurrent_calls_match_single_thread(seg: Segmenter) -> None:
    """4 threads on one Segmenter: every result equals the single-thread result for that frame (OpenVINO's shared
    infer request once returned other calls' label maps without error)."""
    frames = _frames(6)
    expected = [seg.predict(f) for f in frames]
    errors: list[str] = []
    mismatches: list[int] = []

    def worker(k: int) -> None:
        try:
            for it in range(12):
                i = (k + it) % len(frames)
                if not np.array_equal(seg.predict(frames[i]), expected[i]):
                    mismatches.append(i)
        except Exception as e:  # noqa: BLE001 - collected and reported by the assertion below
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not mismatches, (errors[:3], len(mismatches))


def test_onnxruntime_spinning_option_keeps_the_outputs(folder: Path) -> None:
    """spinning=False (idle intra-op threads sleep: for pipelines sharing the CPU) changes scheduling, not results."""
    frame = _frames(1)[0]
    with Segmenter.load(folder / "export", target="onnx", threads=2) as a, \
            Segmenter.load(folder / "export", target="onnx", threads=2, spinning=False) as b:
        assert a.backend.describe()["spinning"] is None and b.backend.describe()["spinning"] is False
        assert np.array_equal(a.logits(frame), b.logits(frame))
