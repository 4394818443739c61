"""What the runtime must know about a model: input contract (size, mean/std, io mode, colour order) and output kind.

Read from an export manifest, an ONNX file's metadata_props (same keys), a checkpoint's `pretrained_cfg`, or, for a
foreign ONNX without segedge keys, guessed from the graph (ImageNet mean/std, RGB, logits) with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import SegedgeError

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass
class ModelInfo:
    """The model's input/output contract as the runtime uses it."""

    num_classes: int
    class_names: list[str]
    input_size: tuple[int, int]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    io: str = "float"  # float: float32 NCHW RGB normalised; raw: uint8 NHWC frames, labels out
    color_order: str = "RGB"  # channel order the graph input expects (raw: the frame order baked in)
    output_kind: str = "logits"  # logits | labels
    output_stride: int = 4
    dynamic: dict[str, bool] = field(default_factory=lambda: {"batch": False, "height": False, "width": False})
    model: str | None = None
    family: str | None = None
    target: str | None = None
    precision: str | None = None
    source: str = "manifest"

    @classmethod
    def from_description(cls, d: Mapping[str, Any], target: str | None = None,
                         entry: Mapping[str, Any] | None = None, source: str = "manifest") -> "ModelInfo":
        """From manifest / metadata keys (see segedge.export.manifest)."""
        try:
            inp, out = d["input"], d["output"]
            n = int(d["num_classes"])
            return cls(
                num_classes=n,
                class_names=list(d.get("class_names") or [f"class_{i}" for i in range(n)]),
                input_size=(int(inp["height"]), int(inp["width"])),
                mean=tuple(float(v) for v in inp.get("mean", IMAGENET_MEAN)),
                std=tuple(float(v) for v in inp.get("std", IMAGENET_STD)),
                io=str(inp.get("io", "float")),
                color_order=str(inp.get("color_order", "RGB")).upper(),
                output_kind=str(out.get("kind", "logits")),
                output_stride=int(out.get("stride", 4)),
                dynamic=dict(inp.get("dynamic") or {"batch": False, "height": False, "width": False}),
                model=d.get("model"), family=d.get("family"),
                target=target or d.get("target"),
                precision=(entry or {}).get("precision") or d.get("precision"),
                source=source,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SegedgeError(f"model description is incomplete ({type(e).__name__}: {e}); re-export the model "
                               "with `segedge export`") from None

    @classmethod
    def from_onnx_graph(cls, model: Any, source: str = "graph") -> "ModelInfo":
        """Best guess for a foreign ONNX (no segedge metadata): static NCHW float input, logits output."""
        def dims(vi: Any) -> list[int | None]:
            return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

        i, o = dims(model.graph.input[0]), dims(model.graph.output[0])
        if len(i) != 4 or i[2] is None or i[3] is None or len(o) != 4 or o[1] is None:
            raise SegedgeError("this ONNX file has no segedge metadata and no static N×3×H×W input / N×C×h×w output "
                               "to infer its contract from; export it with `segedge export`")
        stride = max(1, int(i[2]) // int(o[2])) if o[2] else 4
        warnings.warn("ONNX file without segedge metadata: assuming float RGB input normalised with ImageNet "
                      "mean/std and logits output; re-export with `segedge export` to record the real contract")
        n = int(o[1])
        return cls(n, [f"class_{k}" for k in range(n)], (int(i[2]), int(i[3])), output_stride=stride, source=source,
                   dynamic={"batch": i[0] is None, "height": False, "width": False})
