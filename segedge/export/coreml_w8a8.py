"""coreml-w8a8: int8 weights and activations through coremltools' torch-side quantizer, calibration only.

The module that the FP16 target converts (BatchNorm and the input std folded, image-space input) is put in the
models' export mode (FX-traceable, see `segedge.models.layers`) and handed to
`coremltools.optimize.torch.quantization.LinearQuantizer` with a symmetric W8A8 config (int8 per-channel weights,
uint8 activations with zero point 0 or 128, min/max observers). Its `prepare` traces it with FX and inserts
fake-quantize modules; the prepared model then runs in eval mode over the export's calibration frames (`ctx.frames`,
the same frames as every other INT8 target) with observers on and fake-quant off, so every range comes from float
activations as in the ONNX targets' calibration table; then fake-quant is switched on and the observers frozen, and
`finalize` gives the reference-quantized model (quantize → dequantize around each quantized op) that `ct.convert`
turns into an ML program with quantize / dequantize ops. No training step ever runs.

Float islands are the other INT8 targets' (`segedge.export.quantize.default_keep_float`,
`segedge.export.sensitivity.FAMILY_FLOAT_GROUPS`) mapped to module names: every LayerNorm, the final classifier
conv, and the family's float groups (TopFormer: `tpm.s1`, the stem and the first token-pyramid layers). Softmax
and every Resize stay float as well: coremltools' backend has no quantized pattern for them (nor for GELU).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ExportError, first_line
from ..toolkits.coreml import DEPLOYMENT_TARGETS
from .coreml_convert import PackageModule, quiet_tools

# quantize / dequantize ops on activations (and their int8 constants) need iOS 17 / macOS 14.
ACTIVATION_MIN_TARGET = "iOS17"
CALIBRATION_BATCH = 4  # frames per forward pass while observing: bounds memory at 384×512 and larger
SCHEME = {"weights": "int8, symmetric, per output channel", "activations": "uint8, symmetric (zero point 0 or 128), "
          "per tensor", "observer": "min_max", "tool": "coremltools.optimize.torch LinearQuantizer (calibration "
          "only, no training)"}


def check_w8a8_target(target: str) -> None:
    """Quantized activations need ACTIVATION_MIN_TARGET or newer: one line, before any work."""
    if DEPLOYMENT_TARGETS[target] < DEPLOYMENT_TARGETS[ACTIVATION_MIN_TARGET]:
        raise ExportError(f"coreml-w8a8 (quantize / dequantize ops on activations) needs {ACTIVATION_MIN_TARGET} / "
                          f"macOS14 or newer, but --coreml-target is {target}; pass --coreml-target iOS17 or newer")


class LabelsOutput(nn.Module):
    """Argmax on top of a logits module: the `--io raw` package's int32 labels output."""

    def __init__(self, logits: nn.Module) -> None:
        super().__init__()
        self.inner = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).argmax(1).to(torch.int32)


# -- which modules stay float ---------------------------------------------------------------------------------------
def _group_of(name: str, family: str, model_name: str | None) -> str | None:
    """The sensitivity group of a model module path, as the ONNX targets name it."""
    from .sensitivity import module_group

    return module_group(name, family, model_name)


def float_modules(module: PackageModule, family: str, model_name: str | None) -> dict[str, str]:
    """Module name (in `module`) → why it stays float: LayerNorms, the final classifier conv, family float groups."""
    from .sensitivity import FAMILY_FLOAT_GROUPS

    groups = set(FAMILY_FLOAT_GROUPS.get(family, ()))
    out: dict[str, str] = {}
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    for name, m in module.named_modules():
        if isinstance(m, nn.LayerNorm):
            out[name] = "LayerNorm"
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and groups:
            group = _group_of(name.removeprefix("model."), family, model_name)
            if group in groups:
                out[name] = f"family default float group {group}"
    if not convs:
        raise ExportError("the model has no convolution: cannot place the W8A8 float islands; use --target "
                          "coreml-int8")
    out[convs[-1]] = "final classifier conv"
    return out


