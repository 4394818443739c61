"""Quantization-aware fine-tuning (`segedge train --qat`): fake-quant that matches an INT8 target's scheme, learned
per-tensor activation ranges, and the record of those ranges that the export applies (segedge.export.qat_ranges).

Mechanism: our own small fake-quant step around the inputs and the weights of the weighted ops (nn.Conv2d,
nn.Linear), built on `torch.fake_quantize_per_channel_affine` / `fake_quantize_per_tensor_affine` (weights) and
`torch._fake_quantize_learnable_per_tensor_affine` (activations, LSQ: the scale is a trained parameter). That is
exactly where ONNX Runtime and TensorRT put Q/DQ (the inputs of Conv/MatMul/Gemm), so every learned range has one
tensor of the ONNX graph to go to. Not torch.ao: its eager/FX QAT flow is deprecated (moving to torchao) and FX
prepare adds observers at places the ONNX Q/DQ graph does not have (outputs, adds, concat); not NVIDIA ModelOpt:
it pulls onnxruntime-gpu. Both fake-quant ops exist across segedge's torch range (2.1 to 2.14).

The scheme comes from the export's own QuantFlavour (`segedge.export.sensitivity.target_flavour`), so the two cannot
drift apart:
- `qdq` (TensorRT): weights symmetric int8 per output channel, activations symmetric int8 per tensor;
- `ort-int8`: activations asymmetric uint8 per tensor (u8s8); weights symmetric int8 per tensor, as the ort-int8
  flavour writes them today; for SegFormer the flavour's scope `conv` quantizes only dense convolutions, so
  Linear layers and depthwise convs get no fake-quant there.
Weight scales are not learned: the quantizer derives them from the exported weights (absmax / 127), so they are
recomputed from the current weights at every step, as the export will. Activation scales start from a MinMax pass
over the export's usual calibration frames (32 training frames, seed 0), converted as onnxruntime converts a range,
so step 0 equals PTQ. Modules the export keeps float get no fake-quant: the family float islands
(`FAMILY_FLOAT_GROUPS`, e.g. TopFormer's tpm.s1) and the final classifier conv.

BatchNorm: folded into the preceding conv and frozen (eval statistics) for the whole fine-tune. Batches of 4-8 crops
give noisy statistics, and the export folds the running statistics into the conv weights anyway: training with
batch statistics would train a network that is not the one exported. Folding also lets the weight quantizer see the
very weights ONNX Runtime quantizes (it matters for ort-int8's per-tensor weights, where a BN scale per channel
changes the grid). The folded model is saved as an ordinary checkpoint (BN left as a frozen per-channel bias).

Objective (`--qat-loss`, default distill): knowledge distillation from the frozen original FP32 model, as the QAT
recipes meant for deployment do (NVIDIA's TensorRT/ModelOpt QAT guide, Qualcomm AIMET's "QAT with the FP32 model as
teacher"): the loss is the per-pixel KL divergence between the teacher's and the fake-quant student's class
distributions (temperature T, scaled by T²), so the fine-tune learns to reproduce the FP32 model under quantization
instead of refitting the labels — refitting moved the FP32 weights themselves and cost 0.2-0.3 pt on a held-out drive.
`mixed` adds a small weight of the label cross-entropy; `labels` is plain cross-entropy. The teacher needs no labels.

Ranges travel in the checkpoint's segedge metadata under "qat" (QAT_FORMAT): module path → [low, high], chosen so
that onnxruntime's range → (scale, zero point) conversion gives back the learned scale and zero point exactly.
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegedgeError
from .config import check_qat_target

QAT_FORMAT = "segedge-qat-ranges/1"
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_MIN_SCALE = 1e-8


@dataclass(frozen=True)
class QatScheme:
    """How one target quantizes, as far as fake-quant needs it (derived from the export's flavour)."""

    target: str
    flavour: str
    activation_symmetric: bool
    weight_per_channel: bool
    quantize_linear: bool  # nn.Linear (MatMul/Gemm) is in the flavour's op types
    dense_conv_only: bool  # scope "conv": depthwise convs stay float

    @property
    def act_qrange(self) -> tuple[int, int]:
        """The integer range a QuantizeLinear saturates to: int8 for symmetric, uint8 otherwise."""
        return (-128, 127) if self.activation_symmetric else (0, 255)

    def describe(self) -> dict[str, Any]:
        """The record's scheme fields."""
        acts = "int8 symmetric per-tensor" if self.activation_symmetric else "uint8 asymmetric per-tensor"
        weights = "int8 symmetric " + ("per-channel" if self.weight_per_channel else "per-tensor")
        return {**asdict(self), "activations": acts, "weights": weights}


def scheme_for(target: str, family: str) -> QatScheme:
    """The fake-quant scheme of `target` for a model family (the export's flavour for it, scope auto)."""
    from ..export.sensitivity import target_flavour

    target = check_qat_target(target)
    fl = target_flavour(target, family)
    ops = set(fl.op_types or ())
    return QatScheme(target, fl.name, fl.activation_symmetric, fl.per_channel,
                     quantize_linear=not fl.op_types or bool(ops & {"MatMul", "Gemm"}),
                     dense_conv_only=fl.scope == "conv")


# -- fake-quant numerics ----------------------------------------------------------------------------------------------

def fake_quant_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 fake-quant of a weight as onnxruntime quantizes it: scale = absmax / 127 (per output channel
    on axis 0, or per tensor), values in [-127, 127]; straight-through gradient."""
    if per_channel:
        amax = w.detach().abs().flatten(1).amax(dim=1)
        scale = (amax / 127.0).clamp(min=_MIN_SCALE).float()
        zp = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -127, 127)
    scale = (w.detach().abs().amax() / 127.0).clamp(min=_MIN_SCALE).float().reshape(1)
    return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros(1, dtype=torch.int32, device=w.device),
                                                 -127, 127)


def scale_zp_from_range(lo: float, hi: float, symmetric: bool) -> tuple[float, int]:
    """(scale, zero point) onnxruntime derives from a [lo, hi] range (quant_utils.compute_scale_zp): the range is
    widened to hold 0; symmetric int8 uses [-127, 127] (zero point 0), asymmetric uint8 [0, 255]."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        scale = max(abs(lo), abs(hi)) / 127.0
        return (scale, 0) if scale >= _MIN_SCALE else (1.0, 0)
    scale = (hi - lo) / 255.0
    if scale < _MIN_SCALE:
        return 1.0, 0
    return scale, int(round(-lo / scale))


class ActQuant(nn.Module):
    """Per-tensor fake-quant of an activation with a learned scale (LSQ) and a zero point fixed at calibration;
    in observe mode it records the min/max of what passes through and leaves it unchanged."""

    def __init__(self, symmetric: bool) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.qmin, self.qmax = (-128, 127) if symmetric else (0, 255)
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.observing = False
        self.seen: list[float] = [math.inf, -math.inf]

    def set_range(self, lo: float, hi: float) -> None:
        """Set scale and zero point from a range, as onnxruntime would."""
        scale, zp = scale_zp_from_range(lo, hi, self.symmetric)
        with torch.no_grad():
            self.scale.fill_(scale)
            self.zero_point.fill_(float(zp))

    def range(self) -> list[float]:
        """The [low, high] range whose onnxruntime conversion gives back this scale and zero point."""
        s, zp = float(self.scale.detach().abs().clamp(min=_MIN_SCALE)), int(self.zero_point.item())
        if self.symmetric:
            return [-127.0 * s, 127.0 * s]
        return [(0 - zp) * s, (255 - zp) * s]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantized `x` (or `x` itself while observing)."""
        if self.observing:
            d = x.detach()
            self.seen = [min(self.seen[0], float(d.min())), max(self.seen[1], float(d.max()))]
            return x
        # LSQ's gradient scale 1/sqrt(N·Qp) keeps the scale's step size comparable to the weights'.
        grad_factor = 1.0 / math.sqrt(max(1, x[0].numel()) * self.qmax)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.scale.clamp(min=_MIN_SCALE), self.zero_point, self.qmin, self.qmax, grad_factor)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean over pixels of KL(teacher ‖ student) of the class distributions (N×C×H×W logits, softmax on C at
    `temperature`), times T² so the gradient's size does not depend on T (Hinton et al.); 0 when they agree."""
    t = float(temperature)
    if teacher.shape[-2:] != student.shape[-2:]:
        teacher = F.interpolate(teacher, size=student.shape[-2:], mode="bilinear", align_corners=False)
    log_s = F.log_softmax(student.float() / t, dim=1)
    log_t = F.log_softmax(teacher.float() / t, dim=1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(dim=1).mean() * (t * t)


@dataclass(frozen=True)
class QatObjective:
    """What a QAT run minimises (`--qat-loss`, `--qat-temperature`, `--qat-ce-weight`)."""

    loss: str = "distill"
    temperature: float = 1.0
    ce_weight: float = 0.1

    @property
    def needs_teacher(self) -> bool:
        """distill and mixed compare with the frozen original model."""
        return self.loss in ("distill", "mixed")

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor | None, ce: Callable[[], torch.Tensor]
                 ) -> torch.Tensor:
        """The loss of one batch; `ce` computes the label cross-entropy (called only when the objective uses it)."""
        if self.loss == "labels":
            return ce()
        kd = distill_loss(student, teacher, self.temperature)
        return kd + self.ce_weight * ce() if self.loss == "mixed" and self.ce_weight > 0 else kd

    def describe(self) -> dict[str, Any]:
        """The record's objective fields."""
        d: dict[str, Any] = {"loss": self.loss}
        if self.needs_teacher:
            d.update(temperature=self.temperature, teacher="the --weights FP32 model, frozen (BN in eval)")
        if self.loss == "mixed":
            d["ce_weight"] = self.ce_weight
        return d


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of the original FP32 model (eval mode, no gradients): call before `prepare_qat` folds BN."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _qat_forward(module: nn.Module, act: ActQuant, ctrl: "QatModel", x: torch.Tensor) -> torch.Tensor:
    """A wrapped Conv2d/Linear: fake-quant input and weight, then the op (plain op while calibrating or disabled)."""
    if ctrl.observing:
        act(x)
        w = module.weight
    elif not ctrl.enabled:
        w = module.weight
    else:
        x = act(x)
        w = fake_quant_weight(module.weight, ctrl.scheme.weight_per_channel)
    if isinstance(module, nn.Conv2d):
        return module._conv_forward(x, w, module.bias)
    return F.linear(x, w, module.bias)


# -- preparing a model ------------------------------------------------------------------------------------------------

def fold_frozen_batchnorm(model: nn.Module) -> list[str]:
    """Fold every BatchNorm that directly follows a Conv2d among one parent's children (Conv2dBN, ConvModule, …)
    into that conv, leaving the BN as a frozen per-channel bias (weight 1, mean 0, var 1 - eps); returns the
    folded BN paths. Only exact in eval mode: the caller keeps BN in eval for the whole fine-tune."""
    folded = []
    for parent_name, parent in model.named_modules():
        kids = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(kids, kids[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.num_features == conv.out_channels and bn.track_running_stats and bn.affine):
                continue
            with torch.no_grad():
                k = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(k.reshape(-1, *([1] * (conv.weight.ndim - 1))))
                if conv.bias is not None:
                    conv.bias.mul_(k)
                bn.bias.sub_(k * bn.running_mean)
                bn.weight.fill_(1.0)
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.requires_grad_(False)  # a trained BN scale would un-fold the weights the quantizer saw
            folded.append(f"{parent_name}.{bn_name}".lstrip("."))
    return folded


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm in eval mode (running statistics used, not updated); call after each model.train()."""
    for m in model.modules():
        if isinstance(m, _BATCHNORMS):
            m.eval()


def _probe(model: nn.Module, example: torch.Tensor, modules: dict[str, nn.Module]
           ) -> tuple[list[str], list[list[str]], torch.Tensor]:
    """One eval forward: (call order of `modules`, groups of modules that read the very same input tensor, output)."""
    calls: list[tuple[str, torch.Tensor]] = []  # holding the inputs keeps their ids unique during the pass
    handles = [m.register_forward_pre_hook(functools.partial(lambda p, _m, args: calls.append((p, args[0])), p))
               for p, m in modules.items()]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in handles:
            h.remove()
    order, groups, by_id = [], [], {}
    for path, x in calls:
        if path in order:
            continue
        order.append(path)
        if id(x) in by_id:
            by_id[id(x)].append(path)
        else:
            by_id[id(x)] = [path]
            groups.append(by_id[id(x)])
    return order, groups, out


def _float_reason(path: str, module: nn.Module, scheme: QatScheme, family: str, model_name: str) -> str | None:
    """Why the export keeps this weighted module float (so it gets no fake-quant), or None."""
    from ..export.sensitivity import FAMILY_FLOAT_GROUPS, module_group

    group = module_group(path, family, model_name)
    if group is not None and group in FAMILY_FLOAT_GROUPS.get(family, ()):
        return f"family default float group {group}"
    if isinstance(module, nn.Linear) and not scheme.quantize_linear:
        return f"{scheme.flavour}: Linear (MatMul/Gemm) not in the flavour's ops"
    if isinstance(module, nn.Conv2d) and scheme.dense_conv_only and module.groups > 1:
        return f"{scheme.flavour}: depthwise conv out of scope"
    return None


class QatModel(nn.Module):
    """The fake-quant state attached to a model by `prepare_qat`: one ActQuant per distinct input tensor (modules
    reading the same tensor share it, as they share one Q/DQ in the graph), the wrapped modules and the float ones.
    The model's own state_dict is untouched, so its checkpoints stay ordinary segedge checkpoints."""

    def __init__(self, scheme: QatScheme, family: str, model_name: str) -> None:
        super().__init__()
        self.scheme, self.family, self.model_name = scheme, family, model_name
        self.quantizers = nn.ModuleDict()
        self.sites: dict[str, tuple[nn.Module, str]] = {}  # module path → (module, quantizer key)
        self.kept_float: dict[str, str] = {}  # module path → reason
        self.folded_bn: list[str] = []
        self.observing = False
        self.enabled = True  # False: the wrapped modules run their float op (tests, teacher-free comparisons)
        self.calibration: dict[str, Any] = {}
        self.objective = QatObjective()

    def quantizer(self, path: str) -> ActQuant:
        """The activation quantizer of a wrapped module."""
        return self.quantizers[self.sites[path][1]]

    def wrap(self, groups: list[list[str]], modules: dict[str, nn.Module]) -> None:
        """Give each group of modules (same input tensor) one ActQuant and route their forward through it."""
        for group in groups:
            key = group[0].replace(".", "/")
            act = ActQuant(self.scheme.activation_symmetric)
            self.quantizers[key] = act
            for path in group:
                m = modules[path]
                m.forward = functools.partial(_qat_forward, m, act, self)  # instance attribute: state_dict unchanged
                self.sites[path] = (m, key)

    def remove(self) -> None:
        """Restore the wrapped modules' own forward (the weights stay as trained)."""
        for m, _ in self.sites.values():
            m.__dict__.pop("forward", None)
        self.sites.clear()

    def calibrate(self, model: nn.Module, inputs: Iterable[torch.Tensor], source: str = "") -> int:
        """MinMax over `inputs` (float forward, no fake-quant) → every quantizer's scale/zero point; step 0 = PTQ."""
        was_training = model.training
        model.eval()
        for q in self.quantizers.values():
            q.observing, q.seen = True, [math.inf, -math.inf]
        self.observing = True
        n = 0
        try:
            device = next(model.parameters()).device
            with torch.no_grad():
                for x in inputs:
                    model(x.to(device))
                    n += 1
        finally:
            self.observing = False
            for q in self.quantizers.values():
                q.observing = False
            model.train(was_training)
        if n == 0:
            raise SegedgeError("QAT calibration got no frames; check the training split has readable images")
        for q in self.quantizers.values():
            if math.isfinite(q.seen[0]):
                q.set_range(*q.seen)
        self.calibration = {"method": "minmax", "frames": n, "source": source}
        return n

    def ranges(self) -> dict[str, list[float]]:
        """Module path → the learned [low, high] input range."""
        return {path: self.quantizer(path).range() for path in self.sites}

    def record(self) -> dict[str, Any]:
        """What a checkpoint carries under meta["qat"] (see the module docstring)."""
        return {"format": QAT_FORMAT, "target": self.scheme.target, "scheme": self.scheme.describe(),
                "ranges": self.ranges(), "kept_float": dict(self.kept_float), "folded_batchnorm": len(self.folded_bn),
                "init": self.calibration, "objective": self.objective.describe()}

    def load_record(self, record: dict[str, Any]) -> int:
        """Set the quantizers from a saved record (resume); returns how many modules got a range."""
        if not isinstance(record, dict) or record.get("format") != QAT_FORMAT:
            raise SegedgeError("the checkpoint carries no segedge QAT ranges to resume from; start the run again "
                               "without --resume")
        if record.get("target") != self.scheme.target:
            raise SegedgeError(f"the checkpoint's QAT ranges are for --qat-target {record.get('target')}, this run is "
                               f"for {self.scheme.target}; resume with the same --qat-target")
        got = 0
        for path, (lo, hi) in record.get("ranges", {}).items():
            if path in self.sites:
                self.quantizer(path).set_range(lo, hi)
                got += 1
        self.calibration = dict(record.get("init", {}))
        return got


def prepare_qat(model: nn.Module, target: str, family: str, model_name: str, example: torch.Tensor) -> QatModel:
    """Fold and freeze BN, then wrap the inputs and weights of the Conv2d/Linear modules the target quantizes;
    `example` (one input batch) is used to find the call order and shared inputs. Ranges start at 1: call
    `calibrate` next."""
    scheme = scheme_for(target, family)
    qat = QatModel(scheme, family, model_name)
    weighted = {p: m for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and p}
    model.eval()
    order, groups, before = _probe(model, example, weighted)
    qat.folded_bn = fold_frozen_batchnorm(model)
    with torch.no_grad():
        after = model(example)
    if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(before.abs().max()) + 1e-5):
        raise SegedgeError(f"{model_name}: folding BatchNorm into the convs changed the model's output; QAT does not "
                           "support this model's layer layout")
    convs = [p for p in order if isinstance(weighted[p], nn.Conv2d)]
    if convs:  # the export keeps the final classifier conv (the last Conv of the graph) float
        qat.kept_float[convs[-1]] = "final classifier conv"
    for p in order:
        reason = qat.kept_float.get(p) or _float_reason(p, weighted[p], scheme, family, model_name)
        if reason:
            qat.kept_float[p] = reason
    wrapped = [[p for p in g if p not in qat.kept_float] for g in groups]
    qat.wrap([g for g in wrapped if g], weighted)
    if not qat.sites:
        raise SegedgeError(f"{model_name} has no Conv2d/Linear layer that --qat-target {target} quantizes")
    return qat


def calibration_inputs(dataset: Any, size: tuple[int, int], mean: list[float], std: list[float],
                       count: int | None = None, seed: int = 0) -> tuple[Callable[[], Iterable[torch.Tensor]], str]:
    """(a generator of 1×3×H×W inputs, source text) over the export's default calibration selection of `dataset`
    (load_calibration_frames: `count` frames, seeded), pre-processed as the runtime does."""
    from ..export.calibration import load_calibration_frames
    from ..runtime.preprocess import preprocess

    frames = load_calibration_frames(dataset, count, seed)

    def gen() -> Iterable[torch.Tensor]:
        for f in frames.frames:
            yield torch.from_numpy(preprocess(f, size, mean, std))
    return gen, f"{len(frames)} frames of the training split (seed {seed})"
