"""The shape of results.json, checked key by key (no jsonschema dependency): `check_results(d)` lists problems.

Every figure is a number or null (null = not measured, e.g. power off Jetson). Latency statistics are in ms.
"""

from __future__ import annotations

from typing import Any

NUM = (int, float)
OPT_NUM = (int, float, type(None))
LATENCY_KEYS = {"n": int, "mean_ms": NUM, "p50_ms": NUM, "p90_ms": NUM, "p99_ms": NUM, "std_ms": NUM,
                "min_ms": NUM, "max_ms": NUM, "fps": OPT_NUM}
TOP_KEYS = {"format": str, "created": str, "command": list, "duration_s": NUM, "machine": dict, "settings": dict,
            "models": dict, "rows": list, "sweep": list, "notes": list}
MACHINE_KEYS = {"cpu": str, "arch": str, "physical_cores": (int, type(None)), "logical_cores": (int, type(None)),
                "threads": (int, type(None)), "os": str, "python": str, "libraries": dict, "accelerators": dict,
                "git": dict}
SETTINGS_KEYS = {"dataset": str, "data": str, "split": str, "eval_frames": int, "timing_frames": int, "warmup": int,
                 "iters": int, "device": str, "targets": list, "timing": str, "memory": str, "power": str,
                 "accuracy": str, "latency_statistics": str, "flops_convention": str}
MODEL_KEYS = {"family": str, "weights": str, "num_classes": int, "class_names": list, "input_size": list,
              "params": int, "gmacs": NUM, "gflops": NUM}
ROW_KEYS = {"model": str, "target": str, "reference": bool, "input_size": list, "precision": str, "backend": dict,
            "artifact": str, "artifact_bytes": int, "params": int, "gmacs": NUM, "gflops": NUM, "latency": dict,
            "memory": (dict, type(None)), "accuracy": dict, "power": (dict, type(None))}
ACCURACY_KEYS = {"miou": OPT_NUM, "pixel_acc": OPT_NUM, "mean_acc": OPT_NUM, "per_class_iou": dict, "frames": int,
                 "miou_drop": OPT_NUM, "argmax_agreement": OPT_NUM}
MEMORY_KEYS = {"peak_rss_bytes": int, "baseline_rss_bytes": int, "model_rss_bytes": int, "load_s": NUM}
# A baseline row (`segedge bench --baselines`) carries its provenance under "baseline" (null on segedge's rows).
BASELINE_KEYS = {"name": str, "library": str, "version": str, "call": str, "runtime": str, "arguments": str,
                 "defaults": dict}
SWEEP_KEYS = {"model": str, "target": str, "input_size": list, "gmacs": NUM, "latency": dict}


def _check(obj: Any, keys: dict[str, Any], where: str, problems: list[str]) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for k, typ in keys.items():
        if k not in obj:
            problems.append(f"{where}: missing '{k}'")
        elif isinstance(obj[k], bool) and typ is not bool and bool not in (typ if isinstance(typ, tuple) else (typ,)):
            problems.append(f"{where}.{k}: boolean where a number/string was expected")
        elif not isinstance(obj[k], typ):
            problems.append(f"{where}.{k}: {type(obj[k]).__name__} is not {typ}")


def _check_latency(lat: Any, where: str, problems: list[str]) -> None:
    for kind in ("inference", "end_to_end"):
        if not isinstance(lat, dict) or kind not in lat:
            problems.append(f"{where}: missing latency '{kind}'")
            continue
        _check(lat[kind], LATENCY_KEYS, f"{where}.{kind}", problems)
        s = lat[kind]
        if isinstance(s, dict) and all(isinstance(s.get(k), NUM) for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms",
                                                                          "max_ms")):
            if not s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]:
                problems.append(f"{where}.{kind}: percentiles are not ordered")


def _size_ok(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v)


def check_results(d: Any) -> list[str]:
    """Problems with a results.json object (empty list = valid)."""
    problems: list[str] = []
    _check(d, TOP_KEYS, "results", problems)
    if problems:
        return problems
    if d["format"] != "segedge-bench/1":
        problems.append(f"results.format is {d['format']!r}, expected 'segedge-bench/1'")
    _check(d["machine"], MACHINE_KEYS, "machine", problems)
    if isinstance(d["machine"].get("git"), dict) and "commit" not in d["machine"]["git"]:
        problems.append("machine.git: missing 'commit'")
    _check(d["settings"], SETTINGS_KEYS, "settings", problems)
    for name, m in d["models"].items():
        _check(m, MODEL_KEYS, f"models.{name}", problems)
        if isinstance(m, dict) and not _size_ok(m.get("input_size")):
            problems.append(f"models.{name}.input_size is not [H, W]")
    refs = set()
    for i, r in enumerate(d["rows"]):
        where = f"rows[{i}]"
        _check(r, ROW_KEYS, where, problems)
        if not isinstance(r, dict):
            continue
        if r.get("model") not in d["models"]:
            problems.append(f"{where}.model {r.get('model')!r} is not in models")
        if not _size_ok(r.get("input_size")):
            problems.append(f"{where}.input_size is not [H, W]")
        _check_latency(r.get("latency"), f"{where}.latency", problems)
        _check(r.get("accuracy"), ACCURACY_KEYS, f"{where}.accuracy", problems)
        if isinstance(r.get("memory"), dict) and "error" not in r["memory"]:
            _check(r["memory"], MEMORY_KEYS, f"{where}.memory", problems)
        if r.get("baseline") is not None:
            _check(r["baseline"], BASELINE_KEYS, f"{where}.baseline", problems)
            if r.get("reference"):
                problems.append(f"{where}: a baseline row cannot be the reference")
        if r.get("reference"):
            refs.add(r.get("model"))
            acc = r.get("accuracy") or {}
            if acc.get("miou_drop") not in (0, 0.0, None) or acc.get("argmax_agreement") not in (1, 1.0, None):
                problems.append(f"{where}: the reference row must have miou_drop 0 and argmax_agreement 1")
    for name in d["models"]:
        if name not in refs:
            problems.append(f"model {name} has no reference (torch) row")
    for i, r in enumerate(d["sweep"]):
        _check(r, SWEEP_KEYS, f"sweep[{i}]", problems)
        if isinstance(r, dict):
            if not _size_ok(r.get("input_size")):
                problems.append(f"sweep[{i}].input_size is not [H, W]")
            _check_latency(r.get("latency"), f"sweep[{i}].latency", problems)
    return problems


__all__ = ["check_results"]
