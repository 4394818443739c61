"""INT8 sensitivity of `openvino-int8` (NNCF): one NNCF run, then variants by bypassing its FakeQuantize ops.

NNCF's post-training quantization inserts FakeQuantize ops on activations (weights are stored int8 with a
dequantizing Multiply); OpenVINO runs a weighted op in INT8 exactly when its input passes through one. So instead of
re-running NNCF for every configuration (tens of seconds each for B0), the quantized ov.Model is built once with the
target's settings and each variant is a clone in which the FakeQuantize ops of the float groups are bypassed (their
output replaced by their input): that group's ops then run in float. Its weights keep their int8 rounding (per-channel
weight-only error, far below the activation error this measures), which the report says. Each FakeQuantize belongs
to the group of the op it feeds (a weighted op first), mapped through the ONNX node names OpenVINO keeps
(`<onnx name>` or `<onnx name>/WithoutBiases`) to the same groups as the ONNX targets (sensitivity.node_groups).

`OpenVINOVariantMeter` has VariantMeter's interface, so `sensitivity()`, the report and the plot are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import SegedgeError
from .sensitivity import LabelledSet, Reference, compare_logits, miou_of, node_groups

WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")


@dataclass(frozen=True)
class _Flavour:
    name: str


def _onnx_name(friendly: str, known: set[str]) -> str | None:
    """The ONNX node an OpenVINO op came from: its name, or a prefix of it at a '/' boundary."""
    name = friendly
    while name:
        if name in known:
            return name
        if "/" not in name:
            return None
        name = name.rsplit("/", 1)[0]
    return None


def fake_quantize_groups(qmodel: Any, onnx_model: Any, family: str, group_by: str, model_name: str | None
                         ) -> dict[str, list[str]]:
    """Group → friendly names of the FakeQuantize ops feeding it (a weighted consumer decides, else the first)."""
    nodes = list(onnx_model.graph.node)
    known = {n.name for n in nodes}
    group_of = {n: g for g, names in node_groups(onnx_model, family, group_by, nodes, model_name).items() for n in names}
    out: dict[str, list[str]] = {}
    for op in qmodel.get_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        consumers = sorted((i.get_node() for i in op.output(0).get_target_inputs()),
                           key=lambda c: c.get_type_name() not in WEIGHTED)
        for c in consumers:
            onnx_name = _onnx_name(c.get_friendly_name(), known)
            if onnx_name in group_of:
                out.setdefault(group_of[onnx_name], []).append(op.get_friendly_name())
                break
    return out


def bypassed(qmodel: Any, names: Iterable[str]) -> Any:
    """A clone of `qmodel` with the FakeQuantize ops named `names` bypassed (output replaced by input)."""
    clone = qmodel.clone()
    wanted = set(names)
    for op in clone.get_ops():
        if op.get_type_name() == "FakeQuantize" and op.get_friendly_name() in wanted:
            op.output(0).replace(op.input_value(0))
    return clone


class OpenVINOVariantMeter:
    """VariantMeter's interface over one NNCF-quantized ov.Model (module docstring); measured with OpenVINO on CPU
    at `hint` (f32 by default: the INT8 effect alone) and `threads`."""

    def __init__(self, fp32_model: Any, qmodel: Any, onnx_model: Any, settings: dict[str, Any],
                 sets: Sequence[LabelledSet], num_classes: int, family: str, group_by: str = "block",
                 model_name: str | None = None, threads: int = 1, hint: str = "f32", latency: bool = True,
                 progress: Callable[[str], None] | None = None) -> None:
        self.qmodel, self.threads, self.hint, self.num_classes, self.latency = qmodel, threads, hint, num_classes, \
            latency
        self.say = progress or (lambda msg: None)
        self.flavour = _Flavour("nncf-" + settings["preset"] + (f"-{settings['model_type']}"
                                                                if settings.get("model_type") else ""))
        self.groups = fake_quantize_groups(qmodel, onnx_model, family, group_by, model_name)
        if not self.groups:
            raise SegedgeError("no FakeQuantize op of the NNCF model maps to a node group: nothing to measure")
        self.ops = {fq: "FakeQuantize" for names in self.groups.values() for fq in names}
        self.sets = {s.name: s for s in sets}
        fp32 = self._backend(fp32_model)
        self.ref = {s.name: Reference(lg, miou_of(lg, s, num_classes)) for s in sets
                    for lg in [self._logits(fp32, s)]}
        self.fp32_latency = self._latency_of(fp32, sets[0].inputs[0]) if latency else None
        self._cache: dict[tuple[frozenset[str], str], dict[str, Any]] = {}
        self._lat: dict[frozenset[str], float] = {}

    def _backend(self, model: Any) -> Any:
        from ..runtime.backends.openvino import OpenVINOBackend

        return OpenVINOBackend(model, threads=self.threads, precision=self.hint)

    @staticmethod
    def _logits(backend: Any, frames: LabelledSet) -> list[np.ndarray]:
        return [np.asarray(backend.run(x), np.float32)[0] for x in frames.inputs]

    @staticmethod
    def _latency_of(backend: Any, x: np.ndarray) -> float:
        from .sensitivity import median_ms

        return median_ms(lambda: backend.run(x))

    def measure(self, float_groups: Iterable[str], set_name: str) -> dict[str, Any]:
        """Δ mIoU (points), mIoU, argmax agreement, SQNR (+ latency) with `float_groups`' FakeQuantize bypassed."""
        key = (frozenset(float_groups), set_name)
        if key not in self._cache:
            be = self._backend(bypassed(self.qmodel, (fq for g in key[0] for fq in self.groups[g])))
            frames, ref = self.sets[set_name], self.ref[set_name]
            got = self._logits(be, frames)
            miou = miou_of(got, frames, self.num_classes)
            res = {"miou": miou, "drop_pt": round(100.0 * (ref.miou - miou), 4), **compare_logits(got, ref.logits)}
            if self.latency:
                if key[0] not in self._lat:
                    self._lat[key[0]] = self._latency_of(be, frames.inputs[0])
                res["latency_ms"] = round(self._lat[key[0]], 3)
            be.close()
            self._cache[key] = res
        return self._cache[key]


