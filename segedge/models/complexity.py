"""Parameter and MAC/FLOP counts, with the counting convention stated next to every number.

MACs come from `torch.utils.flop_counter.FlopCounterMode` (maintained in PyTorch), which counts aten
convolution, mm/addmm/bmm/baddbmm and the fused attention kernels. Our attention is written as explicit matmuls,
so q·kᵀ and attn·v are counted. It does not count normalization, activations, softmax, pooling, interpolation or
element-wise adds: those are not multiply-accumulates, and the SegFormer / TopFormer papers leave them out too.
The papers' "GFLOPs" are these MACs (SegFormer-B0 "8.4 GFLOPs" = 8.39 GMACs here); we report GFLOPs = 2 × GMACs.

The forward runs on the meta device (shapes only, no arithmetic), so even B5 at 512×512 takes about a second;
built by name, the model's parameters are meta tensors too and initialisation is skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import SegedgeError, first_line
from .registry import get_spec, validate_input_size

CONVENTION = (
    "MACs = multiply-accumulates of convolutions, linear layers and matmuls (attention q·kᵀ and attn·v included) "
    "at batch 1, counted by torch.utils.flop_counter; GFLOPs = 2 × GMACs. Normalization, activations, softmax, "
    "pooling, resize and element-wise adds are not counted. The SegFormer/TopFormer papers' 'GFLOPs' are these GMACs."
)

# Parameter-creating factories redirected to the meta device while a model is built by name.
_FACTORIES = {torch.empty, torch.zeros, torch.ones, torch.full, torch.empty_strided, torch.eye}


class _MetaConstruction(TorchFunctionMode):
    """Create parameters on the meta device and skip in-place initialisers on them.

    Unlike `with torch.device("meta")`, schedule helpers such as `torch.linspace(...).tolist()` stay on the CPU,
    and skipping in-place init on meta tensors avoids importing torch._dynamo for the meta `normal_` kernel.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        fname = getattr(func, "__name__", "")
        if fname.endswith("_") and not fname.startswith("__"):
            target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def build_meta_model(name: str, num_classes: int = 150, **kwargs: Any) -> nn.Module:
    """Build a registered model with meta-device parameters (no memory, no init) in eval mode, for counting."""
    spec = get_spec(name)
    with _MetaConstruction():
        model = spec.builder(num_classes=int(num_classes), **kwargs)
    # Anything created outside the redirected factories (e.g. BN's num_batches_tracked) joins it on meta.
    return model.to("meta").eval()


def count_params(model: nn.Module) -> int:
    """Number of parameters (each shared tensor once; buffers such as BN running stats excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


# Which aten op carries a matmul depends on strides (a 1-head attention may dispatch as mm on one device and bmm on
# another), so the breakdown is reported per kind, which is stable.
_KINDS = {"convolution": "conv", "mm": "matmul", "addmm": "matmul", "bmm": "matmul", "baddbmm": "matmul"}


def _kind(op: str) -> str:
    return "attention" if "scaled_dot_product" in op else _KINDS.get(op, op)


def _meta_forward_counts(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs per kind of op (conv, matmul, ...) of one forward, with the model's tensors swapped for meta ones."""
    from torch.func import functional_call
    from torch.utils.flop_counter import FlopCounterMode

    state = {k: (v if v.is_meta else torch.empty_like(v, device="meta"))
             for k, v in {**dict(model.named_parameters()), **dict(model.named_buffers())}.items()}
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        functional_call(model, state, (x,), strict=False)
    counts: dict[str, int] = {}
    for op, v in counter.get_flop_counts().get("Global", {}).items():
        kind = _kind(str(op).replace("aten.", "").split(".")[0])
        counts[kind] = counts.get(kind, 0) + int(v)
    return counts


