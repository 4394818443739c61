"""Peak memory of one target, measured in isolation: a fresh Python process loads it and runs a few frames.

Run by the benchmark as `python -m segedge.benchmarks.memprobe '<json spec>'`; prints one JSON line. In one shared
process the peak RSS of the second target would include the first one's (and PyTorch's) memory, so each target gets
its own process. The probe reports the peak resident set size (the kernel's high-water mark, covering every thread
and native allocator; see `peak_rss_bytes`) after importing segedge and the target's runtime library (baseline), and
after loading + `iters` predictions (peak); the difference is what the model itself costs on top of the interpreter
and libraries. (Importing segedge imports torch today, so every baseline includes it.)
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

METHOD = ("peak RSS of a fresh process per target (load + {iters} predictions on a dataset frame): VmHWM of "
          "/proc/self/status on Linux (ru_maxrss on macOS, peak working set on Windows); baseline = the same "
          "after importing segedge and the target's runtime library, before loading the model; "
          "model RSS = peak - baseline")


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes.

    Linux: VmHWM from /proc/self/status, the high-water mark of this process's own address space. getrusage's
    ru_maxrss is not used there: the kernel carries the parent's RSS at fork time across exec into it, so a child
    of a big benchmark process would report the parent's peak. macOS: ru_maxrss (bytes); Windows: peak working set.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the target described by `spec`, run it, and return memory figures (runs inside the child)."""
    import cv2

    from .targets import REFERENCE, export_segmenter, resolve_device, torch_segmenter

    frame = cv2.imread(spec["frame"], cv2.IMREAD_COLOR)
    if frame is None:
        raise RuntimeError(f"cannot read frame {spec['frame']}")
    size = tuple(spec["input_size"])
    # The baseline includes the runtime library the target runs on, so `model_rss_bytes` is the model's own cost.
    for lib in ("torch",) if spec["target"] == REFERENCE else tuple(spec.get("runtime_modules", ())):
        try:
            importlib.import_module(lib)
        except ImportError:
            pass
    baseline = peak_rss_bytes()
    t0 = time.perf_counter()
    if spec["target"] == REFERENCE:
        from ..models import create_model

        device = resolve_device(spec.get("device", "cpu"))
        model = create_model(spec["model"], weights=spec["weights"])
        seg = torch_segmenter(model, size, spec.get("threads"), device, spec.get("postprocess", "fast"))
    elif spec.get("baseline"):
        seg = _baseline_segmenter(spec)
    else:
        seg = export_segmenter(spec["folder"], spec["target"], spec.get("threads"), spec.get("postprocess", "fast"))
    load_s = time.perf_counter() - t0
    for _ in range(max(1, int(spec.get("iters", 3)))):
        seg.predict(frame)
        seg.backend.synchronize()
    out = {"peak_rss_bytes": peak_rss_bytes(), "baseline_rss_bytes": baseline, "load_s": load_s,
           "iters": int(spec.get("iters", 3)), "pid": os.getpid()}
    dev = str(getattr(seg.backend, "device", "cpu"))
    if dev.startswith("cuda"):
        import torch

        out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    out["model_rss_bytes"] = out["peak_rss_bytes"] - baseline
    return out


def _baseline_segmenter(spec: dict[str, Any]) -> Any:
    """A library-default baseline (`spec["baseline"]`: runtime and file) in a Segmenter with the export's contract,
    so it pre- and post-processes as the bench ran it (NumPy pre-processing: no frame input)."""
    from ..runtime import ModelInfo, Segmenter
    from .baselines import open_baseline_backend

    b = spec["baseline"]
    backend = open_baseline_backend(b["runtime"], b["file"], spec.get("threads"))
    info = ModelInfo.from_description(spec["contract"], target=spec["target"], source="manifest")
    return Segmenter(backend, info, spec.get("postprocess", "fast"))


def _run_one(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "segedge.benchmarks.memprobe", json.dumps(spec)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe timed out after {timeout:.0f} s"}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return {"error": f"memory probe failed (exit {r.returncode}): {tail}"}
    return json.loads(lines[-1])


def run_probes(specs: Sequence[dict[str, Any]], workers: int = 1, timeout: float = 900.0,
               on_done: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Run one child per spec (at most `workers` at a time: peak RSS is per process, so overlap does not change it)."""
    results: list[dict[str, Any]] = [{} for _ in specs]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_run_one, s, timeout): i for i, s in enumerate(specs)}
        done = 0
        for fut in futures:
            results[futures[fut]] = fut.result()
            done += 1
            if on_done:
                on_done(done)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry point: one JSON spec argument in, one JSON line out."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m segedge.benchmarks.memprobe '<json spec>'", file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(args[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
