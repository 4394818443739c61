"""CoreML backend: an .mlpackage written by `segedge export --target coreml-fp16 / coreml-int8`, on macOS.

The package takes an image (normalisation folded in), while the Segmenter prepares inputs by the export's contract
(normalised float NCHW, or uint8 NHWC frames for raw io): `input_pixels` turns that batch back into the exact uint8
pixels (the runtime resizes in uint8, so de-normalising and rounding is lossless) and each frame is handed to
CoreML as an RGB PIL image. The package's user metadata carries the contract (`segedge.contract` codec), so a lone
.mlpackage is self-describing; `read_package_metadata` reads it on any host. Prediction needs macOS: elsewhere the
backend is unavailable and says so in one line. `compute_units`: all (default), cpu_and_ne, cpu_only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...contract import ModelContract, decode_metadata, describes_model
from ...errors import SegedgeError, first_line
from ...toolkits.coreml import METADATA_PREFIX, TOOLKIT, check_compute_units, coremltools
from . import register_backend
from .base import Backend, InputSpec


def read_package_metadata(path: str | Path) -> dict[str, Any]:
    """The segedge keys of a package's user metadata (decoded), without loading the model (works on any host)."""
    ct = coremltools()
    p = Path(path)
    if not (p.is_dir() and (p / "Manifest.json").is_file()):
        raise SegedgeError(f"{p.name} is not an .mlpackage folder (no Manifest.json); re-export it with "
                           "`segedge export --target coreml-fp16`")
    try:
        spec = ct.utils.load_spec(str(p))
    except Exception as e:  # noqa: BLE001 - protobuf / missing model file
        raise SegedgeError(f"{p.name} is not a readable CoreML package ({first_line(e, 120)}); re-export it") from e
    user = dict(spec.description.metadata.userDefined)
    return decode_metadata({k: v for k, v in user.items() if not k.startswith(METADATA_PREFIX)})


def input_pixels(batch: np.ndarray, raw: bool, mean: Sequence[float], std: Sequence[float],
                 color_layout: str) -> np.ndarray:
    """A contract input batch → uint8 N×H×W×3 pixels in `color_layout` order (what the image input receives).

    raw: the frames themselves (already in that order); float: de-normalised (x·std + mean, RGB) and rounded."""
    if raw:
        return np.ascontiguousarray(batch, dtype=np.uint8)
    rgb = batch.transpose(0, 2, 3, 1) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels[..., ::-1] if color_layout == "BGR" else pixels)


@register_backend
class CoreMLBackend(Backend):
    """A CoreML ML program (.mlpackage) predicting through coremltools on macOS."""

    name = "coreml"
    suffixes = (".mlpackage",)
    toolkit = "coreml"

    @classmethod
    def unavailable(cls) -> str | None:
        """coremltools missing, or not macOS (packages convert anywhere but predict only there)."""
        return TOOLKIT.run_unavailable()

    def __init__(self, path: str | Path, compute_units: str = "all", description: dict[str, Any] | None = None
                 ) -> None:
        why = self.unavailable()
        if why:
            raise SegedgeError(f"cannot run {Path(path).name}: {why}")
        ct = coremltools()
        self.path = Path(path)
        self.description = description if description is not None else read_package_metadata(path)
        if not describes_model(self.description):
            raise SegedgeError(f"{self.path.name} carries no segedge contract in its metadata; export it with "
                               "`segedge export --target coreml-fp16`")
        self.contract = ModelContract.from_dict(self.description)
        coreml = self.description.get("coreml") or {}
        self.color_layout = str((coreml.get("input") or {}).get("color_layout", "RGB"))
        self.output_name = str((coreml.get("output") or {}).get("name", self.contract.output.name))
        self.compute_units = check_compute_units(compute_units)
        try:
            self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, self.compute_units))
        except Exception as e:  # noqa: BLE001 - CoreML compile errors arrive as RuntimeError with long text
            raise SegedgeError(f"CoreML cannot load {self.path.name} ({first_line(e, 120)}); re-export it") from e
        inp = self.contract.input
        self._spec = InputSpec((1, inp.height, inp.width, 3) if inp.io == "raw" else (1, 3, inp.height, inp.width),
                               inp.dtype)

    @classmethod
    def open(cls, path: str | Path, threads: int | None = None, **options: Any) -> "CoreMLBackend":
        """Load the package; `compute_units=` all | cpu_and_ne | cpu_only (threads: CoreML schedules its own)."""
        return cls(path, compute_units=options.get("compute_units") or "all")

    def input_spec(self) -> InputSpec:
        return self._spec

    def run_impl(self, x: np.ndarray) -> np.ndarray:
        """Each frame as an RGB image through CoreML; logits as float32, labels as uint8."""
        from PIL import Image

        inp = self.contract.input
        pixels = input_pixels(x, inp.io == "raw", inp.mean, inp.std, self.color_layout)
        outs = []
        for frame in pixels:
            rgb = frame[..., ::-1] if self.color_layout == "BGR" else frame  # PIL images are RGB; CoreML reorders
            out = self.model.predict({"image": Image.fromarray(np.ascontiguousarray(rgb), "RGB")})[self.output_name]
            outs.append(np.asarray(out))
        y = np.concatenate(outs, axis=0)
        return y.astype(np.uint8) if self.contract.output.kind == "labels" else y.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "compute_units": self.compute_units, "coremltools": TOOLKIT.version(),
                "package": self.path.name}
