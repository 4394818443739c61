"""What a saved .mlpackage holds, read back from its spec (the ML program's ops), and the checks an export demands.

`inspect_package` reads the package as a device would receive it (no in-memory program): op histogram, constexpr
(compressed-weight) ops, quantize / dequantize ops (quantized activations), the spec version and the ops newer than
the deployment target, inputs / outputs with their types, and the user metadata keys. `check_package` turns what
must hold into one-line errors: compressed weights present exactly when asked for, quantize / dequantize ops
exactly for W8A8, no op the deployment target cannot run, an image input, an FP32 logits or int32 labels output of
the contract's size, and the segedge contract in the metadata.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..contract import decode_metadata, describes_model
from ..errors import ExportError
from ..toolkits.coreml import DEPLOYMENT_TARGETS, METADATA_PREFIX, coremltools

CONSTEXPR_PREFIX = "constexpr_"
TOP_OPS = 10  # ops listed in the manifest summary
ACTIVATION_QUANT_OPS = ("quantize", "dequantize")  # MIL ops (iOS17+) of a W8A8 program's activations


def _ops(block: Any) -> list[Any]:
    """Every operation of a MIL proto block, nested blocks included."""
    out = []
    for op in block.operations:
        out.append(op)
        for inner in op.blocks:
            out.extend(_ops(inner))
    return out


def _first_version() -> dict[str, int]:
    """op type → the first Core ML specification version (AvailableTarget value) that defines it."""
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry

    return {name: min(int(v.value) for v in by_version) for name, by_version in SSAOpRegistry.core_ops.items()
            if by_version}


def _feature(f: Any) -> dict[str, Any]:
    """An input / output description: name, kind, shape, type."""
    kind = f.type.WhichOneof("Type")
    if kind == "imageType":
        t = f.type.imageType
        color = type(t).ColorSpace.Name(t.colorSpace)
        return {"name": f.name, "kind": "image", "shape": [int(t.height), int(t.width)], "type": color}
    if kind == "multiArrayType":
        t = f.type.multiArrayType
        return {"name": f.name, "kind": "tensor", "shape": [int(d) for d in t.shape],
                "type": type(t).ArrayDataType.Name(t.dataType).lower()}
    return {"name": f.name, "kind": str(kind)}


def inspect_package(path: str | Path, target: str) -> dict[str, Any]:
    """The package's ML program and interface as saved (see module docstring)."""
    ct = coremltools()
    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise ExportError(f"{Path(path).name} is not an ML program; re-export it")
    ops, opsets = [], []
    for fn in spec.mlProgram.functions.values():
        opsets.append(fn.opset)
        ops.extend(_ops(fn.block_specializations[fn.opset]))
    hist = Counter(op.type for op in ops)
    first = _first_version()
    limit = DEPLOYMENT_TARGETS[target]
    too_new = sorted({t for t in hist if first.get(t, 0) > limit})
    user = dict(spec.description.metadata.userDefined)
    meta = decode_metadata({k: v for k, v in user.items() if not k.startswith(METADATA_PREFIX)})
    return {
        "spec_version": int(spec.specificationVersion), "deployment_target": target, "opsets": sorted(set(opsets)),
        "op_histogram": dict(hist.most_common()), "op_count": sum(hist.values()),
        "constexpr_ops": {t: n for t, n in hist.items() if t.startswith(CONSTEXPR_PREFIX)},
        "activation_quant_ops": {t: hist[t] for t in ACTIVATION_QUANT_OPS if hist.get(t)},
        "ops_newer_than_target": too_new,
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
        "metadata_keys": sorted(meta), "contract_in_metadata": describes_model(meta),
    }


def check_package(report: dict[str, Any], compressed: str | None, output: dict[str, Any],
                  activations: bool = False) -> None:
    """Raise one line unless the package is what the target promised.

    compressed: None (FP16 weights: no constexpr op), or the constexpr op type the weights must use
    (e.g. 'constexpr_affine_dequantize', 'constexpr_lut_to_dense'); output: {name, kind, dtype, shape};
    activations: quantized activations (W8A8) — quantize and dequantize ops must be there, else must not."""
    name = f"the {report['deployment_target']} package"
    q = report["activation_quant_ops"]
    if activations and not (q.get("quantize") and q.get("dequantize")):
        raise ExportError(f"{name} should quantize its activations but has no quantize/dequantize op pair ({q}); the "
                          "activations were not quantized")
    if not activations and q:
        raise ExportError(f"{name} should compute on float activations but has {q}")
    if report["ops_newer_than_target"]:
        raise ExportError(f"{name} uses op(s) {', '.join(report['ops_newer_than_target'])} that "
                          f"{report['deployment_target']} cannot run; pass a newer --coreml-target")
    if report["spec_version"] > DEPLOYMENT_TARGETS[report["deployment_target"]]:
        raise ExportError(f"{name} has specification version {report['spec_version']}, newer than the target allows; "
                          "pass a newer --coreml-target")
    found = report["constexpr_ops"]
    if compressed is None and found:
        raise ExportError(f"{name} should hold FP16 weights but has compressed-weight ops {sorted(found)}")
    if compressed is not None and not found.get(compressed):
        raise ExportError(f"{name} should hold compressed weights ({compressed}) but has none; the weights were not "
                          "compressed")
    inputs, outputs = report["inputs"], report["outputs"]
    if len(inputs) != 1 or inputs[0]["kind"] != "image":
        raise ExportError(f"{name} should take one image input, it takes {inputs}")
    want = {"name": output["name"], "kind": "tensor", "shape": list(output["shape"]), "type": output["dtype"]}
    if outputs != [want]:
        raise ExportError(f"{name} should return {want}, it returns {outputs}")
    if not report["contract_in_metadata"]:
        raise ExportError(f"{name} carries no segedge contract in its user metadata")


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's view of an inspection: counts, the most frequent ops, compressed-weight ops, I/O."""
    hist = report["op_histogram"]
    return {"op_count": report["op_count"], "const_ops": hist.get("const", 0),
            "top_ops": dict(list((k, v) for k, v in hist.items() if k != "const")[:TOP_OPS]),
            "constexpr_ops": report["constexpr_ops"], "activation_quant_ops": report["activation_quant_ops"],
            "spec_version": report["spec_version"],
            "opsets": report["opsets"], "ops_newer_than_target": report["ops_newer_than_target"],
            "inputs": report["inputs"], "outputs": report["outputs"]}
