"""The TensorRT device bundle: what `segedge export --target trt-fp16,trt-int8` leaves for the device to build.

TensorRT engines are specific to one GPU and one TensorRT version, so the engine is built where it runs. The export
folder carries everything that build needs, and nothing else is needed (no torch, no dataset):

    exports/demo-b0/
      manifest.json              targets["trt-int8"].engine = {status: pending, generation: "10", …}
      model.trt-int8.onnx        the ONNX flavour for that TensorRT generation (Q/DQ graph for INT8)
      model.trt-fp16.onnx        the FP16 flavour (FP32 graph + islands for ≤ 10, an FP16-typed graph for 11)
      reference.npz              golden inputs (real frames, pre-processed) and the FP32 ONNX's logits for them

A pending target's manifest entry names the flavour ONNX as its `file` (the artifact that exists now) and carries
an `engine` block (ENGINE_KEYS); `reference.npz` is a companion file of every trt target. After
`segedge engine build` on the device, `file` is the engine, the ONNX and the reference become companions, and the
block records `status: built`, `built_on` (GPU, compute capability, TensorRT, CUDA, JetPack/L4T) and the build
options; `verification` holds the engine's figures against the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import SegedgeError
from ..toolkits.tensorrt import GENERATIONS  # the generations a bundle can be made for

REFERENCE_NAME = "reference.npz"
REFERENCE_FORMAT = "segedge-trt-reference-1"
TRT_TARGETS = ("trt-fp16", "trt-int8")
PENDING, BUILT = "pending", "built"
DEFAULT_GENERATION = "10"  # JetPack 6
# Keys of a trt target's `engine` block in the manifest.
ENGINE_KEYS = ("status", "file", "onnx", "generation", "reference", "build_command", "builder", "fp32_islands",
               "built_on")


def generation_of(version: str) -> str:
    """TensorRT version string ('8.5.2.2', '10.3.0', '11.0.1') → bundle generation ('8.5', '10', '11'), or one line."""
    parts = str(version).strip().split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise SegedgeError(f"cannot read TensorRT version {version!r}: expected e.g. 8.5.2 or 10.3.0") from None
    if major == 8 and minor >= 6:
        return "8.6"
    if major == 8 and minor == 5:
        return "8.5"
    if major in (9, 10):
        return "10"
    if major >= 11:
        return "11"
    raise SegedgeError(f"TensorRT {version} is too old for segedge: it needs 8.5 (JetPack 5.1) or newer")


def check_generation(value: str) -> str:
    """A `--trt-version` value ('8.5', '8.6', '10', '10.3', '11', …) → its generation, or one line naming the choices."""
    text = str(value).strip().lower().removeprefix("trt").removeprefix("tensorrt").strip()
    if text in GENERATIONS:
        return text
    try:
        return generation_of(text)
    except SegedgeError:
        raise SegedgeError(f"unknown TensorRT version {value!r}: choose one of {', '.join(GENERATIONS)} (JetPack 5.1 "
                           "has 8.5, JetPack 6 has 10.3)") from None


def engine_file(target: str) -> str:
    """The engine's file name inside the export folder, e.g. model.trt-int8.engine."""
    return f"model.{target}.engine"


def onnx_file(target: str) -> str:
    """The flavour ONNX's file name inside the export folder, e.g. model.trt-int8.onnx."""
    return f"model.{target}.onnx"


def build_command(folder: str | Path, target: str) -> str:
    """The one command that builds and checks this target's engine on the device."""
    return f"segedge engine build {Path(folder).as_posix()} --target {target}"


@dataclass
class Reference:
    """Golden data for checking an engine: pre-processed inputs and the FP32 ONNX's logits for them."""

    inputs: np.ndarray  # N×3×H×W float32 (float io) or N×H×W×3 uint8 (raw io): exactly what the engine is fed
    logits: np.ndarray  # the FP32 ONNX's first output on `inputs` (onnxruntime, CPU): N×C×h×w float32 logits, or
    # N×H×W labels for raw-io exports (their graph ends in ArgMax), stored as they came
    names: list[str]  # where each input frame came from (file names, never paths)
    labels: np.ndarray | None = None  # N×H×W uint8 ground truth at the input size when the frames were labelled

    def save(self, path: str | Path) -> Path:
        """Write atomically as .npz (no pickles: every array is plain numeric or fixed-width text)."""
        import io

        from ..io import write_bytes_atomic

        arrays: dict[str, Any] = {"format": np.array(REFERENCE_FORMAT), "inputs": self.inputs,
                                  "logits": self.logits, "names": np.array(self.names, dtype=str)}
        if self.labels is not None:
            arrays["labels"] = self.labels.astype(np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return write_bytes_atomic(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Reference":
        """Read and check a reference written by `save`; one line naming the fix otherwise."""
        p = Path(path)
        if not p.is_file():
            raise SegedgeError(f"{p.name} is missing from {p.parent}: the engine cannot be checked without it; "
                               "re-run `segedge export` with the trt target on the host")
        try:
            with np.load(p, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != REFERENCE_FORMAT:
                    raise SegedgeError(f"{p} is not a segedge TensorRT reference ({REFERENCE_FORMAT}); re-export")
                ref = cls(z["inputs"], z["logits"], [str(n) for n in z["names"]],
                          z["labels"] if "labels" in z.files else None)
        except SegedgeError:
            raise
        except Exception as e:  # a truncated or foreign file: zipfile / numpy errors of many kinds
            raise SegedgeError(f"{p} cannot be read ({type(e).__name__}: {e}); re-export the bundle") from e
        if ref.inputs.ndim != 4 or ref.logits.ndim not in (3, 4) or len(ref.inputs) != len(ref.logits) \
                or not len(ref.inputs):
            raise SegedgeError(f"{p} is inconsistent (inputs {ref.inputs.shape}, logits {ref.logits.shape}); "
                               "re-export the bundle")
        return ref


def engine_block(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """A manifest target entry's `engine` block, or None for targets that are not TensorRT bundles."""
    block = entry.get("engine") if hasattr(entry, "get") else None
    return dict(block) if isinstance(block, Mapping) else None


def pending_message(folder: str | Path, target: str, block: Mapping[str, Any]) -> str:
    """The one line a runtime prints when asked to run a target whose engine is not built yet."""
    cmd = block.get("build_command") or build_command(folder, target)
    return (f"target {target}'s TensorRT engine is not built yet (engines are specific to one GPU and TensorRT "
            f"version): on the device, run `{cmd}`; to check its ONNX graph here instead, load target "
            f"{'qdq' if target == 'trt-int8' else 'onnx'}")


def describe_islands(islands: Sequence[Mapping[str, Any]]) -> str:
    """'12 nodes kept FP32 (LayerNormalization ×8, Softmax ×4)' for logs."""
    from collections import Counter

    if not islands:
        return "no nodes kept FP32"
    kinds = Counter(str(i.get("op", "?")) for i in islands)
    return f"{len(islands)} nodes kept FP32 (" + ", ".join(f"{k} ×{v}" for k, v in kinds.most_common()) + ")"


__all__ = ["BUILT", "DEFAULT_GENERATION", "ENGINE_KEYS", "GENERATIONS", "PENDING", "REFERENCE_FORMAT",
           "REFERENCE_NAME", "Reference", "TRT_TARGETS", "build_command", "check_generation", "describe_islands",
           "engine_block", "engine_file", "generation_of", "onnx_file", "pending_message"]
