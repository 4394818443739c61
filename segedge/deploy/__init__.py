"""Serving configs generated from an export folder's contract: DeepStream `nvinfer` and Triton model repositories.

`segedge deploy deepstream` (`deepstream.write_deepstream`) writes the `[property]` INI that gst-nvinfer reads, a
labels file and the graph nvinfer should build its engine from; nvinfer's pre-processing is one scalar scale and a
per-channel offset, so a per-channel std is folded into the first convolution (`fold.py`) and the folded graph is
proved equal to the original on real frames with ONNX Runtime. `segedge deploy triton` (`triton.write_triton`)
writes `<repo>/<name>/config.pbtxt` and `<repo>/<name>/1/model.<ext>` for the ONNX Runtime, OpenVINO or TensorRT
backend. Both read the export folder through `source.resolve_artifact`, which says in one line why a target cannot
be deployed (unknown, artifact missing, TensorRT engine not built yet).
"""

from __future__ import annotations

__all__ = ["deepstream", "fold", "source", "triton"]
