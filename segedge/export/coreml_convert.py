"""PyTorch → CoreML ML program: the app-ready module, its conversion, weight compression and the PyTorch proxies.

The package takes an image (`ct.ImageType`, the contract's colour order), so Swift passes a CVPixelBuffer and no
normalisation code. ImageType applies one scalar `scale` and a per-channel `bias`: `x' = scale·p + bias`. With
scale = 1/s̄ (s̄ = mean of the three stds) and bias_c = −mean_c/s̄, `x' = (p − mean_c)/s̄`, and the model's normalised
input is `x'_c · s̄/std_c`: that per-channel factor is folded into the first convolution's input-channel weights.
Zero padding stays exact (0 ↔ 0, no offset), so the fold changes nothing but float rounding; `prepare_module`
proves it on the check frames before converting. BatchNorm is folded into the convolutions in PyTorch first, so
every weight const of the ML program is named after a PyTorch parameter: that is how the int8 / palettised weights
are read back into the module for the accuracy proxy (`compressed_weights`).

FP16 proxy: the module with FP16-rounded weights, every op's float output rounded to FP16 (`fp16_rounding`), as the
ML program stores each tensor in FP16. It does not reproduce the device's arithmetic inside an op (the Neural
Engine's accumulators, its GELU / softmax approximations); `torch.half` on this CPU would not either, and is ~10×
slower than FP32 here (B0 384×512: 37 s a frame), too slow for labelled-frame mIoU.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import ExportError, first_line
from ..toolkits.coreml import DEPLOYMENT_TARGETS, coremltools

# Weights with fewer elements stay FP16 (coremltools' default threshold): biases, norms, tiny convs.
WEIGHT_THRESHOLD = 2048
# The folded module must match the original within this fraction of the logits' range (float rounding only).
FOLD_TOLERANCE = 1e-4
# Deployment target each compression needs: constexpr weight ops arrived with iOS 16 / macOS 13.
COMPRESSION_MIN_TARGET = "iOS16"
_NAME_SUFFIXES = ("_quantized", "_palettized", "_to_fp16")


@dataclass(frozen=True)
class ImageInput:
    """How the package's image input becomes the model's input: ImageType scale/bias and the folded std factors."""

    color_layout: str  # "RGB" | "BGR": channel order of the image input (the contract's colour order)
    scale: float
    bias: tuple[float, float, float]  # per channel, in color_layout order
    fold: tuple[float, float, float]  # per RGB channel: s̄ / std_c, multiplied into the first conv's weights

    def to_dict(self) -> dict[str, Any]:
        """For the manifest entry and the package metadata."""
        return {"kind": "image", "color_layout": self.color_layout, "scale": self.scale, "bias": list(self.bias),
                "std_folded_into_first_conv": list(self.fold)}


def image_input(mean: Sequence[float], std: Sequence[float], color: str) -> ImageInput:
    """ImageType parameters (and the fold) for the contract's mean/std (RGB, 0-255) and colour order."""
    s_bar = float(np.mean(std))
    order = (0, 1, 2) if color == "RGB" else (2, 1, 0)
    return ImageInput(color, 1.0 / s_bar, tuple(-float(mean[c]) / s_bar for c in order),  # type: ignore[arg-type]
                      tuple(s_bar / float(s) for s in std))  # type: ignore[arg-type]