def _config(keep: Sequence[str]) -> Any:
    from coremltools.optimize.torch.quantization import LinearQuantizerConfig, ModuleLinearQuantizerConfig

    cfg = ModuleLinearQuantizerConfig(quantization_scheme="symmetric", weight_dtype="qint8",
                                      activation_dtype="quint8", weight_per_channel=True,
                                      weight_observer="min_max", activation_observer="min_max", milestones=None)
    return LinearQuantizerConfig(global_config=cfg, module_type_configs={nn.LayerNorm: None},
                                 module_name_configs={name: None for name in keep})


# -- calibration ----------------------------------------------------------------------------------------------------
def _check_islands(prepared: nn.Module, keep: Sequence[str]) -> int:
    """Raise when a module meant to stay float got a weight fake-quant; returns how many modules did get one."""
    # fused conv+activation wrappers carry their inner conv's fake-quant too: count the layers themselves
    quantized = {n for n, m in prepared.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight_fake_quant", None) is not None}
    leaked = sorted(n for n in keep if n in quantized)
    if leaked:
        raise ExportError(f"coremltools quantized modules meant to stay float ({', '.join(leaked[:3])}); report "
                          "this as a segedge bug")
    if not quantized:
        raise ExportError("coremltools quantized no layer of the model; report this as a segedge bug")
    return len(quantized)


def calibrate(module: PackageModule, batches: Sequence[torch.Tensor], keep: dict[str, str],
              progress: Callable[[str], None] = lambda s: None) -> tuple[nn.Module, dict[str, Any]]:
    """(finalized W8A8 module returning logits, quantization summary): prepare, observe `batches`, finalize.

    `module` is left untouched; `batches` are image-space N×3×H×W inputs (what the package's ImageType computes)."""
    from coremltools.optimize.torch.quantization import LinearQuantizer
    from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant, enable_observer

    from ..models import set_export_mode

    logits = PackageModule(set_export_mode(copy.deepcopy(module.model)), "BGR" if module.bgr else "RGB",
                           labels=False, upsample=module.upsample).eval()
    start = time.perf_counter()
    try:
        with quiet_tools():
            quantizer = LinearQuantizer(logits, _config(list(keep)))
            prepared = quantizer.prepare(example_inputs=(batches[0][:1],))
    except Exception as e:  # noqa: BLE001 - FX tracing and the quantizer raise many kinds
        raise ExportError(f"coremltools could not prepare the model for W8A8 ({first_line(e, 160)}); use --target "
                          "coreml-int8") from e
    n_quantized = _check_islands(prepared, list(keep))
    prepared.eval()  # no training: BatchNorm is folded, dropout off; observers still record in eval mode
    prepared.apply(enable_observer)
    prepared.apply(disable_fake_quant)  # ranges from float activations, as the ONNX calibration table
    progress(f"calibrating W8A8 activations on {sum(len(b) for b in batches)} frames")
    with torch.no_grad():
        for batch in batches:
            prepared(batch)
    prepared.apply(disable_observer)
    prepared.apply(enable_fake_quant)
    with quiet_tools():
        finalized = quantizer.finalize(prepared)
    summary = {**SCHEME, "quantized_layers": n_quantized,
               "kept_float": [{"module": n, "reason": r} for n, r in keep.items()],
               "kept_float_by_backend": "Softmax, Resize (interpolate), GELU: no quantized pattern in coremltools",
               "calibration_seconds": round(time.perf_counter() - start, 2)}
    return finalized.eval(), summary


def image_batches(images: Sequence[torch.Tensor], size: int = CALIBRATION_BATCH) -> list[torch.Tensor]:
    """Image-space 1×3×H×W tensors → batches of up to `size` frames."""
    return [torch.cat(list(images[i:i + size])) for i in range(0, len(images), size)]