def calibration_frames(folder: Path, manifest: Any) -> list[np.ndarray]:
    """The frames the export's INT8 targets calibrated on: its calibration table's files (checked by sha256), else
    the openvino-int8 entry's recorded source re-read with its count and seed."""
    from ..benchmarks.baselines import export_calibration_frames
    from .calibration import load_calibration_frames

    frames, why = export_calibration_frames(folder, manifest.to_dict())
    if frames is not None:
        return frames
    cal = manifest.targets["openvino-int8"].calibration or {}
    try:
        return load_calibration_frames(cal.get("source"), cal.get("count"), int(cal.get("seed") or 0)).frames
    except SegedgeError as e:
        raise SegedgeError(f"cannot re-read the calibration frames of {folder} ({why}; {e}); re-export openvino-int8 "
                           "with --calib pointing at a folder or DATASET:ROOT:SPLIT") from e


def openvino_meter(folder: Path, manifest: Any, fp32_onnx: Any, frames: LabelledSet, group_by: str, threads: int,
                   make_input: Callable[[np.ndarray], np.ndarray], say: Callable[[str], None]) -> OpenVINOVariantMeter:
    """The meter for an export folder's openvino-int8: NNCF re-run with the entry's recorded settings on the same
    calibration frames."""
    import nncf
    import openvino as ov

    from .targets.openvino_int8 import nncf_kwargs, nncf_output_to_stderr

    entry = manifest.targets.get("openvino-int8")
    if entry is None:
        raise SegedgeError(f"{folder} has no openvino-int8 target: export it first (segedge export --target "
                           "openvino-int8 --calib …)")
    q = entry.quantization or {}
    settings = {"preset": q.get("preset", "performance"), "model_type": q.get("model_type"),
                "ignored_patterns": list(q.get("ignored_patterns") or []),
                "ignored_names": list(q.get("ignored_names") or [])}
    inputs = [make_input(f) for f in calibration_frames(folder, manifest)]
    fp32 = ov.convert_model(str(folder / manifest.targets["onnx"].file))
    say(f"quantizing with NNCF ({settings['preset']}) on {len(inputs)} frames")
    with nncf_output_to_stderr():
        qmodel = nncf.quantize(fp32.clone(), nncf.Dataset(inputs), **nncf_kwargs(settings, len(inputs)))
    c = manifest.contract
    say("measuring FP32")
    return OpenVINOVariantMeter(fp32, qmodel, fp32_onnx, settings, [frames], c.num_classes, str(c.family or ""),
                                group_by, c.model, threads=threads, progress=say)


__all__ = ["OpenVINOVariantMeter", "bypassed", "calibration_frames", "fake_quantize_groups", "openvino_meter"]