class PackageModule(nn.Module):
    """What is converted: image-space input (x' in the layout's order) → model with folded std → logits or labels."""

    def __init__(self, model: nn.Module, color_layout: str, labels: bool, upsample: bool) -> None:
        super().__init__()
        self.model = model
        self.bgr = color_layout == "BGR"
        self.labels = labels
        self.upsample = upsample

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Float logits (at the model's stride, or at the input size when upsampling)."""
        if self.bgr:
            x = torch.flip(x, dims=[1])  # the model runs on RGB
        y = self.model(x)
        if self.upsample:
            y = nn.functional.interpolate(y, size=(x.shape[2], x.shape[3]), mode="bilinear", align_corners=False)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.logits(x)
        # int32: an ML program's integer outputs are int32; the backend hands out uint8 as the contract says.
        return y.argmax(1).to(torch.int32) if self.labels else y


# -- the module that is converted ------------------------------------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm2d registered right after a Conv2d into it (in place); returns how many were folded."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for parent in list(model.modules()):
        kids = list(parent.named_children())
        for (cname, conv), (bname, bn) in zip(kids, kids[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.num_features == conv.out_channels:
                setattr(parent, cname, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bname, nn.Identity())
                folded += 1
    return folded


def input_conv(model: nn.Module, example: torch.Tensor) -> nn.Conv2d:
    """The convolution that reads the model's input (the first one run, fed the input itself), or one line."""
    seen: list[tuple[nn.Conv2d, bool]] = []

    def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        if not seen:
            seen.append((mod, bool(args) and args[0].shape == example.shape and torch.equal(args[0], example)))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not seen or not seen[0][1] or seen[0][0].in_channels != 3:
        raise ExportError("cannot fold the per-channel std into the model: its first layer is not a convolution on "
                          "the input image; export with --target onnx (or use a model whose stem is a convolution)")
    return seen[0][0]


def prepare_module(model: nn.Module, mean: Sequence[float], std: Sequence[float], color: str, labels: bool,
                   upsample: bool, example: torch.Tensor) -> tuple[PackageModule, ImageInput, float]:
    """(module to convert, its ImageType parameters, max |Δlogits| of the fold on `example`) — the fold checked.

    `example` is a normalised RGB NCHW batch as the runtime prepares it; the original model is left untouched."""
    image = image_input(mean, std, color)
    m = copy.deepcopy(model).float().eval()
    fold_batchnorm(m)
    conv = input_conv(m, example)
    with torch.no_grad():
        conv.weight.mul_(torch.tensor(image.fold, dtype=conv.weight.dtype).view(1, 3, 1, 1))
    pm = PackageModule(m, color, labels, upsample).eval()
    with torch.no_grad():
        ref = model.eval()(example)
        if upsample:
            ref = nn.functional.interpolate(ref, size=example.shape[2:], mode="bilinear", align_corners=False)
        got = pm.logits(to_image_space(example, image))
    diff = float((got - ref).abs().max())
    if not diff <= FOLD_TOLERANCE * max(1.0, float(ref.abs().max())):
        raise ExportError(f"folding BatchNorm and the input std changed the logits by {diff:.3g}: the model's layers "
                          "are not applied in their registration order; export with --target onnx instead")
    return pm, image, diff


def to_image_space(batch: torch.Tensor, image: ImageInput) -> torch.Tensor:
    """Normalised RGB NCHW → what the package computes from the image: x' = scale·p + bias, in the layout's order."""
    x = batch / torch.tensor(image.fold, dtype=batch.dtype).view(1, 3, 1, 1)  # (p - mean_c)/std_c · std_c/s̄
    return torch.flip(x, dims=[1]) if image.color_layout == "BGR" else x


def pixels_to_image_space(pixels: np.ndarray, image: ImageInput) -> torch.Tensor:
    """uint8 N×H×W×3 pixels in the layout's order → x' = scale·p + bias (N×3×H×W float32), as ImageType does."""
    p = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).to(torch.float32)
    return p * image.scale + torch.tensor(image.bias, dtype=torch.float32).view(1, 3, 1, 1)


# -- conversion and compression -------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_tools() -> Any:
    """coremltools prints progress bars and pass logs to stderr, and tracing warns about shape arithmetic."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        yield


def convert(module: nn.Module, size: tuple[int, int], image: ImageInput, target: str,
            output_name: str, labels: bool | None = None) -> tuple[Any, float]:
    """(FP16 ML program with an image input and an FP32 logits / int32 labels output, seconds) — fixed shapes.

    `module` is a PackageModule, or any module of the same input / output (the W8A8 one); labels: whether it
    returns int32 labels (default: the PackageModule's own flag)."""
    ct = coremltools()
    labels = bool(getattr(module, "labels", False)) if labels is None else labels
    h, w = size
    example = torch.zeros(1, 3, h, w)
    start = time.perf_counter()
    try:
        with quiet_tools(), torch.no_grad():
            traced = torch.jit.trace(module, example)
            mlmodel = ct.convert(
                traced, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, target),
                compute_precision=ct.precision.FLOAT16,
                inputs=[ct.ImageType(name="image", shape=(1, 3, h, w), scale=image.scale, bias=list(image.bias),
                                     color_layout=getattr(ct.colorlayout, image.color_layout))],
                outputs=[ct.TensorType(name=output_name, dtype=np.int32 if labels else np.float32)])
    except Exception as e:  # noqa: BLE001 - coremltools raises ValueError/NotImplementedError/RuntimeError alike
        raise ExportError(f"coremltools could not convert the model for {target} ({first_line(e, 160)}); try a "
                          "newer --coreml-target or --target onnx") from e
    return mlmodel, time.perf_counter() - start


def check_compression_target(target: str) -> None:
    """Compressed weights are constexpr ops, which older deployment targets cannot run: one line, before converting."""
    if DEPLOYMENT_TARGETS[target] < DEPLOYMENT_TARGETS[COMPRESSION_MIN_TARGET]:
        raise ExportError(f"compressed CoreML weights (constexpr ops) need {COMPRESSION_MIN_TARGET} / macOS13 or "
                          f"newer, but --coreml-target is {target}; pass --coreml-target iOS16 or newer")


def compress(mlmodel: Any, palettize: int | None, target: str) -> tuple[Any, dict[str, Any], float]:
    """(compressed copy, its quantization summary, seconds): int8 per-channel symmetric weights, or k-means palettes
    of `palettize` bits per tensor. Weights below WEIGHT_THRESHOLD elements stay FP16."""
    check_compression_target(target)
    from coremltools.optimize.coreml import (OpLinearQuantizerConfig, OpPalettizerConfig, OptimizationConfig,
                                             linear_quantize_weights, palettize_weights)

    if palettize is None:
        op_cfg = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
        summary = {"weights": "int8", "scheme": "linear symmetric, per output channel", "activations": "fp16"}
        run = linear_quantize_weights
    else:
        _require_sklearn()
        op_cfg = OpPalettizerConfig(nbits=palettize, mode="kmeans", granularity="per_tensor",
                                    weight_threshold=WEIGHT_THRESHOLD)
        summary = {"weights": f"palettized {palettize}-bit", "scheme": "k-means look-up table per tensor",
                   "activations": "fp16"}
        run = palettize_weights
    start = time.perf_counter()
    try:
        with quiet_tools():
            out = run(mlmodel, OptimizationConfig(global_config=op_cfg))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"coremltools could not compress the weights ({first_line(e, 160)})") from e
    summary.update({"tool": "coremltools.optimize.coreml", "weight_threshold": WEIGHT_THRESHOLD})
    return out, summary, time.perf_counter() - start


def _require_sklearn() -> None:
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise ExportError("--palettize needs scikit-learn (coremltools' k-means): pip install scikit-learn") from e


# -- reading the compressed weights back ----------------------------------------------------------------------------
def _param_name(const_name: str) -> str:
    """ML program const name → PyTorch parameter path with '.' as '_' (the converter's naming)."""
    changed = True
    while changed:
        changed = False
        for suffix in _NAME_SUFFIXES:
            if const_name.endswith(suffix):
                const_name, changed = const_name[: -len(suffix)], True
    return const_name


def compressed_weights(mlmodel: Any, module: nn.Module) -> dict[str, np.ndarray]:
    """Every compressed weight of the ML program, dequantized, by the name of the `module` parameter it replaces.

    A const that maps to no parameter, or to one of another shape, is an error: the proxy would be wrong."""
    params = {n.replace(".", "_"): (n, p) for n, p in module.named_parameters()}
    out: dict[str, np.ndarray] = {}
    for fn in mlmodel._mil_program.functions.values():
        for op in fn.operations:
            if not op.op_type.startswith("constexpr"):
                continue
            found = params.get(_param_name(op.outputs[0].name))
            value = np.asarray(op.materialized_val_inference(), dtype=np.float32)
            if found is None or tuple(found[1].shape) != value.shape:
                raise ExportError(f"compressed CoreML weight {op.outputs[0].name} {value.shape} matches no PyTorch "
                                  "parameter; the accuracy proxy cannot be built (report this as a segedge bug)")
            out[found[0]] = value
    return out


# -- the PyTorch proxies ---------------------------------------------------------------------------------------------
def _round16(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
        return value.to(torch.float16).to(torch.float32)
    if isinstance(value, (tuple, list)):
        return type(value)(_round16(v) for v in value)
    return value


class fp16_rounding(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Round every float32 tensor a torch function returns to FP16 (an ML program stores each tensor in FP16)."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        return _round16(func(*args, **(kwargs or {})))


def proxy_module(module: PackageModule, weights: dict[str, np.ndarray] | None = None) -> PackageModule:
    """A copy of `module` holding the package's weights: `weights` (dequantized) where given, FP16-rounded elsewhere."""
    proxy = copy.deepcopy(module).eval()
    with torch.no_grad():
        for name, p in proxy.named_parameters():
            if weights is not None and name in weights:
                p.copy_(torch.from_numpy(weights[name]))
            else:
                p.copy_(p.to(torch.float16).to(torch.float32))
    return proxy


def proxy_runner(logits_fn: Callable[[torch.Tensor], torch.Tensor], image: ImageInput, raw: bool,
                 mean: Sequence[float], std: Sequence[float]) -> Callable[[np.ndarray], Any]:
    """`run(batch)` for ctx.verify_with: the export's model input → the proxy's logits (raw io: (labels, logits)).

    logits_fn: image-space input → float logits (a proxy PackageModule's `logits`, the W8A8 module itself)."""
    from ..runtime.backends.coreml import input_pixels

    @torch.no_grad()
    def run(batch: np.ndarray) -> Any:
        pixels = input_pixels(batch, raw, mean, std, image.color_layout)
        x = _round16(pixels_to_image_space(pixels, image))
        with fp16_rounding():
            logits = logits_fn(x)
        logits = logits.numpy()
        return (logits.argmax(1).astype(np.uint8), logits) if raw else logits

    return run


# -- the package on disk -------------------------------------------------------------------------------------------
def package_files(path: Path) -> list[Path]:
    """Every file of a package folder, in a stable order."""
    from ..io import path_files

    return path_files(path)


def package_size(path: Path) -> int:
    """Bytes of every file in a package folder."""
    from ..io import path_size

    return path_size(path)


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (an .mlpackage): `segedge.io.sha256_path`."""
    from ..io import sha256_path

    return sha256_path(path)
