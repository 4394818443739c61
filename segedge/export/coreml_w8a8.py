"""coreml-w8a8: int8 weights and activations through coremltools' torch-side quantizer, calibration only.

The module that the FP16 target converts (BatchNorm and the input std folded, image-space input) is put in the
models' export mode (FX-traceable, see `segedge.models.layers`) and handed to
`coremltools.optimize.torch.quantization.LinearQuantizer` with a W8A8 config (int8 per-channel weights, uint8
per-tensor activations, min/max observers; the affine or symmetric scheme of the family, `FAMILY_SCHEMES`). Its
`prepare` traces it with FX and inserts fake-quantize modules; the prepared model then runs in eval mode over the
export's calibration frames (`ctx.frames`, the same frames as every other INT8 target) with observers on and
fake-quant off, so every range comes from float activations as in the ONNX targets' calibration table; then
fake-quant is switched on and the observers frozen, and `finalize` gives the reference-quantized model (quantize →
dequantize around each quantized op) that `ct.convert` turns into an ML program with quantize / dequantize ops
(iOS 17 / macOS 14). No training step ever runs.

Float islands are the other INT8 targets' (`segedge.export.quantize.default_keep_float`,
`segedge.export.sensitivity.FAMILY_FLOAT_GROUPS`) mapped to module names: every LayerNorm, the final classifier
conv, and the family's float groups (TopFormer: `tpm.s1`, the stem and the first token-pyramid layers) as whole
blocks, activations included. Softmax and every Resize stay float as well: coremltools' backend has no quantized
pattern for them (nor for GELU).

Why this config (issue 14). PyTorch fake-quant proxy, 384×512, mIoU drop vs FP32 in points on CamVid val / on the
dusk drive 0001TP minus the calibration frames (benchmarks/results/coreml/w8a8_variants.json):
- TopFormer-T lost 0.13 / 1.46 with the first config, which named only a float group's convolutions: coremltools
  then quantized every activation inside the group anyway (a float conv's output is the input of the quantized ReLU
  or residual add after it, whose output feeds the next float conv), so `tpm.s1` ran on 8-bit activations while
  the ONNX targets keep it float (ort-int8: 0.08 on dusk). Naming the group's outermost modules keeps it float
  (`_check_islands` now refuses a leak): 0.05 / 0.37.
- Then affine activations (each calibrated [min, max] on all 256 levels; symmetric spends half of them on values a
  skewed tensor never takes, and dusk frames use little of ranges set mostly by daylight frames): 0.04 / 0.02, and
  −0.12 / −0.09 when no dusk frame is among the calibration frames (symmetric, leaky: 0.64 / 1.12). Affine alone,
  with the leaky islands, did not help (0.27 / 1.48); EMA observers were worse (0.07 / 0.11); leaving elementwise
  outputs float was worse on val (0.54 / 1.13 leaky, 0.04 / 0.30 whole-block symmetric).
- B0 (no float group) loses less on dusk with symmetric: 0.28 / 0.26 vs affine 0.09 / 0.42 (without dusk in the
  calibration: 0.15 / 0.12 vs 0.13 / 0.37), so SegFormer keeps symmetric. coremltools applies one scheme to
  weights and activations alike (affine weights get a per-channel zero point).
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
# coremltools' quantization scheme per model family, measured on CamVid val and the dusk drive (module docstring):
# affine maps each activation's calibrated [min, max] onto all 256 levels (as ort-int8's asymmetric uint8 does);
# symmetric (zero point 0 or 128) spends half of them on values a skewed tensor never takes, which cost TopFormer-T
# on dusk, while B0 lost less on dusk with symmetric. Families not measured get coremltools' default.
FAMILY_SCHEMES = {"topformer": "affine", "segformer": "symmetric"}
DEFAULT_SCHEME = "symmetric"
_SCHEME_TEXT = {
    "affine": {"weights": "int8, affine (zero point per channel), per output channel",
               "activations": "uint8, affine (calibrated zero point), per tensor"},
    "symmetric": {"weights": "int8, symmetric, per output channel",
                  "activations": "uint8, symmetric (zero point 0 or 128), per tensor"}}


def scheme_for(module: PackageModule) -> str:
    """The quantization scheme of the model's family (its `pretrained_cfg`), DEFAULT_SCHEME when not measured."""
    family = (getattr(module.model, "pretrained_cfg", None) or {}).get("family")
    return FAMILY_SCHEMES.get(str(family), DEFAULT_SCHEME)


def scheme_summary(scheme: str) -> dict[str, str]:
    """What the manifest records about a scheme: weights, activations, observer, tool."""
    return {"scheme": scheme, **_SCHEME_TEXT[scheme], "observer": "min_max",
            "tool": "coremltools.optimize.torch LinearQuantizer (calibration only, no training)"}


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
def package_group(name: str, family: str, model_name: str | None) -> str | None:
    """The sensitivity group of a PackageModule module name (`model.backbone…`), as the ONNX targets name it."""
    from .sensitivity import module_group

    return module_group(name.removeprefix("model."), family, model_name) if name.startswith("model.") else None


