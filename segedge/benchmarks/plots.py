"""PNG plots of a results dict, drawn with matplotlib's Agg canvas (no pyplot, no display, no global backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_path

MARKERS = "osD^vP*Xh<>"
DPI = 120


def figure(w: float, h: float) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot state), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain_log(axis: Any) -> None:
    """Log scale with plain tick labels (20, 50, 100 rather than 2×10¹)."""
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(fmt)


def save_png(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _styles(results: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    models = list(results["models"])
    targets: list[str] = []
    for r in results["rows"] + results.get("sweep", []):
        if r["target"] not in targets:
            targets.append(r["target"])
    return ({m: cmap(i % 10) for i, m in enumerate(models)},
            {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(targets)})


def plot_latency_vs_miou(results: dict[str, Any], path: Path) -> Path:
    """One point per model × target: inference latency p50 (bar to p90) against mIoU; library-default baselines
    (`--baselines`) hollow, labelled as baselines."""
    from .report import is_baseline, target_label

    colors, markers = _styles(results)
    fig = figure(7.5, 5.0)
    ax = fig.add_subplot()
    for r in results["rows"]:
        miou = r["accuracy"]["miou"]
        if miou is None:
            continue
        lat = r["latency"]["inference"]
        x, y = lat["p50_ms"], 100 * miou
        hollow = {"markerfacecolor": "none", "markeredgewidth": 1.5} if is_baseline(r) else {}
        ax.errorbar([x], [y], xerr=[[0], [max(0.0, lat["p90_ms"] - x)]], fmt=markers[r["target"]],
                    color=colors[r["model"]], markersize=8, capsize=3, label=f"{r['model']} / {target_label(r)}",
                    **hollow)
        ax.annotate(f"{r['model']}/{target_label(r)}", (x, y), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    lats = [r["latency"]["inference"]["p50_ms"] for r in results["rows"] if r["accuracy"]["miou"] is not None]
    if lats and min(lats) > 0 and max(lats) / min(lats) > 10:  # e.g. eager B0 vs INT8 TopFormer
        ax.set_xscale("log")
        plain_log(ax.xaxis)
    ax.set_xlabel("inference latency, p50 (ms; bar to p90)")
    ax.set_ylabel("mIoU (%)")
    s = results["settings"]
    hollow_note = " (hollow: library-default baselines)" if any(is_baseline(r) for r in results["rows"]) else ""
    ax.set_title(f"Latency vs mIoU — {s['dataset']}/{s['split']}, {s['eval_frames']} frames{hollow_note}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_png(fig, path)


def plot_latency_vs_size(results: dict[str, Any], path: Path) -> Path:
    """Inference latency p50 against input pixels, one line per model × target (the --sizes sweep)."""
    colors, markers = _styles(results)
    fig = figure(7.5, 5.0)
    ax = fig.add_subplot()
    series: dict[tuple[str, str], list[tuple[int, str, float]]] = {}
    for r in results["sweep"]:
        h, w = r["input_size"]
        series.setdefault((r["model"], r["target"]), []).append((h * w, f"{h}×{w}",
                                                                 r["latency"]["inference"]["p50_ms"]))
    ticks: dict[int, str] = {}
    for (m, t), pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker=markers[t], color=colors[m],
                linestyle="-" if t == "torch" else "--", label=f"{m} / {t}")
        ticks.update({p[0]: p[1] for p in pts})
    ax.set_xticks(sorted(ticks), [ticks[k] for k in sorted(ticks)], rotation=30, fontsize=8)
    ax.set_xlabel("input size (H×W, axis linear in pixels)")
    ax.set_ylabel("inference latency, p50 (ms)")
    ax.set_yscale("log")
    plain_log(ax.yaxis)
    ax.set_title("Latency vs input size (mIoU is measured at each model's own size only)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_per_class_iou(results: dict[str, Any], path: Path) -> Path:
    """Per-class IoU of every target beside the FP32 PyTorch reference, one panel per model (library-default
    baselines hatched)."""
    from matplotlib import colormaps

    from .report import is_baseline, target_label

    cmap = colormaps["tab10"]
    models = list(results["models"])
    fig = figure(max(7.5, 0.6 * max(len(results["models"][m]["class_names"]) for m in models) + 2),
                  3.2 * len(models) + 0.6)
    axes = fig.subplots(len(models), 1, squeeze=False)[:, 0]
    for ax, m in zip(axes, models):
        rows = [r for r in results["rows"] if r["model"] == m]
        names = list(results["models"][m]["class_names"])
        width = 0.8 / max(1, len(rows))
        for k, r in enumerate(rows):
            ious = r["accuracy"]["per_class_iou"]
            ys = [100 * ious[n] if ious.get(n) is not None else 0.0 for n in names]
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(names))]
            label = f"{target_label(r)} (mIoU {100 * r['accuracy']['miou']:.1f})" \
                if r["accuracy"]["miou"] is not None else target_label(r)
            ax.bar(xs, ys, width, label=label, color=cmap(k % 10), hatch="//" if is_baseline(r) else None,
                   edgecolor="black" if r["reference"] else None, linewidth=0.6)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("IoU (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{m}: per-class IoU by target (outlined: FP32 PyTorch reference"
                     f"{'; hatched: library-default baselines' if any(is_baseline(r) for r in rows) else ''})")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, ncols=min(4, len(rows)))
    return save_png(fig, path)


def write_plots(results: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """latency_vs_miou.png, per_class_iou.png, and latency_vs_size.png when a sweep was run."""
    out = Path(out)
    files = {"latency_vs_miou": plot_latency_vs_miou(results, out / "latency_vs_miou.png"),
             "per_class_iou": plot_per_class_iou(results, out / "per_class_iou.png")}
    if results.get("sweep"):
        files["latency_vs_size"] = plot_latency_vs_size(results, out / "latency_vs_size.png")
    return files


__all__ = ["MARKERS", "figure", "plain_log", "save_png", "plot_latency_vs_miou", "plot_latency_vs_size", "plot_per_class_iou", "write_plots"]
