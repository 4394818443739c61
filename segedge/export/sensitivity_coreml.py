"""INT8 sensitivity of `coreml-w8a8`, measured on its PyTorch fake-quant proxy: one calibration, variants by toggling
fake-quant off.

coremltools' LinearQuantizer is prepared and calibrated once on the export's calibration frames exactly as the
target does (`segedge.export.coreml_w8a8`: same float islands, scheme and observers), but the prepared module is kept
instead of being finalized, so its FakeQuantize modules stay switchable. A variant disables the fake-quant of its
float groups: the weight fake-quants of the group's Conv/Linear layers and the activation fake-quants whose producer
(the FX node before them: a module, else the module its function was traced in) lies in the group. That group then
runs fully in float (weights included, unlike the OpenVINO meter). Groups are `sensitivity.module_group`'s, the
same names as the ONNX targets'; the family's float groups (TopFormer `tpm.s1`) are float in W8A8 already and get
no fake-quant, so they are not groups here. Measured in PyTorch FP32 (no FP16 rounding: the INT8 effect alone)
against the FP32 PackageModule's logits on the same image-space input; no latency (a proxy has none).

`CoreMLW8A8VariantMeter` has VariantMeter's interface, so `sensitivity()`, the report and the plot are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import SegedgeError
from .sensitivity import LabelledSet, Reference, compare_logits, miou_of

PRODUCER_DEPTH = 8  # how far back through shape-only functions a fake-quant's producer is searched


@dataclass(frozen=True)
class _Flavour:
    name: str


def prepared_w8a8(module: Any, batches: Sequence[torch.Tensor], keep: dict[str, str], scheme: str | None = None
                  ) -> nn.Module:
    """What coreml-w8a8 converts, before finalize: the prepared module, observers frozen, fake-quant on."""
    from .coreml_w8a8 import observed

    return observed(module, batches, keep, scheme=scheme)[1]


def _stack_group(node: Any, group: Callable[[str], str | None]) -> str | None:
    """The group of the innermost module a traced function node ran in (its nn_module_stack meta), or None."""
    for entry in reversed(list((node.meta.get("nn_module_stack") or {}).values())):
        path = entry[0] if isinstance(entry, tuple) else str(entry)
        if group(path) is not None:
            return group(path)
    return None


def _producer_group(node: Any, group: Callable[[str], str | None], fq: set[str]) -> str | None:
    """The group of the op a fake-quant node observes: walk back through its first input until one has a group."""
    for _ in range(PRODUCER_DEPTH):
        if node.op == "call_module" and node.target not in fq and group(node.target) is not None:
            return group(node.target)
        if node.op in ("call_function", "call_method") and _stack_group(node, group) is not None:
            return _stack_group(node, group)
        prev = [a for a in node.args if hasattr(a, "op")]
        if not prev:
            return None
        node = prev[0]
    return None


def fake_quant_groups(prepared: nn.Module, family: str, model_name: str | None) -> dict[str, list[str]]:
    """Group → names of the FakeQuantize modules to disable for it (weights of its layers, activations it
    produces; an activation whose producer has no quantized layer — the input, a float group's output — goes with
    its first grouped consumer, so the family's float groups get none and are not groups)."""
    from torch.ao.quantization import FakeQuantizeBase

    from .coreml_w8a8 import package_group

    def group(path: str) -> str | None:
        return package_group(path, family, model_name)

    fq = {n for n, m in prepared.named_modules() if isinstance(m, FakeQuantizeBase)}
    out: dict[str, list[str]] = {}
    for name in sorted(n for n in fq if n.endswith(".weight_fake_quant")):
        g = group(name.rpartition(".")[0])
        if g is not None:
            out.setdefault(g, []).append(name)
    weighted = set(out)
    for node in prepared.graph.nodes:  # type: ignore[union-attr] - a prepared module is an fx.GraphModule
        if node.op != "call_module" or node.target not in fq:
            continue
        g = _producer_group(node.args[0], group, fq) if node.args else None
        if g not in weighted:  # the input, or a float group's output: it quantizes its consumer's input
            g = None
        if g is None:
            g = next((c for u in node.users for c in [_producer_group(u, group, fq)] if c in weighted),
                     None)
        if g is not None:
            out.setdefault(g, []).append(node.target)
    return out


def set_fake_quant(prepared: nn.Module, off: Iterable[str]) -> None:
    """Fake-quant on everywhere except the FakeQuantize modules named `off`."""
    from torch.ao.quantization import disable_fake_quant, enable_fake_quant

    prepared.apply(enable_fake_quant)
    modules = dict(prepared.named_modules())
    for name in off:
        disable_fake_quant(modules[name])


class CoreMLW8A8VariantMeter:
    """VariantMeter's interface over one calibrated coremltools W8A8 module (module docstring)."""

    def __init__(self, float_module: nn.Module, prepared: nn.Module, to_image: Callable[[np.ndarray], torch.Tensor],
                 sets: Sequence[LabelledSet], num_classes: int, family: str, model_name: str | None, scheme: str,
                 progress: Callable[[str], None] | None = None) -> None:
        self.prepared, self.to_image, self.num_classes = prepared, to_image, num_classes
        self.say = progress or (lambda msg: None)
        self.flavour = _Flavour(f"coremltools-w8a8-{scheme}")
        self.latency, self.fp32_latency = False, None
        self.groups = fake_quant_groups(prepared, family, model_name)
        if not self.groups:
            raise SegedgeError("no fake-quant of the W8A8 module maps to a module group: nothing to measure")
        self.ops = {fq: "FakeQuantize" for names in self.groups.values() for fq in names}
        self.sets = {s.name: s for s in sets}
        self.ref = {s.name: Reference(lg, miou_of(lg, s, num_classes)) for s in sets
                    for lg in [self._logits(float_module.logits, s)]}  # type: ignore[attr-defined]
        self._cache: dict[tuple[frozenset[str], str], dict[str, Any]] = {}

    @torch.no_grad()
    def _logits(self, fn: Callable[[torch.Tensor], torch.Tensor], frames: LabelledSet) -> list[np.ndarray]:
        return [fn(self.to_image(x)).numpy().astype(np.float32)[0] for x in frames.inputs]

    def logits(self, float_groups: Iterable[str], set_name: str) -> list[np.ndarray]:
        """The proxy's logits on a set with `float_groups`' fake-quant off."""
        set_fake_quant(self.prepared, (fq for g in float_groups for fq in self.groups[g]))
        return self._logits(self.prepared, self.sets[set_name])

    def measure(self, float_groups: Iterable[str], set_name: str) -> dict[str, Any]:
        """Δ mIoU (points), mIoU, argmax agreement, SQNR with `float_groups`' fake-quant off."""
        key = (frozenset(float_groups), set_name)
        if key not in self._cache:
            frames, ref = self.sets[set_name], self.ref[set_name]
            got = self.logits(key[0], set_name)
            miou = miou_of(got, frames, self.num_classes)
            self._cache[key] = {"miou": miou, "drop_pt": round(100.0 * (ref.miou - miou), 4),
                                **compare_logits(got, ref.logits)}
        return self._cache[key]


def _calibration_frames(folder: Path, manifest: Any) -> list[np.ndarray]:
    """The export's INT8 calibration frames: its table / openvino-int8 record, else the coreml-w8a8 entry's source."""
    from .calibration import load_calibration_frames
    from .sensitivity_openvino import calibration_frames

    entry = manifest.targets.get("coreml-w8a8")
    if "openvino-int8" in manifest.targets or entry is None:
        return calibration_frames(folder, manifest)
    from ..benchmarks.baselines import export_calibration_frames

    frames, why = export_calibration_frames(folder, manifest.to_dict())
    if frames is not None:
        return frames
    cal = entry.calibration or {}
    try:
        return load_calibration_frames(cal.get("source"), cal.get("frames"), int(cal.get("seed") or 0)).frames
    except SegedgeError as e:
        raise SegedgeError(f"cannot re-read the calibration frames of {folder} ({why}; {e}); re-export coreml-w8a8 "
                           "with --calib pointing at a folder or DATASET:ROOT:SPLIT") from e


def coreml_meter(folder: Path, manifest: Any, frames: LabelledSet, make_input: Callable[[np.ndarray], np.ndarray],
                 say: Callable[[str], None], weights: str | None = None) -> CoreMLW8A8VariantMeter:
    """The meter for an export folder: its checkpoint rebuilt as the module coreml-w8a8 converts, calibrated once
    on the export's calibration frames."""
    from ..models import create_model
    from ..runtime.backends.coreml import input_pixels
    from ..tune.existing import export_weights
    from .coreml_convert import pixels_to_image_space, prepare_module
    from .coreml_w8a8 import float_modules, image_batches, scheme_for

    c = manifest.contract
    raw = c.input.io == "raw"
    model = create_model(c.model, weights=export_weights(manifest, weights) or "default").eval()
    cal = [make_input(f) for f in _calibration_frames(folder, manifest)]
    example = torch.from_numpy(np.concatenate(cal[:2])) if not raw else None
    module, image, _ = prepare_module(model, c.input.mean, c.input.std, c.input.color_order, raw,
                                      raw and c.output.stride == 1, example if example is not None
                                      else torch.zeros(1, 3, c.input.height, c.input.width))

    def to_image(x: np.ndarray) -> torch.Tensor:
        return pixels_to_image_space(input_pixels(x, raw, c.input.mean, c.input.std, image.color_layout), image)

    keep = float_modules(module, str(c.family or ""), c.model)
    scheme = scheme_for(module)
    say(f"calibrating W8A8 ({scheme}) on {len(cal)} frames, {len(keep)} modules kept float")
    prepared = prepared_w8a8(module, image_batches([to_image(x) for x in cal]), keep, scheme)
    say("measuring FP32")
    return CoreMLW8A8VariantMeter(module, prepared, to_image, [frames], c.num_classes, str(c.family or ""), c.model,
                                  scheme, progress=say)


__all__ = ["CoreMLW8A8VariantMeter", "coreml_meter", "fake_quant_groups", "prepared_w8a8", "set_fake_quant"]
