"""Bounds on user input for `segedge train` / `segedge eval` and the Trainer API, and a memory estimate made before
anything large is allocated.

Every check raises a one-line SegedgeError naming the option, the value and the fix (the CLI prints it as
`error: ...` with exit code 2, no traceback).

Limits:
  * input / crop size: at most MAX_INPUT_SIDE (4096) pixels per side; larger frames should be resized for inference.
  * memory: before training, the activations autograd keeps for the backward pass are counted exactly by running
    the model on PyTorch's "meta" device (shapes only, nothing allocated), plus weights, gradients and AdamW state.
    Evaluation counts the largest single intermediate tensor (SegFormer's attention grows with the square of the
    pixel count). A run whose estimate exceeds the memory available now is refused. The estimate is a lower bound
    (measured: 0.5-0.75x of the real peak on CPU), so a run that passes can still be tight. Small runs whose
    upper bound (SMALL_BYTES_PER_PIXEL) is under a quarter of the free memory are not estimated.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..contract import MAX_INPUT_SIDE  # pixels per side of --input-size / --crop-size
from ..errors import SegedgeError

if TYPE_CHECKING:  # torch is imported by the functions that need it: option checks stay instant
    import torch

MAX_SCALE = 4.0  # upper end of the augmentation's scale range
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
MAX_CLASSES = 255  # labels are 8-bit and 255 is the ignore value
# Up to 256x256 per image, no registered model saves more than this per input pixel for backward (measured: b5 49 KB,
# b0 3 KB, topformer-t 1.2 KB). It bounds small runs from above without running the model: when even this bound
# is far below the free memory, the exact estimate (whose first run costs ~2 s of imports) is skipped.
SMALL_IMAGE_PIXELS = 256 * 256
SMALL_BYTES_PER_PIXEL = 64 * 1024


def check_float(flag: str, value: Any, *, low: float = 0.0, high: float = math.inf, low_inclusive: bool = False,
                hint: str = "") -> float:
    """`value` as a finite float within (low, high] (or [low, high] with low_inclusive), else a one-line error."""
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise SegedgeError(f"{flag} must be a number, got {value!r}{'; ' + hint if hint else ''}") from e
    ok = math.isfinite(v) and (v >= low if low_inclusive else v > low) and v <= high
    if not ok:
        lo = f"at least {low:g}" if low_inclusive else f"greater than {low:g}"
        rng = f"a finite number {lo}" + (f" and at most {high:g}" if math.isfinite(high) else "")
        raise SegedgeError(f"{flag} must be {rng}, got {value}{'; ' + hint if hint else ''}")
    return v


def check_int(flag: str, value: Any, *, low: int = 1, high: int | None = None, hint: str = "") -> int:
    """`value` as an int within [low, high], else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float)
                                                                           and not value.is_integer()):
        raise SegedgeError(f"{flag} must be a whole number, got {value!r}{'; ' + hint if hint else ''}")
    v = int(value)
    if v < low or (high is not None and v > high):
        rng = f"at least {low}" + (f" and at most {high}" if high is not None else "")
        raise SegedgeError(f"{flag} must be {rng}, got {v}{'; ' + hint if hint else ''}")
    return v


def check_side_limit(flag: str, size: tuple[int, int]) -> tuple[int, int]:
    """Refuse sizes beyond MAX_INPUT_SIDE per side."""
    h, w = int(size[0]), int(size[1])
    if max(h, w) > MAX_INPUT_SIDE:
        raise SegedgeError(f"{flag} {h}x{w} exceeds the maximum of {MAX_INPUT_SIDE} pixels per side; use a smaller "
                           "size (e.g. 1024x2048) and resize frames for inference")
    return h, w


def gib(n: float) -> str:
    """Bytes as 'x.y GiB'."""
    return f"{n / 2**30:.1f} GiB"


