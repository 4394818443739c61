"""Checkpoint reading: detect the format, convert keys to segedge's names, infer num_classes, load strictly.

Formats: segedge (safetensors + JSON metadata), Hugging Face (dir or file), NVlabs SegFormer .pth, mmseg 1.x MiT
backbone, official TopFormer .pth. Reading is always safe: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import atomic_path, sha256_file

SEGEDGE_FORMAT = "segedge"


@dataclass
class LoadedCheckpoint:
    """A checkpoint converted to segedge key names, with what it tells about the model."""

    state_dict: dict[str, torch.Tensor]
    format: str
    num_classes: int | None
    path: Path
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    backbone_only: bool = False


def checkpoint_bytes(model: torch.nn.Module, meta: dict[str, Any], dtype: torch.dtype | None = None) -> bytes:
    """A segedge checkpoint (safetensors, metadata JSON in the header) as bytes, e.g. to hash before writing."""
    from safetensors.torch import save

    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        sd[k] = v.clone()
    return save(sd, metadata={"format": SEGEDGE_FORMAT, "segedge": json.dumps(meta, default=str)})


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: dict[str, Any],
                    dtype: torch.dtype | None = None) -> Path:
    """Save a model in segedge format (safetensors, metadata JSON in the header), atomically."""
    path = Path(path)
    data = checkpoint_bytes(model, meta, dtype)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_raw(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    """Read tensors and header metadata from a safetensors / .pth / .bin file or a Hugging Face folder."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}; pass an existing file or Hugging Face folder")
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).exists():
                sd, header, _ = read_raw(p / name)
                header = dict(header)
                if (p / "config.json").exists():
                    header["hf_config"] = (p / "config.json").read_text()
                return sd, header, "directory"
        raise CheckpointError(f"folder {p} holds no model.safetensors or pytorch_model.bin; "
                              "pass a checkpoint file or a Hugging Face save_pretrained folder")
    with open(p, "rb") as f:
        magic = f.read(8)
    if p.suffix == ".safetensors" or (len(magic) == 8 and int.from_bytes(magic, "little") < (1 << 27)
                                      and p.suffix not in (".pth", ".pt", ".bin", ".ckpt")):
        return _read_safetensors(p)
    return _read_torch(p)


def _read_safetensors(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncation / bad headers
        raise CheckpointError(f"{p.name} is not a readable safetensors file ({_first_line(e)}); "
                              "the file may be truncated or corrupt: re-download or re-export it") from e
    cfg = p.parent / "config.json"
    if cfg.exists() and "format" not in header:
        header = {**header, "hf_config": cfg.read_text()}
    return sd, header, "safetensors"


def _read_torch(p: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], str]:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        msg = _first_line(e)
        full = str(e)  # torch >= 2.6 puts the reason ("Unsupported global: GLOBAL x.Y") on a later line
        glob = re.search(r"GLOBAL ([\w.]+)", full)
        # "Unsupported operand" and friends mean the bytes are not a pickle at all: corrupt, not unsafe.
        if glob or "Unsupported global" in full or "Unsupported class" in full:
            raise CheckpointError(
                f"{p.name} contains pickled Python objects{f' ({glob[1]})' if glob else ''}, not just tensors; "
                "segedge refuses to unpickle "
                "arbitrary code: re-save the state dict alone (torch.save(model.state_dict(), ...)) or as safetensors"
            ) from e
        if "Weights only load failed" in msg:  # torch's generic preamble; the real reason is further down
            detail = [ln.strip() for ln in full.splitlines() if ln.strip() and "Weights only" not in ln
                      and "WeightsUnpickler" not in ln and "Please file" not in ln and "Check the doc" not in ln]
            msg = detail[0] if detail else "not a tensor checkpoint"
        raise CheckpointError(f"{p.name} is not a readable PyTorch checkpoint ({msg}); "
                              "the file may be truncated or corrupt") from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{p.name} does not hold a state dict of tensors; save model.state_dict()")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}
    cfg = p.parent / "config.json"
    header = {"hf_config": cfg.read_text()} if cfg.exists() else {}
    return sd, header, "torch"


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


def read_checkpoint(path: str | Path, model_name: str, backbone_only: bool = False) -> LoadedCheckpoint:
    """Read any supported checkpoint for `model_name` and convert it to segedge key names."""
    from .registry import get_spec
    from . import converters

    spec = get_spec(model_name)
    sd, header, _kind = read_raw(path)
    p = Path(path)
    sha = sha256_file(p if p.is_file() else _weights_file(p))
    if header.get("format") == SEGEDGE_FORMAT:
        meta = json.loads(header.get("segedge", "{}"))
        saved = meta.get("model")
        if saved and get_spec(saved).name != spec.name:
            raise CheckpointError(f"{p.name} is a segedge checkpoint of '{saved}', not '{spec.name}'; "
                                  f"pass --model {saved} or the right weights")
        if backbone_only:  # e.g. fine-tuning a demo checkpoint on a dataset with other classes
            sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
            meta = {k: v for k, v in meta.items() if k not in ("num_classes", "class_names")}
            return LoadedCheckpoint(sd, SEGEDGE_FORMAT, None, p, sha, meta, backbone_only=True)
        num_classes = int(meta.get("num_classes") or _infer_classes(sd, spec.family))
        return LoadedCheckpoint(sd, SEGEDGE_FORMAT, num_classes, p, sha, meta)
    fmt, converted, meta = converters.convert(sd, header, spec, backbone_only=backbone_only, path=p)
    num_classes = None if backbone_only and fmt != "segedge" and not _has_head(converted, spec.family) \
        else _infer_classes(converted, spec.family)
    return LoadedCheckpoint(converted, fmt, num_classes, p, sha, meta, backbone_only=backbone_only)


def _weights_file(d: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (d / name).exists():
            return d / name
    return d


def _classifier_key(family: str) -> str:
    return "decode_head.linear_pred.weight" if family == "segformer" else "decode_head.conv_seg.weight"


def _has_head(sd: dict[str, torch.Tensor], family: str) -> bool:
    return _classifier_key(family) in sd


def _infer_classes(sd: dict[str, torch.Tensor], family: str) -> int | None:
    w = sd.get(_classifier_key(family))
    return int(w.shape[0]) if w is not None else None


def load_into(model: torch.nn.Module, ckpt: LoadedCheckpoint) -> torch.nn.Module:
    """Load converted weights strictly; a mismatch raises one clear error naming the first bad keys."""
    own = model.state_dict()
    sd = ckpt.state_dict
    if ckpt.backbone_only:
        own = {k: v for k, v in own.items() if k.startswith("backbone.")}
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} mis-shaped (first: {shapes[0]})")
        raise CheckpointError(
            f"{ckpt.path.name} ({ckpt.format} format) does not fit {type(model).__name__}: " + "; ".join(parts)
            + "; check --model and --num-classes match the checkpoint"
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k].to(v.dtype))
    return model
