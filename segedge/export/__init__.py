"""Export: PyTorch → verified FP32 ONNX → targets (ort-int8, qdq; later TensorRT, CoreML, OpenVINO) + manifest.

Where things live:
- pipeline.py      `export_model(ExportOptions)`: the whole flow (PyTorch → ONNX → targets)
- options.py       ExportOptions / ExportResult (torch-free)
- assemble.py      the torch-free half: model inputs, building targets into the staging folder, the commit
- torch2onnx.py    exporter choice, simplification, checker
- wrappers.py      `--io raw`: pre/post-processing baked into the graph
- verify.py        ONNX vs PyTorch (max |Δ|, argmax agreement, mIoU with --val)
- calibration.py   INT8 calibration: frame sources, data reader, cached calibration table
- quantize.py      ONNX Runtime QDQ quantization flavours, nodes kept float
- qdq_rules.py     TensorRT Q/DQ rule validator
- manifest.py      manifest.json and ONNX metadata_props
- targets/         one module per target, registered by name
"""

from __future__ import annotations

from typing import Any

__all__ = ["ExportOptions", "ExportResult", "default_out_dir", "export_model"]


def __getattr__(name: str) -> Any:
    # Lazy: the runtime reads manifests through segedge.export.manifest without importing torch.
    if name in ("ExportOptions", "ExportResult"):  # torch-free: a device can describe and tune an export
        from . import options

        return getattr(options, name)
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