def float_modules(module: PackageModule, family: str, model_name: str | None) -> dict[str, str]:
    """Module name (in `module`) → why it stays float: LayerNorms, the final classifier conv, family float groups.

    A float group is named twice: by its outermost modules, so that everything inside (ReLUs, functional residual
    adds) gets no fake-quant either — naming only its convolutions left coremltools quantizing each float conv's
    output as the input of the ReLU or add after it — and by its convolutions (what the island check and the
    manifest list)."""
    from .sensitivity import FAMILY_FLOAT_GROUPS

    groups = set(FAMILY_FLOAT_GROUPS.get(family, ()))
    out: dict[str, str] = {}
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    for name, m in module.named_modules():
        group = package_group(name, family, model_name) if groups else None
        if isinstance(m, nn.LayerNorm):
            out[name] = "LayerNorm"
        elif group not in groups:
            continue
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            out[name] = f"family default float group {group}"
        elif package_group(name.rpartition(".")[0], family, model_name) not in groups:  # the group's outermost module
            out[name] = f"family default float group {group} (the whole block, activations included)"
    if not convs:
        raise ExportError("the model has no convolution: cannot place the W8A8 float islands; use --target "
                          "coreml-int8")
    out[convs[-1]] = "final classifier conv"
    return out


def _config(keep: Sequence[str], scheme: str = DEFAULT_SCHEME) -> Any:
    from coremltools.optimize.torch.quantization import LinearQuantizerConfig, ModuleLinearQuantizerConfig

    cfg = ModuleLinearQuantizerConfig(quantization_scheme=scheme, weight_dtype="qint8",
                                      activation_dtype="quint8", weight_per_channel=True,
                                      weight_observer="min_max", activation_observer="min_max", milestones=None)
    return LinearQuantizerConfig(global_config=cfg, module_type_configs={nn.LayerNorm: None},
                                 module_name_configs={name: None for name in keep})


# -- calibration ----------------------------------------------------------------------------------------------------
def _check_islands(prepared: Any, keep: Sequence[str]) -> int:
    """Raise when a module meant to stay float got a weight fake-quant, or a module inside a whole float block (a
    kept module's descendant) reads a fake-quantized activation; returns how many modules got a weight fake-quant."""
    from torch.ao.quantization import FakeQuantizeBase

    # fused conv+activation wrappers carry their inner conv's fake-quant too: count the layers themselves
    quantized = {n for n, m in prepared.named_modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear)) and getattr(m, "weight_fake_quant", None) is not None}
    leaked = sorted(n for n in keep if n in quantized)
    fq = {n for n, m in prepared.named_modules() if isinstance(m, FakeQuantizeBase)}
    leaked += sorted({u.target for node in prepared.graph.nodes if node.op == "call_module" and node.target in fq
                      for u in node.users if u.op == "call_module" and any(u.target.startswith(k + ".") for k in keep)})
    if leaked:
        raise ExportError(f"coremltools quantized modules meant to stay float ({', '.join(leaked[:3])}); report "
                          "this as a segedge bug")
    if not quantized:
        raise ExportError("coremltools quantized no layer of the model; report this as a segedge bug")
    return len(quantized)


def observed(module: PackageModule, batches: Sequence[torch.Tensor], keep: dict[str, str],
             progress: Callable[[str], None] = lambda s: None, scheme: str | None = None
             ) -> tuple[Any, nn.Module, int, str]:
    """(quantizer, prepared module, quantized layer count, scheme): prepared with fake-quant, ranges observed on
    `batches` from float activations, observers frozen, fake-quant on — what `calibrate` finalizes and the W8A8
    sensitivity report toggles per group. `module` is left untouched; `batches` are image-space N×3×H×W inputs (what
    the package's ImageType computes); `scheme` "affine" | "symmetric", default the family's (`scheme_for`)."""
    from coremltools.optimize.torch.quantization import LinearQuantizer
    from torch.ao.quantization import disable_fake_quant, disable_observer, enable_fake_quant, enable_observer

    from ..models import set_export_mode

    scheme = scheme or scheme_for(module)
    if scheme not in _SCHEME_TEXT:
        raise ExportError(f"unknown W8A8 quantization scheme '{scheme}'; use one of {', '.join(_SCHEME_TEXT)}")
    logits = PackageModule(set_export_mode(copy.deepcopy(module.model)), "BGR" if module.bgr else "RGB",
                           labels=False, upsample=module.upsample).eval()
    try:
        with quiet_tools():
            quantizer = LinearQuantizer(logits, _config(list(keep), scheme))
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
    return quantizer, prepared, n_quantized, scheme


def calibrate(module: PackageModule, batches: Sequence[torch.Tensor], keep: dict[str, str],
              progress: Callable[[str], None] = lambda s: None, scheme: str | None = None
              ) -> tuple[nn.Module, dict[str, Any]]:
    """(finalized W8A8 module returning logits, quantization summary): `observed`, then coremltools' finalize."""
    start = time.perf_counter()
    quantizer, prepared, n_quantized, scheme = observed(module, batches, keep, progress, scheme)
    with quiet_tools():
        finalized = quantizer.finalize(prepared)
    summary = {**scheme_summary(scheme), "quantized_layers": n_quantized,
               "kept_float": [{"module": n, "reason": r} for n, r in keep.items()],
               "kept_float_by_backend": "Softmax, Resize (interpolate), GELU: no quantized pattern in coremltools",
               "calibration_seconds": round(time.perf_counter() - start, 2)}
    return finalized.eval(), summary


def image_batches(images: Sequence[torch.Tensor], size: int = CALIBRATION_BATCH) -> list[torch.Tensor]:
    """Image-space 1×3×H×W tensors → batches of up to `size` frames."""
    return [torch.cat(list(images[i:i + size])) for i in range(0, len(images), size)]
