"""The tuning report: candidate table (JSON + markdown) and the latency-vs-drop plot with the Pareto front marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPORT_FORMAT = "segedge-cpu-tune/2"  # /2: p50_ms is frame → labels, inference_p50_ms the backend alone
REPORT_BASE = "cpu-tune"  # cpu-tune.json, .md, .png in the export folder


def markdown_table(report: dict[str, Any]) -> str:
    """The candidate table, fastest first, the chosen row in bold and Pareto-front rows marked."""
    cpu = report["cpu"]
    choice = report["choice"]["name"]
    lines = [f"# CPU candidates: {report['model']} {report['input_size']}", "",
             f"CPU: {cpu.get('model')} ({cpu.get('arch')}, {cpu.get('cores_available')} cores available). Budget "
             f"{report['budget_pp']:g} pt mIoU on the budget set ({report['frames']['budget']} frames); held-back "
             f"set {report['frames']['held_back']} frames (reported only). p50 over "
             f"{report['timing']['iters']} calls per candidate, rotating blocks of {report['timing']['block']}: "
             "frame → labels (what the choice uses; OpenVINO normalises the frame in the graph) and inference "
             "alone.", "",
             f"Chosen: **{choice}**: {report['choice']['why']}.", "",
             "| candidate | runtime | precision | hint | threads | p50 ms | inference ms | × ort-fp32 | "
             "drop pt (budget) | drop pt (held back) | argmax agree | front |", "|" + "---|" * 12]
    for r in report["rows"]:
        name = f"**{r['name']}**" if r["name"] == choice else r["name"]
        ratio = f"{r['vs_ort_fp32']:.2f}" if r.get("vs_ort_fp32") is not None else "–"
        mark = "◆" if r["pareto"] else ""
        inf = f"{r['inference_p50_ms']:.2f}" if r.get("inference_p50_ms") is not None else "–"
        lines.append(f"| {name} | {r['runtime']} | {r['precision']} | {r['hint'] or '–'} | {r['threads']} | "
                     f"{r['p50_ms']:.2f} | {inf} | {ratio} | {r['drop_pt']:+.2f} | {r['held_back_drop_pt']:+.2f} | "
                     f"{r['argmax_agreement']:.4f} | {mark} |")
    lines += ["", "◆ Pareto front (no other candidate is both faster and more accurate on the budget set)."]
    if report.get("pruned"):  # reports written before the probe have no such key
        lines += ["", "Dropped before measuring (too slow to be chosen at any accuracy):", ""]
        lines += [f"- {p['variant']}: {p['why']}" for p in report["pruned"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    """Latency (log x) vs budget-set drop; the Pareto front as a step line, the budget as a dashed line."""
    from ..benchmarks.plots import MARKERS, figure, plain_log, save_png

    rows = report["rows"]
    fig = figure(7.5, 4.8)
    ax = fig.add_subplot()
    runtimes = sorted({(r["runtime"], r["precision"]) for r in rows})
    for i, key in enumerate(runtimes):
        pts = [r for r in rows if (r["runtime"], r["precision"]) == key]
        ax.scatter([r["p50_ms"] for r in pts], [r["drop_pt"] for r in pts], marker=MARKERS[i % len(MARKERS)],
                   s=28, alpha=0.8, label=f"{key[0]} {key[1]}")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["p50_ms"])
    if front:
        ax.step([r["p50_ms"] for r in front], [r["drop_pt"] for r in front], where="post", color="k", lw=0.8,
                label="Pareto front")
    chosen = next(r for r in rows if r["name"] == report["choice"]["name"])
    ax.scatter([chosen["p50_ms"]], [chosen["drop_pt"]], marker="*", s=220, facecolors="none", edgecolors="red",
               label=f"chosen: {chosen['name']}")
    ax.axhline(report["budget_pp"], color="red", ls="--", lw=0.8, label=f"budget {report['budget_pp']:g} pt")
    ax.set_xscale("log")
    plain_log(ax.xaxis)
    ax.set_xlabel("frame → labels p50, ms (log)")
    ax.set_ylabel("mIoU drop vs FP32, pt (budget set)")
    ax.set_title(f"{report['model']} on {report['cpu'].get('model')}", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    return save_png(fig, path)


def write(folder: Path, report: dict[str, Any]) -> list[Path]:
    """cpu-tune.json, .md and .png in `folder`, each written atomically."""
    from ..io import write_json_atomic, write_text_atomic

    base = Path(folder) / REPORT_BASE
    return [write_json_atomic(f"{base}.json", report), write_text_atomic(f"{base}.md", markdown_table(report)),
            plot(report, Path(f"{base}.png"))]


__all__ = ["REPORT_BASE", "REPORT_FORMAT", "markdown_table", "plot", "write"]
