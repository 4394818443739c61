"""PyTorch → FP32 ONNX: trace, simplify (onnxsim, else onnxslim), check. The spine every other target starts from.

Exporter choice (measured, the project's toolchain notes): the legacy TorchScript exporter
(`dynamo=False`). It exports B0 in ~1 s against 5-20 s for dynamo, honours the requested opset (dynamo asked for
opset 16 silently emits 18, which TensorRT 8.5 / JetPack 5 cannot read), keeps weights inside the file (dynamo
writes `.onnx.data` unless told otherwise) and does not freeze a dynamic batch to the example's batch of 1. At
opset 17 it emits the fused `LayerNormalization` op (TensorRT's INormalizationLayer, FP16-safe); at opset 16 it
decomposes LayerNorm into ReduceMean/Sub/Pow/Sqrt/Div, the form TensorRT 8.5 parses. ORT vs torch ≤ 3e-7.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any, Iterator

import torch

from ..errors import ExportError, first_line

EXPORTER = "torch.onnx legacy TorchScript exporter (dynamo=False)"
MIN_OPSET, MAX_OPSET = 13, 20  # 13: per-channel Q/DQ; 20: last opset before the dynamo-only Attention op


@contextlib.contextmanager
def tracing_patches() -> Iterator[None]:
    """Model helpers swapped for trace-friendly twins while a dynamic-shape export runs (restored afterwards).

    - `segedge.models.layers.resize` casts the target size with int(), which the TorchScript tracer freezes into
      constants: a dynamic-H/W SegFormer then fails at any other size (Concat dims mismatch). The twin passes the
      traced sizes through.
    - TopFormer's `pyramid_pool` derives its pooling kernels from traced sizes; with a dynamic batch the tracer turns
      them into tensors that avg_pool2d cannot take (export fails on an onnx::Cast). TopFormer's H/W are static by
      design, so the twin freezes the kernels with int().
    Same arithmetic in both cases: the FP32 check against PyTorch still gates the export.
    """
    from ..models import segformer, topformer

    def resize(x: torch.Tensor, size: Any) -> torch.Tensor:
        return torch.nn.functional.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    def pyramid_pool(inputs: list[torch.Tensor], stride: int) -> torch.Tensor:
        h, w = int(inputs[-1].shape[2]), int(inputs[-1].shape[3])
        oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
        pooled = []
        for t in inputs:
            k = (int(t.shape[2]) // oh, int(t.shape[3]) // ow)
            pooled.append(torch.nn.functional.avg_pool2d(t, k, k))
        return torch.cat(pooled, dim=1)

    saved = segformer.resize, topformer.resize, topformer.pyramid_pool
    segformer.resize = topformer.resize = resize
    topformer.pyramid_pool = pyramid_pool
    try:
        yield
    finally:
        segformer.resize, topformer.resize, topformer.pyramid_pool = saved


def export_module(module: torch.nn.Module, example: torch.Tensor, opset: int, input_name: str, output_name: str,
                  dynamic_axes: dict[str, dict[int, str]] | None = None) -> Any:
    """Trace `module` on `example` and return the ONNX ModelProto (weights inline), raising ExportError on failure."""
    import onnx

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} (17 default, 16 for "
                          "TensorRT 8.5 / JetPack 5)")
    buf = io.BytesIO()
    module.eval()
    ctx = tracing_patches() if dynamic_axes else contextlib.nullcontext()
    chatter = io.StringIO()  # the exporter prints the whole TorchScript IR on some failures
    try:
        with ctx, warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(chatter), \
                contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")  # TracerWarnings and the legacy-exporter deprecation notice
            torch.onnx.export(module, (example,), buf, opset_version=opset, dynamo=False, do_constant_folding=True,
                              input_names=[input_name], output_names=[output_name], dynamic_axes=dynamic_axes)
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {first_line(e, 200)}; try the default opset 17 or static "
                          "shapes") from e
    return onnx.load_from_string(buf.getvalue())


def simplify(model: Any) -> tuple[Any, str]:
    """Simplify with onnxsim (checked), falling back to onnxslim, then to the unsimplified graph; returns (model, tool)."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
        if ok:
            return simplified, f"onnxsim {getattr(onnxsim, '__version__', '')}".strip()
    except Exception:  # noqa: BLE001 - any simplifier failure falls through to the next tool
        pass
    try:
        import onnxslim

        return onnxslim.slim(model), f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()
    except Exception:  # noqa: BLE001
        return model, "none (onnxsim and onnxslim both failed)"


def check(model: Any) -> None:
    """onnx.checker with full shape checking; any finding is an ExportError."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise ExportError(f"exported graph fails onnx.checker: {first_line(e, 200)}") from e


def opset_of(model: Any) -> int:
    """The default-domain opset of an ONNX model."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0