def count_flops(model_or_name: nn.Module | str, input_size: tuple[int, int] | None = None,
                num_classes: int = 150) -> dict[str, Any]:
    """Params, MACs, GMACs and GFLOPs (= 2 × MACs) of one forward at batch 1, with the counting convention.

    `model_or_name` is a registered name (built on the meta device with `num_classes` classes) or a module (its
    own head decides the classes; the module is not modified). `input_size` is (H, W), default the model's.
    """
    if isinstance(model_or_name, str):
        spec = get_spec(model_or_name)
        label = spec.name
        model = build_meta_model(spec.name, num_classes)
    elif isinstance(model_or_name, nn.Module):
        model = model_or_name
        cfg = getattr(model, "pretrained_cfg", None) or {}
        spec = get_spec(cfg["model"]) if cfg.get("model") else None
        label = spec.name if spec else type(model).__name__
        num_classes = int(cfg.get("num_classes") or getattr(model, "num_classes", num_classes))
    else:
        raise TypeError(f"count_flops expects a model name or nn.Module, got {type(model_or_name).__name__}")
    if input_size is None:
        if spec is None:
            raise SegedgeError(f"input size needed to count {label}: pass input_size=(H, W)")
        input_size = spec.default_input_size
    h, w = validate_input_size(spec.name, input_size) if spec else (int(input_size[0]), int(input_size[1]))
    x = torch.empty(1, 3, h, w, device="meta")
    try:
        by_kind = _meta_forward_counts(model, x)
    except ValueError as e:  # a model's own shape check (e.g. TopFormer's multiples of 64)
        raise SegedgeError(f"cannot count {label} at {h}x{w}: {first_line(e)}") from e
    flops = sum(by_kind.values())
    macs = flops // 2  # FlopCounterMode counts 2 FLOPs per multiply-accumulate
    inference = _inference_form(model, x)
    return {
        "model": label,
        "input_size": [h, w],
        "num_classes": int(num_classes),
        "params": count_params(model),
        "macs": macs,
        "gmacs": macs / 1e9,
        "flops": flops,
        "gflops": flops / 1e9,
        "macs_by_kind": {k: v // 2 for k, v in sorted(by_kind.items())},
        "inference_form": inference,
        "convention": CONVENTION,
    }


def _inference_form(model: nn.Module, x: torch.Tensor) -> dict[str, Any] | None:
    """Params and GMACs of what `segedge export` traces (segedge.models.deploy_form), when that differs."""
    from .layers import deploy_form

    with _eval_mode(model):
        folded, paths = deploy_form(model)
    if not paths:
        return None
    macs = sum(_meta_forward_counts(folded, x).values()) // 2
    return {"folded": paths, "params": count_params(folded), "gmacs": macs / 1e9}


# ---------------------------------------------------------------------------------------------------------------
# A small on-disk cache so that `segedge models` prints the whole zoo in about a second after the first run.
# Entries are keyed by a fingerprint of the model sources and the torch version, so they never go stale.

def cache_dir() -> Path:
    """Folder for cached counts: $SEGEDGE_CACHE_DIR, else $XDG_CACHE_HOME/segedge, else ~/.cache/segedge."""
    if os.environ.get("SEGEDGE_CACHE_DIR"):
        return Path(os.environ["SEGEDGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segedge"


def _fingerprint() -> str:
    h = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).resolve().parent
    for fname in sorted(("segformer.py", "topformer.py", "layers.py", "registry.py", "complexity.py")):
        p = here / fname
        if p.exists():
            h.update(fname.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def cached_flops(name: str, input_size: tuple[int, int] | None = None, num_classes: int = 150,
                 use_cache: bool = True) -> dict[str, Any]:
    """`count_flops` for a registered name, memoised on disk (an unwritable cache is silently skipped)."""
    spec = get_spec(name)
    h, w = validate_input_size(spec.name, input_size or spec.default_input_size)
    path = cache_dir() / f"complexity-{_fingerprint()}.json"
    key = f"{spec.name}|{h}x{w}|{int(num_classes)}"
    entries: dict[str, Any] = {}
    if use_cache and path.is_file():
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        if key in entries and isinstance(entries[key], dict):
            return entries[key]
    result = count_flops(spec.name, (h, w), num_classes)
    if use_cache:
        from ..io import write_json_atomic

        entries[key] = result
        with contextlib.suppress(OSError, SegedgeError):
            write_json_atomic(path, entries)
    return result


__all__ = ["CONVENTION", "build_meta_model", "cache_dir", "cached_flops", "count_flops", "count_params"]
