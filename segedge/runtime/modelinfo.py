"""What the runtime knows about a loaded model: its `ModelContract` plus which target, precision and source it came from.

The contract is read from an export manifest, an artifact's own metadata (ONNX metadata_props, OpenVINO rt_info),
a checkpoint's `pretrained_cfg`, or, for a foreign ONNX without segedge keys, guessed from the graph (ImageNet
mean/std, RGB, logits) with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

from ..contract import IMAGENET_MEAN, IMAGENET_STD, DynamicAxes, InputContract, ModelContract, OutputContract
from ..errors import SegedgeError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ModelInfo"]


@dataclass
class ModelInfo:
    """The model's contract as the runtime uses it, with where it came from."""

    contract: ModelContract
    target: str | None = None
    precision: str | None = None
    source: str = "manifest"  # manifest | metadata | checkpoint | graph

    @classmethod
    def from_description(cls, d: Mapping[str, Any], target: str | None = None, entry: Any = None,
                         source: str = "manifest") -> "ModelInfo":
        """From manifest / metadata keys (see segedge.contract); `entry` is the target's manifest entry."""
        contract = ModelContract.from_dict(d)
        precision = (entry.get("precision") if entry is not None else None) or d.get("precision")
        return cls(contract, target=target or d.get("target"), precision=precision, source=source)

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
        contract = ModelContract(
            num_classes=n, class_names=[f"class_{k}" for k in range(n)],
            input=InputContract(int(i[2]), int(i[3]), name=model.graph.input[0].name,
                                dynamic=DynamicAxes(batch=i[0] is None)),
            output=OutputContract(stride=stride, name=model.graph.output[0].name))
        return cls(contract, source=source)

    # Read-only views of the contract, named as the runtime uses them.
    @property
    def num_classes(self) -> int:
        return self.contract.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.contract.class_names

    @property
    def input_size(self) -> tuple[int, int]:
        return self.contract.input.size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.contract.input.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.contract.input.std

    @property
    def io(self) -> str:
        return self.contract.input.io

    @property
    def color_order(self) -> str:
        return self.contract.input.color_order

    @property
    def output_kind(self) -> str:
        return self.contract.output.kind

    @property
    def output_stride(self) -> int:
        return self.contract.output.stride

    @property
    def dynamic(self) -> dict[str, bool]:
        return self.contract.input.dynamic.to_dict()

    @property
    def model(self) -> str | None:
        return self.contract.model

    @property
    def family(self) -> str | None:
        return self.contract.family
