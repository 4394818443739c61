"""Benchmark outputs: results.json, results.csv (+ sweep.csv), results.md for the README, and the terminal table."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable

from ..io import write_json_atomic, write_text_atomic

CSV_COLUMNS = [
    "model", "target", "reference", "baseline", "baseline_library", "baseline_version", "precision", "input_h",
    "input_w", "backend", "params", "gmacs", "gflops",
    "artifact_mb",
    "infer_mean_ms", "infer_p50_ms", "infer_p90_ms", "infer_p99_ms", "infer_std_ms", "infer_fps",
    "e2e_mean_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "e2e_std_ms", "e2e_fps",
    "peak_rss_mb", "model_rss_mb", "miou", "miou_drop", "pixel_acc", "argmax_agreement", "frames",
    "power_mw", "energy_mj_per_frame",
]
SWEEP_COLUMNS = ["model", "target", "precision", "input_h", "input_w", "gmacs",
                 "infer_mean_ms", "infer_p50_ms", "infer_p90_ms", "infer_p99_ms", "infer_std_ms", "infer_fps",
                 "e2e_mean_ms", "e2e_p50_ms", "e2e_p90_ms", "e2e_p99_ms", "e2e_std_ms", "e2e_fps"]


def _mb(b: Any) -> float | None:
    return None if b is None else b / 1e6


def _lat(prefix: str, s: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": s.get(k) for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms", "fps")}


def backend_label(b: dict[str, Any]) -> str:
    """'onnxruntime (CPUExecutionProvider)', 'torch (cpu)', …"""
    name = str(b.get("backend", "?"))
    if b.get("providers"):
        return f"{name} ({b['providers'][0]})"
    if b.get("device"):
        return f"{name} ({b['device']})"
    return name


def is_baseline(r: dict[str, Any]) -> bool:
    """Whether a results row is a library-default baseline (`--baselines`) rather than a segedge target."""
    return r.get("baseline") is not None


def target_label(r: dict[str, Any]) -> str:
    """The row's target name, marked when it is a library-default baseline."""
    return f"{r['target']} (baseline)" if is_baseline(r) else r["target"]


def flat_row(r: dict[str, Any]) -> dict[str, Any]:
    """One results row as flat CSV columns."""
    mem = r.get("memory") or {}
    base = r.get("baseline") or {}
    acc = r.get("accuracy") or {}
    pw = r.get("power") or {}
    out = {
        "model": r["model"], "target": r["target"], "reference": r["reference"], "baseline": is_baseline(r),
        "baseline_library": base.get("library"), "baseline_version": base.get("version"), "precision": r["precision"],
        "input_h": r["input_size"][0], "input_w": r["input_size"][1], "backend": backend_label(r["backend"]),
        "params": r["params"], "gmacs": r["gmacs"], "gflops": r["gflops"], "artifact_mb": _mb(r["artifact_bytes"]),
        **_lat("infer", r["latency"]["inference"]), **_lat("e2e", r["latency"]["end_to_end"]),
        "peak_rss_mb": _mb(mem.get("peak_rss_bytes")), "model_rss_mb": _mb(mem.get("model_rss_bytes")),
        "miou": acc.get("miou"), "miou_drop": acc.get("miou_drop"), "pixel_acc": acc.get("pixel_acc"),
        "argmax_agreement": acc.get("argmax_agreement"), "frames": acc.get("frames"),
        "power_mw": pw.get("mean_mw"), "energy_mj_per_frame": pw.get("energy_mj_per_frame"),
    }
    return {k: out.get(k) for k in CSV_COLUMNS}


def flat_sweep_row(r: dict[str, Any]) -> dict[str, Any]:
    """One sweep row as flat CSV columns."""
    out = {"model": r["model"], "target": r["target"], "precision": r.get("precision"),
           "input_h": r["input_size"][0], "input_w": r["input_size"][1], "gmacs": r["gmacs"],
           **_lat("infer", r["latency"]["inference"]), **_lat("e2e", r["latency"]["end_to_end"])}
    return {k: out.get(k) for k in SWEEP_COLUMNS}


