"""Learned QAT activation ranges in an export: `segedge train --qat` saves them in the checkpoint's segedge metadata
(under "qat", see segedge.training.qat); an ONNX INT8 target built from such weights calibrates the fine-tuned FP32
graph as usual (a range for every tensor), then overrides the ranges of the activation inputs of the Conv / MatMul /
Gemm nodes whose module (`sensitivity.node_scopes`) has a learned range. The manifest's calibration entry then says
`method: "qat"`, with the base calibration method and how many ranges were learned and applied.

Ranges are applied only to the target they were learned for: a `qdq` range is a symmetric int8 grid, an `ort-int8`
one an asymmetric uint8 grid, and the weights were tuned against that grid. Another target calibrates as usual and
records why the learned ranges were not used. Torch-free (safetensors' numpy reader for the header).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .calibration import CalibrationTable

QAT_FORMAT = "segedge-qat-ranges/1"  # the same tag segedge.training.qat writes (that module needs torch)
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def read_qat_record(weights: str | Path | None) -> dict[str, Any] | None:
    """The "qat" record in a segedge safetensors checkpoint's metadata, or None (no record, not a segedge file)."""
    if weights is None or Path(weights).suffix != ".safetensors" or not Path(weights).is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("segedge", "{}"))
    except (OSError, ValueError) as e:  # safetensors raises its own error types, subclasses of these
        raise ExportError(f"cannot read the header of {weights}: {e}; pass a segedge checkpoint") from e
    rec = meta.get("qat") if isinstance(meta, dict) else None
    if rec is None:
        return None
    if not isinstance(rec, dict) or rec.get("format") != QAT_FORMAT or not isinstance(rec.get("ranges"), dict):
        raise ExportError(f"{Path(weights).name} carries QAT ranges in an unknown format; re-run segedge train --qat "
                          "with this segedge version")
    return rec


def module_scope(scope: str) -> str:
    """A `node_scopes` scope as its module path: torch.onnx names a Sequential's child `conv.0` under the scope `conv`
    (`/layer1/conv/conv.0/c` → `/layer1/conv/conv/0/c`), while the module is `layer1.conv.0.c`; drop the repeat."""
    prev = None
    while prev != scope:
        prev, scope = scope, re.sub(r"/([^/]+)/\1/(\d+)(?=/|$)", r"/\1/\2", scope)
    return scope


def _activation_input(node: Any, initializers: set[str]) -> str | None:
    """The activation input of a weighted node (the first input that is not an initializer)."""
    return next((i for i in node.input if i and i not in initializers), None)


def learned_input_ranges(model: Any, record: dict[str, Any]) -> tuple[dict[str, list[float]], int]:
    """(tensor → learned range, how many tensors several learned ranges met) for the activation inputs of the
    weighted nodes of `model` (the quant_pre_process'ed FP32 graph) whose module has a learned range. Modules that
    shared an input in PyTorch share its quantizer, so their ranges agree; where two differ, the union is taken."""
    from .sensitivity import node_scopes

    # node_scopes writes module paths '/'-separated, dots too: backbone.block1.0.attn.q → /backbone/block1/0/attn/q
    by_scope = {"/" + path.replace(".", "/"): [float(lo), float(hi)] for path, (lo, hi) in record["ranges"].items()}
    scopes = node_scopes(model)
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[float]] = {}
    merged = 0
    for n in model.graph.node:
        rng = by_scope.get(module_scope(scopes.get(n.name, ""))) if n.op_type in WEIGHTED_OPS else None
        tensor = _activation_input(n, inits) if rng is not None else None
        if tensor is None:
            continue
        if tensor in out and out[tensor] != rng:
            merged += 1
            rng = [min(out[tensor][0], rng[0]), max(out[tensor][1], rng[1])]
        out[tensor] = rng
    return out, merged


def calibration_for(ctx: Any, target: str) -> tuple[CalibrationTable, dict[str, Any]]:
    """(table, manifest calibration entry) for an ONNX INT8 target: the export's table, with the learned ranges of
    a QAT checkpoint (for this target) in place of the calibrated ones on the weighted ops' inputs."""
    key = f"qat_calibration:{target}"
    if key in ctx.cache:
        return ctx.cache[key]
    table, reused = ctx.calibration()
    entry: dict[str, Any] = {**table.summary(), "reused": reused}
    record = read_qat_record(ctx.options.weights)
    if record is not None and record.get("target") != target:
        entry["qat"] = {"applied": False, "learned_for": record.get("target"),
                        "why": f"the ranges were learned for {record.get('target')}, not {target}: calibrated ranges "
                               "used"}
    elif record is not None:
        import onnx

        learned, merged = learned_input_ranges(onnx.load(str(ctx.pre_quant_model())), record)
        table = copy.copy(table)
        table.ranges = {**table.ranges, **{t: r for t, r in learned.items() if t in table.ranges}}
        applied = sum(t in table.ranges for t in learned)
        if applied == 0:
            raise ExportError(f"the QAT ranges in {Path(ctx.options.weights).name} match no Conv/MatMul/Gemm input "
                              "of this graph; export the checkpoint with the model it was trained as")
        ctx.progress(f"applying {applied} learned QAT activation ranges ({target})")
        entry.update(method="qat", base_method=table.method, qat={
            "applied": True, "learned_for": target, "learned_ranges": len(record["ranges"]),
            "tensors_overridden": applied, "tensors_merged": merged, "scheme": record.get("scheme", {}),
            "kept_float_in_training": len(record.get("kept_float", {})),
            # records written before --qat-loss existed were all trained on the labels
            "objective": record.get("objective") or {"loss": "labels"}})
    ctx.cache[key] = (table, entry)
    return table, entry
