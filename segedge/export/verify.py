"""Check an exported graph against PyTorch on real frames: max |Δlogits| and argmax agreement, plus optional mIoU.

For FP32 graphs these are pass/fail (`TOLERANCE`, module-level so tests can tighten it); for INT8 graphs they are
recorded in the manifest, not enforced: how much INT8 may move the masks is the user's call.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ExportError

# FP32 ONNX vs PyTorch: |Δ| ≤ atol + rtol·max|logit| and ≥ min_agreement of pixels with the same argmax.
TOLERANCE = {"atol": 1e-3, "rtol": 1e-4, "min_agreement": 0.999}


def ort_session(model: Any, threads: int | None = None, optimize: bool = True) -> Any:
    """A CPU InferenceSession from a ModelProto, serialized bytes or a path."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else (
        model if isinstance(model, (bytes, bytearray)) else str(model))
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def logits_tensor(model: Any) -> str:
    """Name of the float logits tensor: the graph output, or the ArgMax input for a labels-out (raw io) graph."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        if out in node.output and node.op_type == "Cast":
            out = node.input[0]
            break
    for node in model.graph.node:
        if out in node.output and node.op_type == "ArgMax":
            return node.input[0]
    return model.graph.output[0].name


def expose_logits(model: Any) -> tuple[Any, str]:
    """A copy of `model` that also outputs its logits tensor (for labels-out graphs), and that tensor's name."""
    import onnx

    name = logits_tensor(model)
    if name == model.graph.output[0].name:
        return model, name
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return m, name


def compare_to_torch(model: Any, batches: Sequence[np.ndarray],
                     reference: Callable[[np.ndarray], np.ndarray] | Sequence[np.ndarray],
                     session: Any = None) -> dict[str, Any]:
    """Run `model` (ONNX) on each input batch and compare with `reference` (torch logits: a function of the batch,
    or the precomputed outputs in the same order); Δ and argmax agreement over all pixels."""
    m, name = expose_logits(model)
    sess = session or ort_session(m)
    input_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    labels_out = name != out_names[0]

    def run(x: np.ndarray) -> Any:
        outs = sess.run(None, {input_name: x})
        got = outs[out_names.index(name)]
        return (outs[0], got) if labels_out else got

    return compare_run_to_torch(run, batches, reference)


def compare_run_to_torch(run: Callable[[np.ndarray], Any], batches: Sequence[np.ndarray],
                         reference: Callable[[np.ndarray], np.ndarray] | Sequence[np.ndarray]) -> dict[str, Any]:
    """`compare_to_torch` for any runtime: `run(batch)` returns the logits, or `(first_output, logits)` for a
    labels-out (raw io) model, whose label output must then match PyTorch's argmax too."""
    max_abs = abs_sum = 0.0
    n_values = agree = total = 0
    label_agree = 0
    labels_out = False
    max_ref = 0.0
    shapes = []
    for k, x in enumerate(batches):
        ref = np.asarray(reference(x) if callable(reference) else reference[k], np.float32)
        res = run(x)
        labels = None
        if isinstance(res, tuple):
            labels, got = res
            labels_out = True
        else:
            got = res
        got = np.asarray(got)
        if got.shape != ref.shape:
            raise ExportError(f"exported graph gives logits of shape {got.shape} but PyTorch gives {ref.shape} "
                              f"for input {x.shape}")
        d = np.abs(got.astype(np.float32) - ref)
        max_abs = max(max_abs, float(d.max()))
        abs_sum += float(d.sum(dtype=np.float64))
        n_values += d.size
        max_ref = max(max_ref, float(np.abs(ref).max()))
        ref_lab = ref.argmax(1)
        agree += int((got.argmax(1) == ref_lab).sum())
        total += ref_lab.size
        if labels is not None:  # labels-out graph: its own output must match too
            label_agree += int((np.asarray(labels).astype(np.int64) == ref_lab).sum())
        shapes.append(list(x.shape))
    res_: dict[str, Any] = {
        "reference": "pytorch",
        "max_abs_diff": max_abs,
        "mean_abs_diff": abs_sum / max(n_values, 1),
        "max_abs_logit": max_ref,
        "argmax_agreement": agree / max(total, 1),
        "pixels": total,
        "input_shapes": shapes,
    }
    if labels_out:
        res_["label_output_agreement"] = label_agree / max(total, 1)
    return res_


def check_fp32(result: dict[str, Any], what: str) -> None:
    """Raise ExportError when an FP32 graph strays from PyTorch beyond `TOLERANCE`."""
    tol = TOLERANCE["atol"] + TOLERANCE["rtol"] * result["max_abs_logit"]
    if result["max_abs_diff"] > tol or result["argmax_agreement"] < TOLERANCE["min_agreement"] or \
            result.get("label_output_agreement", 1.0) < TOLERANCE["min_agreement"]:
        raise ExportError(
            f"{what} does not match PyTorch: max |Δlogits| {result['max_abs_diff']:.3g} (allowed {tol:.3g}), argmax "
            f"agreement {result['argmax_agreement']:.4%} (needed {TOLERANCE['min_agreement']:.2%}); no file was "
            "written: try another --opset or report the model/options")


def evaluate_miou(predict: Callable[[np.ndarray], np.ndarray], pairs: Iterable[tuple[np.ndarray, np.ndarray]],
                  num_classes: int, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """mIoU of `predict` (frame → labels at frame size) over (frame, label) pairs (segedge.evaluation's loop)."""
    from ..evaluation import evaluate_predictors

    def checked() -> Iterable[tuple[np.ndarray, np.ndarray]]:
        for frame, label in pairs:
            if frame.shape[:2] != label.shape[:2]:
                raise ExportError(f"validation label of shape {label.shape} does not match its frame "
                                  f"{frame.shape[:2]}")
            yield frame, label

    res = evaluate_predictors({0: predict}, checked(), num_classes, class_names)
    if res.frames == 0:
        raise ExportError("the --val set yielded no (frame, label) pairs; check the folder layout")
    m = res.metrics[0]
    return {"miou": None if np.isnan(m.miou) else float(m.miou),
            "pixel_acc": None if np.isnan(m.pixel_acc) else float(m.pixel_acc), "frames": res.frames}