def to_csv(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    """CSV text with a header line; None → empty cell."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


def _f(v: Any, fmt: str, scale: float = 1.0) -> str:
    return "–" if v is None else format(v * scale, fmt)


def _pp(v: Any) -> str:
    """mIoU drop in percentage points with a sign (the reference shows 0.00)."""
    return "–" if v is None else f"{100 * v:+.2f}".replace("+0.00", "0.00").replace("-0.00", "0.00")


def machine_line(results: dict[str, Any]) -> str:
    """One sentence saying where and how the numbers were taken."""
    m, s = results["machine"], results["settings"]
    libs = m.get("libraries", {})
    lib = ", ".join(f"{k} {libs[k]}" for k in ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt")
                    if k in libs)
    threads = s.get("threads") or f"default ({s.get('torch_threads')} for torch)"
    commit = (m.get("git") or {}).get("commit")
    return (f"{m['cpu']} ({m.get('physical_cores')} cores / {m.get('logical_cores')} threads), {m['os']}, "
            f"Python {m['python']}, {lib}; threads: {threads}; device: {s['device']}; "
            f"{s['warmup']} warm-up + {s['iters']} timed rounds on {s['timing_frames']} frame(s); "
            f"accuracy on {s['eval_frames']} {s['dataset']}/{s['split']} frames"
            + (f"; segedge {commit[:10]}" if commit else ""))


def markdown(results: dict[str, Any]) -> str:
    """results.md: the main table, the sweep table (when run) and how everything was measured."""
    rows = results["rows"]
    lines = ["| Model | Target | Precision | Input | Params | GMACs | Size (MB) | Inference p50 (ms) | "
             "End-to-end p50 (ms) | FPS (e2e) | Peak RSS (MB) | mIoU (%) | Δ mIoU (pp) | Agreement (%) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        acc, mem = r["accuracy"], r.get("memory") or {}
        lat_i, lat_e = r["latency"]["inference"], r["latency"]["end_to_end"]
        lines.append(
            f"| {r['model']} | {target_label(r)} | {r['precision']} | {r['input_size'][0]}×{r['input_size'][1]} | "
            f"{r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | {_f(_mb(r['artifact_bytes']), '.1f')} | "
            f"{lat_i['p50_ms']:.1f} | {lat_e['p50_ms']:.1f} | {_f(lat_e.get('fps'), '.1f')} | "
            f"{_f(_mb(mem.get('peak_rss_bytes')), '.0f')} | {_f(acc['miou'], '.2f', 100)} | "
            f"{_pp(acc['miou_drop'])} | {_f(acc['argmax_agreement'], '.2f', 100)} |")
    if any(r.get("power") for r in rows):
        lines += ["", "| Model | Target | Mean power (mW) | Energy / frame (mJ) | Above idle (mJ) |",
                  "|---|---|---:|---:|---:|"]
        for r in rows:
            p = r.get("power") or {}
            lines.append(f"| {r['model']} | {r['target']} | {_f(p.get('mean_mw'), '.0f')} | "
                         f"{_f(p.get('energy_mj_per_frame'), '.1f')} | "
                         f"{_f(p.get('energy_above_idle_mj_per_frame'), '.1f')} |")
    sweep = results.get("sweep") or []
    if sweep:
        sizes = sorted({tuple(r["input_size"]) for r in sweep}, key=lambda s: s[0] * s[1])
        pairs = []
        for r in sweep:
            if (r["model"], r["target"]) not in pairs:
                pairs.append((r["model"], r["target"]))
        by = {(r["model"], r["target"], tuple(r["input_size"])): r for r in sweep}
        lines += ["", "Inference latency p50 (ms) by input size:", "",
                  "| Model | Target | " + " | ".join(f"{h}×{w}" for h, w in sizes) + " |",
                  "|---|---|" + "---:|" * len(sizes)]
        for m, t in pairs:
            cells = [(_f(by[(m, t, s)]["latency"]["inference"]["p50_ms"], ".1f") if (m, t, s) in by else "–")
                     for s in sizes]
            lines.append(f"| {m} | {t} | " + " | ".join(cells) + " |")
    lines += _baselines_md(results)
    s = results["settings"]
    lines += ["", f"Measured on {machine_line(results)}.", "",
              f"- Timing: {s['timing']}.",
              f"- Statistics: {s['latency_statistics']}.",
              f"- Peak RSS: {s['memory']}.",
              f"- Accuracy: {s['accuracy']}.",
              f"- Power: {s['power']}.",
              f"- GMACs: {s['flops_convention']}"]
    if s.get("calibration"):
        lines.append(f"- INT8 calibration frames: {s['calibration']}.")
    for n in results.get("notes") or []:
        lines.append(f"- Note: {n}")
    return "\n".join(lines) + "\n"


def _baselines_md(results: dict[str, Any]) -> list[str]:
    """The provenance of each baseline row (library, version, the exact calls) and the baselines skipped."""
    info = results["settings"].get("baselines")
    if not info:
        return []
    lines = ["", "Baselines (library defaults, timed and evaluated in the same rounds as the targets):", ""]
    seen: set[str] = set()
    for r in results["rows"]:
        b = r.get("baseline")
        if b is None or r["target"] in seen:
            continue
        seen.add(r["target"])
        frames = f"; calibrated on {b['calibration_frames']}" if b.get("calibration_frames") else ""
        lines.append(f"- {r['target']}: {b['library']} {b['version']}, `{b['call']}`, run by `{b['runtime']}` "
                     f"({b['arguments']}{frames}).")
    for name, why in (info.get("skipped") or {}).items():
        lines.append(f"- {name}: skipped ({why}).")
    return lines


def rich_table(results: dict[str, Any]) -> Any:
    """The main table for the terminal."""
    from rich.table import Table

    t = Table(title="segedge bench", caption=machine_line(results), caption_justify="left")
    for col, just in (("model", "left"), ("target", "left"), ("prec", "left"), ("input", "left"),
                      ("GMACs", "right"), ("MB", "right"), ("infer p50", "right"), ("infer p90", "right"),
                      ("e2e p50", "right"), ("FPS", "right"), ("RSS MB", "right"), ("mIoU %", "right"),
                      ("Δ pp", "right"), ("agree %", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in results["rows"]:
        acc, mem = r["accuracy"], r.get("memory") or {}
        li, le = r["latency"]["inference"], r["latency"]["end_to_end"]
        t.add_row(r["model"], target_label(r), r["precision"], f"{r['input_size'][0]}x{r['input_size'][1]}",
                  f"{r['gmacs']:.2f}", _f(_mb(r["artifact_bytes"]), ".1f"), f"{li['p50_ms']:.1f}",
                  f"{li['p90_ms']:.1f}", f"{le['p50_ms']:.1f}", _f(le.get("fps"), ".1f"),
                  _f(_mb(mem.get("peak_rss_bytes")), ".0f"), _f(acc["miou"], ".2f", 100), _pp(acc["miou_drop"]),
                  _f(acc["argmax_agreement"], ".2f", 100))
    return t


def write_outputs(results: dict[str, Any], out: str | Path, plots: bool = True) -> dict[str, Path]:
    """Write results.json, results.csv, sweep.csv (with a sweep), results.md and the PNG plots into `out`."""
    out = Path(out)
    files = {
        "json": write_json_atomic(out / "results.json", results),
        "csv": write_text_atomic(out / "results.csv", to_csv((flat_row(r) for r in results["rows"]), CSV_COLUMNS)),
        "md": write_text_atomic(out / "results.md", markdown(results)),
    }
    if results.get("sweep"):
        files["sweep_csv"] = write_text_atomic(out / "sweep.csv", to_csv(
            (flat_sweep_row(r) for r in results["sweep"]), SWEEP_COLUMNS))
    if plots:
        from .plots import write_plots

        files.update(write_plots(results, out))
    return files


__all__ = ["CSV_COLUMNS", "SWEEP_COLUMNS", "flat_row", "is_baseline", "markdown", "rich_table", "target_label",
           "to_csv", "write_outputs"]