def available_memory(device: torch.device) -> int | None:
    """Bytes that can be allocated now on `device` (CUDA: free device memory; CPU: MemAvailable, capped by a cgroup
    limit), or None when unknown."""
    import torch

    try:
        if device.type == "cuda":
            return int(torch.cuda.mem_get_info(device)[0])
        avail = None
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
        for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                      ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                       "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
            try:
                with open(limit_file) as f:
                    text = f.read().strip()
                if text == "max":
                    break
                with open(used_file) as f:
                    room = int(text) - int(f.read().strip())
                if room > 0 and room < (1 << 60):
                    avail = room if avail is None else min(avail, room)
                break
            except (OSError, ValueError):
                continue
        return avail
    except (OSError, ValueError, RuntimeError):
        return None


def activation_bytes(model: torch.nn.Module, batch: int, size: tuple[int, int],
                     train: bool = True) -> tuple[int, int] | None:
    """(total, largest) bytes of the tensors autograd saves for backward in one forward pass at batch x size (train
    or eval mode), counted on the meta device (nothing is allocated); None if the model cannot run on meta."""
    import torch
    from torch.func import functional_call

    try:
        tensors = {k: torch.empty_like(v, device="meta").requires_grad_(v.requires_grad)
                   for k, v in [*model.named_parameters(), *model.named_buffers()]}
        x = torch.empty(batch, 3, int(size[0]), int(size[1]), device="meta")
        total, largest, seen = 0, 0, set()

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total, largest
            if id(t) not in seen:
                seen.add(id(t))
                n = t.numel() * t.element_size()
                total += n
                largest = max(largest, n)
            return t

        was_training = model.training
        model.train(train)
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                functional_call(model, tensors, (x,))
        finally:
            model.train(was_training)
        return total, largest
    except Exception:  # noqa: BLE001 - an op without a meta kernel: no estimate rather than no run
        return None


def training_memory(model: torch.nn.Module, batch: int, crop: tuple[int, int], num_classes: int,
                    amp: bool) -> int | None:
    """Lower bound of the bytes one training step needs: saved activations (halved under autocast), logits
    upsampled to the crop for the loss, weights + gradients + two AdamW moments."""
    acts = activation_bytes(model, batch, crop)
    if acts is None:
        return None
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    loss_maps = 3 * batch * num_classes * crop[0] * crop[1] * 4  # upsampled logits, softmax, their gradient
    return int(acts[0] * (0.5 if amp else 1.0)) + loss_maps + 4 * params


def inference_memory(model: torch.nn.Module, size: tuple[int, int]) -> int | None:
    """Lower bound of the bytes one batch-1 forward pass needs: weights + the largest intermediate tensor and the
    one it is computed from."""
    acts = activation_bytes(model, 1, size, train=False)
    if acts is None:
        return None
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params + 2 * acts[1]


def _surely_fits(model: torch.nn.Module, batch: int, size: tuple[int, int], avail: int) -> bool:
    px = int(size[0]) * int(size[1])
    if px > SMALL_IMAGE_PIXELS:
        return False
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return 4 * params + batch * px * SMALL_BYTES_PER_PIXEL <= avail // 4


def check_training_memory(model: torch.nn.Module, batch: int, crop: tuple[int, int], num_classes: int, amp: bool,
                          device: torch.device, what: str, fix: str) -> int | None:
    """Refuse a training step that cannot fit in the memory available now; return the estimate (None: not made)."""
    avail = available_memory(device)
    if avail is None or _surely_fits(model, batch, crop, avail):
        return None
    need = training_memory(model, batch, crop, num_classes, amp)
    check_memory(need, device, what, fix, avail)
    return need


def check_inference_memory(model: torch.nn.Module, size: tuple[int, int], device: torch.device, what: str,
                           fix: str) -> int | None:
    """Refuse a batch-1 forward pass that cannot fit in the memory available now; return the estimate or None."""
    avail = available_memory(device)
    if avail is None or _surely_fits(model, 1, size, avail):
        return None
    need = inference_memory(model, size)
    check_memory(need, device, what, fix, avail)
    return need


def check_memory(need: int | None, device: torch.device, what: str, fix: str, avail: int | None = None) -> None:
    """Refuse when `need` bytes exceed what `device` has available now."""
    if need is None:
        return
    avail = available_memory(device) if avail is None else avail
    if avail is not None and need > avail:
        where = "GPU memory" if device.type == "cuda" else "memory"
        raise SegedgeError(f"{what} needs at least {gib(need)} of {where} but {gib(avail)} is available; {fix}")
