"""INT8 sensitivity per node group, and the accuracy-budgeted search behind `segedge export --max-miou-drop`.

Groups come from the ONNX node names (torch.onnx scopes such as `/backbone/block1.0/attn/sr/Conv`; nodes that
onnxsim renamed, e.g. `Gemm_3`, take the module path of their `*.bias` initializer, else of a neighbour):
- SegFormer, per stage s: `s{s}.patch_embed`, `s{s}.sr` (spatial-reduction conv), `s{s}.attention` (Q/K/V/proj
  Gemms and MatMuls, with the residual Add they feed), `s{s}.mixffn` (fc1, dwconv, GELU, fc2 and their residual Add);
  `head.mlp` (linear_c*), `head.fuse` (Resize/Concat/fuse conv).
- TopFormer: `tpm.s1..s4` (token pyramid, split at its output layers), `pool` (pyramid pooling), `trans.b0..b3`
  (transformer blocks), `sim.1..3` (injection modules), `head`.
- Other families: the first two path components of the scope.
- `--group-by op`: op type (dense and depthwise convs apart).
Only nodes the target's flavour would quantize (its op types, minus the family's default float nodes and its scope's
exclusions) belong to a group.

For each group the report measures two variants against FP32 on labelled frames: *only* this group quantized, and
this group *left out* (kept float, everything else quantized); Δ mIoU, argmax agreement and SQNR of the logits, plus
the ONNX Runtime latency for the CPU flavour (ort-int8). Every variant is `quantize()` with a `kept_float` list over
the export's one calibration table; nothing is recalibrated.

The budget search (`budget_search`): forward greedy over the groups ranked by their leave-one-out gain measured on
the budget set, re-measuring each cumulative configuration (one quantization per step instead of a full re-ranking
per step, which costs groups × steps), then a backward pass that quantizes again every chosen island the budget
does not need. Among the measured configurations that meet the budget the fastest measured here is kept for
ort-int8 (the fewest float nodes for the TensorRT graph, whose speed cannot be measured on a CPU). The drop on the
held-back frames, never used for a choice, is reported beside it.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import SegedgeError
from .quantize import (TENSORRT, KeptFloat, QuantFlavour, ort_cpu_flavour, quantizable_op_types, quantize,
                       select_kept_float)

GROUP_BYS = ("block", "op")
SENSITIVITY_TARGETS = ("ort-int8", "qdq", "openvino-int8", "coreml-w8a8")
BUDGET_TARGETS = ("ort-int8", "qdq", "trt-int8")
REPORT_FORMAT = "segedge-int8-sensitivity/1"
LATENCY_RUNS = 10


def target_flavour(target: str, family: str, scope: str = "auto") -> QuantFlavour:
    """The quantization flavour of an ONNX INT8 target (trt-int8 reuses the qdq graph)."""
    if target == "ort-int8":
        return ort_cpu_flavour(family, scope)
    if target in ("qdq", "trt-int8"):
        return TENSORRT
    raise SegedgeError(f"--target must be one of {', '.join(SENSITIVITY_TARGETS)}, got '{target}'")


def check_group_by(group_by: str) -> str:
    """`group_by` when valid, else a one-line error."""
    if group_by not in GROUP_BYS:
        raise SegedgeError(f"--group-by must be one of {', '.join(GROUP_BYS)}, got '{group_by}'")
    return group_by


# -- node groups ----------------------------------------------------------------------------------------------------

def _norm(path: str) -> str:
    return "/" + path.strip("/").replace(".", "/")


def node_scopes(model: Any) -> dict[str, str]:
    """Node name → normalised module path ('/'-separated, dots too); unnamed nodes borrow one (module docstring)."""
    scopes: dict[str, str] = {}
    for n in model.graph.node:
        if "/" in n.name:
            scopes[n.name] = _norm(n.name.rsplit("/", 1)[0])
            continue
        param = next((i for i in n.input if re.search(r"\.(bias|weight)$", i)), None)
        out = next((o for o in n.output if "/" in o), None)
        if param is not None:
            scopes[n.name] = _norm(param.rsplit(".", 1)[0])
        elif out is not None:
            scopes[n.name] = _norm(out.rsplit("/", 1)[0])
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    for use_producers in (False, True):  # consumers first (a renamed MatMul/Split feeds its module), then producers
        changed = True
        while changed:
            changed = False
            for n in model.graph.node:
                if n.name in scopes:
                    continue
                near = [c for o in n.output for c in consumers.get(o, [])] + \
                    ([producer[i] for i in n.input if i in producer] if use_producers else [])
                got = next((scopes[m.name] for m in near if m.name in scopes), None)
                if got is not None:
                    scopes[n.name] = got
                    changed = True
    return scopes


def _segformer_group(scope: str) -> str | None:
    m = re.match(r"/backbone/patch_embed(\d+)", scope)
    if m:
        return f"s{m.group(1)}.patch_embed"
    m = re.match(r"/backbone/block(\d+)/\d+(/(attn|mlp))?(/sr)?", scope)
    if m:
        kind = {"attn": "attention", "mlp": "mixffn"}.get(m.group(3) or "", "block")
        return f"s{m.group(1)}.{'sr' if m.group(4) else kind}"
    if scope.startswith("/decode_head/linear_c"):
        return "head.mlp"
    if scope.startswith("/decode_head"):
        return "head.fuse"
    return None


def _residual_kind(model: Any, scopes: dict[str, str]) -> dict[str, str]:
    """SegFormer block Adds (`/backbone/block1.0/Add`) → the sub-block whose output they add (attention | mixffn)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type == "Add" and re.match(r"/backbone/block\d+/\d+$", scopes.get(n.name, "")):
            for i in n.input:
                p = producer.get(i)
                kind = _segformer_group(scopes.get(p.name, "")) if p is not None else None
                if kind and kind.split(".")[1] in ("attention", "mixffn"):
                    out[n.name] = kind
    return out


def _topformer_stage_of_layer(model_name: str | None) -> Callable[[int], int]:
    """TopFormer token-pyramid layer number (1-based) → stage (1..4), from the variant's output indices."""
    cut = [2, 4, 6, 8]
    try:
        from ..models.topformer import TOPFORMER_CONFIGS

        cfg = TOPFORMER_CONFIGS.get(str(model_name or "").split("-")[-1].lower())
        cut = list(cfg["embed_out_indice"]) if cfg else cut
    except ImportError:  # torch-free install: T's indices are the demo's
        pass
    return lambda layer: 1 + sum(layer - 1 > c for c in cut)


def _topformer_group(scope: str, stage_of: Callable[[int], int]) -> str | None:
    if scope.startswith("/backbone/tpm/stem"):
        return "tpm.s1"
    m = re.match(r"/backbone/tpm/layer(\d+)", scope)
    if m:
        return f"tpm.s{min(stage_of(int(m.group(1))), 4)}"
    m = re.match(r"/backbone/trans/transformer_blocks/(\d+)", scope)
    if m:
        return f"trans.b{m.group(1)}"
    m = re.match(r"/backbone/SIM/(\d+)", scope)
    if m:
        return f"sim.{m.group(1)}"
    if scope.startswith("/decode_head"):
        return "head"
    if scope.startswith("/backbone"):
        return "pool"
    return None


def _generic_group(scope: str) -> str:
    parts = [p for p in scope.split("/") if p]
    return ".".join(parts[:2]) or "graph"


def _op_group(node: Any) -> str:
    if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
        return "Conv (depthwise)"
    return node.op_type


def module_group(module_path: str, family: str, model_name: str | None = None) -> str | None:
    """The block group of a PyTorch module path (`backbone.tpm.layer2.conv.0.c`), named as `node_groups` names the
    ONNX nodes of that module (for targets converted from PyTorch, e.g. CoreML W8A8); None for other families."""
    scope = "/" + module_path.replace(".", "/")  # the torch.onnx scope of the same module
    if family == "topformer":
        return _topformer_group(scope, _topformer_stage_of_layer(model_name))
    if family == "segformer":
        return _segformer_group(scope)
    return None


def candidate_nodes(model: Any, flavour: QuantFlavour, base: Sequence[KeptFloat]) -> list[Any]:
    """Nodes the flavour would quantize: of its op types and not kept float by the base configuration."""
    ops = set(flavour.op_types or quantizable_op_types())
    kept = {k.node for k in base}
    return [n for n in model.graph.node if n.op_type in ops and n.name not in kept]


def node_groups(model: Any, family: str, group_by: str, nodes: Sequence[Any], model_name: str | None = None
                ) -> dict[str, list[str]]:
    """Group name → node names, over `nodes` (the candidates), in graph order; see the module docstring."""
    check_group_by(group_by)
    scopes = node_scopes(model)
    residual = _residual_kind(model, scopes) if family == "segformer" else {}
    stage_of = _topformer_stage_of_layer(model_name)
    groups: dict[str, list[str]] = {}
    for n in nodes:
        scope = scopes.get(n.name, "")
        if group_by == "op":
            g = _op_group(n)
        elif family == "segformer":
            g = residual.get(n.name) or _segformer_group(scope) or _generic_group(scope)
        elif family == "topformer":
            g = _topformer_group(scope, stage_of) or _generic_group(scope)
        else:
            g = _generic_group(scope)
        groups.setdefault(g, []).append(n.name)
    return groups


# The float groups an export keeps by default, per family: the outcome of `--max-miou-drop 0.3` on the demo models
# (benchmarks/int8_budget.py, results/int8-budget/). TopFormer's first token-pyramid stage (stem and layers 1-3)
# carries full-resolution, high-range activations: keeping it float took TopFormer-T's qdq drop from 0.56 to 0.06 pt
# (budget half of CamVid val) and from 1.61 to -0.01 pt on the dusk drive 0001TP, and its ort-int8 drop on that drive
# from 6.05 to 0.08 pt, at no latency cost on ort-int8 (9.8 vs 10.5 ms). SegFormer needed no island.
FAMILY_FLOAT_GROUPS: dict[str, tuple[str, ...]] = {"topformer": ("tpm.s1",)}


def family_float_islands(model: Any, family: str, flavour: QuantFlavour, base: Sequence[KeptFloat],
                         model_name: str | None = None) -> list[KeptFloat]:
    """The nodes of the family's default float groups (FAMILY_FLOAT_GROUPS) that `flavour` would otherwise quantize."""
    wanted = FAMILY_FLOAT_GROUPS.get(family, ())
    if not wanted:
        return []
    groups = node_groups(model, family, "block", candidate_nodes(model, flavour, base), model_name)
    ops = {n.name: n.op_type for n in model.graph.node}
    return [KeptFloat(n, ops[n], f"family default float group {g} (chosen by --max-miou-drop 0.3)")
            for g in wanted for n in groups.get(g, [])]


def default_kept_float(ctx: Any, target: str, flavour: QuantFlavour) -> tuple[list[KeptFloat], dict[str, Any] | None]:
    """(kept-float list, budget record or None) of an ONNX INT8 target: the budget search's choice with
    --max-miou-drop, else the defaults + the user's --keep-float + the family's float groups (none with
    --quantize-all)."""
    import onnx

    opts = ctx.options
    if opts.max_miou_drop is not None:
        return budgeted_kept_float(ctx, target, flavour)
    model = onnx.load(str(ctx.pre_quant_model()))
    kept = select_kept_float(model, opts.keep_float, opts.quantize_all, flavour)
    if opts.quantize_all:
        return kept, None
    contract = ctx.manifest.contract
    extra = family_float_islands(model, str(contract.family or ""), flavour, kept, contract.model)
    return select_kept_float(model, opts.keep_float, opts.quantize_all, flavour, extra=extra), None


# -- labelled frames ------------------------------------------------------------------------------------------------

@dataclass
class LabelledSet:
    """Model inputs with their labels (at frame size) and frame names: one evaluation set."""

    name: str
    inputs: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]

    def subset(self, idx: Sequence[int], name: str) -> "LabelledSet":
        """The frames at `idx`, renamed."""
        return LabelledSet(name, [self.inputs[i] for i in idx], [self.labels[i] for i in idx],
                           [self.names[i] for i in idx])

    def __len__(self) -> int:
        return len(self.inputs)


def labelled_set(pairs: Iterable[tuple[np.ndarray, np.ndarray]], make_input: Callable[[np.ndarray], np.ndarray],
                 name: str, names: Sequence[str] | None = None) -> LabelledSet:
    """(BGR frame, label) pairs → a LabelledSet (frames preprocessed once, as the runtime does)."""
    inputs, labels = [], []
    for frame, label in pairs:
        inputs.append(make_input(frame))
        labels.append(np.asarray(label))
    if not inputs:
        raise SegedgeError(f"the {name} set yielded no labelled frames; check the --val folder layout")
    return LabelledSet(name, inputs, labels, list(names) if names is not None else
                       [f"#{i}" for i in range(len(inputs))])


def split_budget(frames: LabelledSet) -> tuple[LabelledSet, LabelledSet, dict[str, Any]]:
    """(budget set, held-back set, record): alternate frames in the given order, even positions choose, odd ones
    only report, so both sets span the same sequences and neither ever sees the other's frames."""
    if len(frames) < 2:
        raise SegedgeError(f"--max-miou-drop needs at least 2 labelled frames (one to choose, one held back); the "
                           f"--val set has {len(frames)}: raise --val-count")
    budget = frames.subset(range(0, len(frames), 2), "budget")
    held = frames.subset(range(1, len(frames), 2), "held-back")
    record = {"split": "alternate frames of --val in order: even positions → budget set (choosing), odd → "
                       "held-back set (reporting only)", "budget_frames": budget.names, "held_back_frames": held.names}
    return budget, held, record


# -- measurement ----------------------------------------------------------------------------------------------------

def _logits_name(session: Any) -> str:
    return session.get_outputs()[0].name


def run_logits(model: Any, frames: LabelledSet, threads: int = 1) -> list[np.ndarray]:
    """C×h×w float logits of `model` (ONNX ModelProto) for every frame of the set."""
    from .verify import expose_logits, ort_session

    m, name = expose_logits(model)
    sess = ort_session(m, threads=threads)
    input_name = sess.get_inputs()[0].name
    out_names = [o.name for o in sess.get_outputs()]
    return [np.asarray(sess.run(None, {input_name: x})[out_names.index(name)], np.float32)[0] for x in frames.inputs]


def median_ms(call: Callable[[], Any], runs: int = LATENCY_RUNS) -> float:
    """Median wall time of `call()` in ms, after two warm-up calls."""
    for _ in range(2):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def latency_ms(model: Any, x: np.ndarray, threads: int = 1, runs: int = LATENCY_RUNS) -> float:
    """Median ONNX Runtime CPU latency of one input, in ms, after two warm-up runs."""
    from .verify import ort_session

    sess = ort_session(model, threads=threads)
    feed = {sess.get_inputs()[0].name: x}
    return median_ms(lambda: sess.run(None, feed), runs)


def miou_of(logits: Sequence[np.ndarray], frames: LabelledSet, num_classes: int) -> float:
    """mIoU of logits upsampled exactly (bilinear, then argmax) to each label's size."""
    from ..data.metrics import ConfusionMatrix
    from ..runtime.postprocess import labels_exact

    cm = ConfusionMatrix(num_classes)
    for lg, lab in zip(logits, frames.labels):
        cm.update(labels_exact(lg, lab.shape[:2]), lab)
    return float(np.nan_to_num(cm.compute().miou))


def compare_logits(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> dict[str, float]:
    """Argmax agreement (at the output stride) and SQNR (dB) of `got` against the FP32 logits `ref`."""
    agree = total = 0
    sig = noise = 0.0
    for g, r in zip(got, ref):
        agree += int((g.argmax(0) == r.argmax(0)).sum())
        total += r[0].size
        sig += float(np.square(r, dtype=np.float64).sum())
        noise += float(np.square(g - r, dtype=np.float64).sum())
    sqnr = float("inf") if noise == 0 else 10.0 * np.log10(max(sig, 1e-30) / noise)
    return {"argmax_agreement": agree / max(total, 1), "sqnr_db": round(sqnr, 3) if np.isfinite(sqnr) else None}


@dataclass
class Reference:
    """FP32 logits and mIoU of one set."""

    logits: list[np.ndarray]
    miou: float


class VariantMeter:
    """Quantizes and measures configurations `float islands → metrics` for one flavour, caching each result.

    `pre`: the quant_pre_process'ed FP32 graph (path) the calibration `table` refers to; `fp32`: the FP32 ModelProto;
    `sets`: the evaluation sets by name; `base_keep_float` / `quantize_all`: the user's own choices, kept under every
    variant; `latency`: also time each variant (the CPU flavour)."""

    def __init__(self, pre: Path, fp32: Any, table: Any, flavour: QuantFlavour, sets: Sequence[LabelledSet],
                 num_classes: int, family: str, group_by: str = "block", model_name: str | None = None,
                 base_keep_float: Sequence[str] = (), quantize_all: bool = False, threads: int = 1,
                 latency: bool = False, work_dir: Path | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        import onnx

        self.pre, self.table, self.flavour, self.threads = Path(pre), table, flavour, threads
        self.num_classes, self.latency, self.work_dir = num_classes, latency, work_dir
        self.say = progress or (lambda msg: None)
        self.model = onnx.load(str(pre))
        self.user = (tuple(base_keep_float), bool(quantize_all))
        self.base = select_kept_float(self.model, base_keep_float, quantize_all, flavour)
        self.groups = node_groups(self.model, family, group_by, candidate_nodes(self.model, flavour, self.base),
                                  model_name)
        if not self.groups:
            raise SegedgeError(f"no node of this graph is quantized by flavour {flavour.name}: nothing to measure")
        self.ops = {n.name: n.op_type for n in self.model.graph.node}
        self.sets = {s.name: s for s in sets}
        self.ref = {s.name: Reference(lg, miou_of(lg, s, num_classes))
                    for s in sets for lg in [run_logits(fp32, s, threads)]}
        self.fp32_latency = latency_ms(fp32, sets[0].inputs[0], threads) if latency else None
        self._cache: dict[tuple[frozenset[str], str], dict[str, Any]] = {}
        self._latency: dict[frozenset[str], float] = {}

    def kept_for(self, float_groups: Iterable[str]) -> list[KeptFloat]:
        """The kept-float list of a configuration: the base (defaults, user items, scope) plus the groups' nodes."""
        extra = [KeptFloat(n, self.ops[n], f"float island {g} (--max-miou-drop / sensitivity)")
                 for g in sorted(float_groups) for n in self.groups[g]]
        return select_kept_float(self.model, self.user[0], self.user[1], self.flavour, extra=extra)

    def quantized(self, float_groups: Iterable[str]) -> Any:
        """The quantized ModelProto of a configuration."""
        return quantize(self.pre, self.table, self.flavour, self.kept_for(float_groups), work_dir=self.work_dir)

    def measure(self, float_groups: Iterable[str], set_name: str) -> dict[str, Any]:
        """Δ mIoU (points, FP32 − INT8), mIoU, argmax agreement, SQNR (+ latency) of a configuration on a set."""
        key = (frozenset(float_groups), set_name)
        if key not in self._cache:
            q = self.quantized(key[0])
            frames, ref = self.sets[set_name], self.ref[set_name]
            got = run_logits(q, frames, self.threads)
            miou = miou_of(got, frames, self.num_classes)
            res = {"miou": miou, "drop_pt": round(100.0 * (ref.miou - miou), 4), **compare_logits(got, ref.logits)}
            if self.latency:
                if key[0] not in self._latency:
                    self._latency[key[0]] = latency_ms(q, frames.inputs[0], self.threads)
                res["latency_ms"] = round(self._latency[key[0]], 3)
            self._cache[key] = res
        return self._cache[key]


# -- sensitivity report ---------------------------------------------------------------------------------------------

def sensitivity(meter: VariantMeter, set_name: str) -> dict[str, Any]:
    """Per group: only it quantized, and it left out (float) with the rest quantized; ranked by leave-out gain."""
    names = list(meter.groups)
    default = meter.measure((), set_name)
    rows = []
    for i, g in enumerate(names):
        meter.say(f"sensitivity {i + 1}/{len(names)}: {g}")
        only = meter.measure([h for h in names if h != g], set_name)
        left = meter.measure([g], set_name)
        rows.append({"group": g, "nodes": len(meter.groups[g]),
                     "ops": dict(Counter(meter.ops[n] for n in meter.groups[g]).most_common()),
                     "node_names": meter.groups[g], "only": only, "leave_out": left,
                     "gain_pt": round(default["drop_pt"] - left["drop_pt"], 4)})
    rows.sort(key=lambda r: (-r["gain_pt"], -r["only"]["drop_pt"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    ref = meter.ref[set_name]
    return {"format": REPORT_FORMAT, "flavour": meter.flavour.name, "set": set_name,
            "frames": len(meter.sets[set_name]), "frame_names": meter.sets[set_name].names,
            "fp32": {"miou": ref.miou, **({"latency_ms": round(meter.fp32_latency, 3)} if meter.latency else {})},
            "default": default, "groups": rows}


def markdown_table(report: dict[str, Any]) -> str:
    """The ranked sensitivity table (markdown)."""
    lat = "latency_ms" in report["default"]
    head = "| rank | group | nodes | only: Δ mIoU pt | only: agree | only: SQNR dB | left out: Δ mIoU pt | gain pt |"
    head += " left out: ms |" if lat else ""
    lines = [f"# INT8 sensitivity: {report.get('target', '')} ({report['flavour']}), group by "
             f"{report.get('group_by', '')}", "",
             f"FP32 mIoU {report['fp32']['miou']:.4f} on {report['frames']} frames; default INT8 drop "
             f"{report['default']['drop_pt']:+.2f} pt" + (f", {report['default']['latency_ms']:.1f} ms vs FP32 "
                                                        f"{report['fp32']['latency_ms']:.1f} ms" if lat else "") + ".",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["groups"]:
        o, lo = r["only"], r["leave_out"]
        row = (f"| {r['rank']} | {r['group']} | {r['nodes']} | {o['drop_pt']:+.2f} | {o['argmax_agreement']:.4f} | "
               f"{o['sqnr_db'] if o['sqnr_db'] is not None else 'inf'} | {lo['drop_pt']:+.2f} | {r['gain_pt']:+.2f} |")
        lines.append(row + (f" {lo['latency_ms']:.1f} |" if lat else ""))
    return "\n".join(lines) + "\n"


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Bar chart: Δ mIoU with only each group quantized, and the gain of leaving it out (PNG, written atomically)."""
    from ..benchmarks.plots import figure, save_png

    rows = report["groups"]
    fig = figure(8, 1.2 + 0.32 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))[::-1]
    ax.barh(y + 0.2, [r["only"]["drop_pt"] for r in rows], 0.4, label="Δ mIoU, only this group INT8")
    ax.barh(y - 0.2, [r["gain_pt"] for r in rows], 0.4, label="gain from keeping it float (rest INT8)")
    ax.set_yticks(y, [r["group"] for r in rows])
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("mIoU points")
    ax.set_title(f"INT8 sensitivity, {report.get('target', '')} ({report['flavour']}); default drop "
                 f"{report['default']['drop_pt']:+.2f} pt")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def write_report(folder: Path, target: str, report: dict[str, Any]) -> list[Path]:
    """sensitivity.<target>.json, .md and .png in `folder`, each written atomically."""
    from ..io import write_json_atomic, write_text_atomic

    base = Path(folder) / f"sensitivity.{target}"
    return [write_json_atomic(f"{base}.json", report), write_text_atomic(f"{base}.md", markdown_table(report)),
            plot_report(report, Path(f"{base}.png"))]


# -- accuracy-budgeted search ---------------------------------------------------------------------------------------

@dataclass
class BudgetResult:
    """The chosen float islands and the search that found them."""

    float_groups: list[str]
    kept_float: list[KeptFloat]
    record: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)


def _step(meter: VariantMeter, islands: Sequence[str], why: str, set_name: str) -> dict[str, Any]:
    return {"float_groups": sorted(islands), "why": why, **meter.measure(islands, set_name)}


def _forward(meter: VariantMeter, ranked: Sequence[dict[str, Any]], budget_pp: float, default: dict[str, Any]
             ) -> tuple[list[str], list[dict[str, Any]]]:
    """Add islands in leave-out-gain order (positive gains only; never every group), re-measuring each step."""
    islands: list[str] = []
    steps = [{"float_groups": [], "why": "family default", **default}]
    for r in ranked:
        if steps[-1]["drop_pt"] <= budget_pp or r["gain_pt"] <= 0 or len(islands) + 1 >= len(meter.groups):
            break
        islands.append(r["group"])
        steps.append(_step(meter, islands, f"+{r['group']} (leave-out gain {r['gain_pt']:+.2f} pt)", "budget"))
    return islands, steps


def _backward(meter: VariantMeter, islands: list[str], budget_pp: float, steps: list[dict[str, Any]]) -> list[str]:
    """Quantize again each island (weakest first) whose removal keeps the budget met."""
    for g in list(reversed(islands)):
        trial = [h for h in islands if h != g]
        s = _step(meter, trial, f"-{g} (budget still met without it?)", "budget")
        steps.append(s)
        if s["drop_pt"] <= budget_pp:
            islands = trial
    return islands


def _fastest(meter: VariantMeter, steps: list[dict[str, Any]], budget_pp: float) -> dict[str, Any]:
    """Among measured configurations meeting the budget: the fastest here (ort-int8), else the fewest float nodes."""
    ok = [s for s in steps if s["drop_pt"] <= budget_pp]
    size = lambda s: sum(len(meter.groups[g]) for g in s["float_groups"])  # noqa: E731
    if meter.latency:
        return min(ok, key=lambda s: (s["latency_ms"], size(s), s["drop_pt"]))
    return min(ok, key=lambda s: (size(s), s["drop_pt"]))


def budget_search(meter: VariantMeter, budget_pp: float) -> BudgetResult:
    """Float islands whose configuration loses ≤ budget_pp mIoU points on the budget set (module docstring);
    a one-line SegedgeError with the best drop reached when no configuration with an INT8 group left meets it."""
    default = meter.measure((), "budget")
    gains = []
    if default["drop_pt"] > budget_pp:
        for i, g in enumerate(meter.groups):
            meter.say(f"--max-miou-drop: leave-out gain {i + 1}/{len(meter.groups)} ({g})")
            left = meter.measure([g], "budget")["drop_pt"]
            gains.append({"group": g, "gain_pt": round(default["drop_pt"] - left, 4), "leave_out_drop_pt": left})
        gains.sort(key=lambda r: -r["gain_pt"])
    islands, steps = _forward(meter, gains, budget_pp, default)
    if steps[-1]["drop_pt"] > budget_pp:
        best = min(steps, key=lambda s: s["drop_pt"])
        raise SegedgeError(
            f"--max-miou-drop {budget_pp:g} cannot be met for {meter.flavour.name}: the best drop reached on the "
            f"{len(meter.sets['budget'])} budget frames is {best['drop_pt']:.2f} pt with "
            f"{', '.join(best['float_groups']) or 'nothing'} kept float (besides the defaults); raise the budget, "
            "calibrate on more or better frames (--calib, --calib-count, --calib-method) or use a float target")
    if len(islands) > 1:
        islands = _backward(meter, islands, budget_pp, steps)
    chosen = _fastest(meter, steps, budget_pp)
    return _result(meter, budget_pp, chosen, default, gains, steps)


def _result(meter: VariantMeter, budget_pp: float, chosen: dict[str, Any], default: dict[str, Any],
            gains: list[dict[str, Any]], steps: list[dict[str, Any]]) -> BudgetResult:
    """The BudgetResult and its manifest record, with the held-back figures of the default and the choice."""
    islands = chosen["float_groups"]
    gain_of = {r["group"]: r for r in gains}
    record: dict[str, Any] = {
        "max_miou_drop_pt": budget_pp, "flavour": meter.flavour.name, "met": True,
        "search": "forward greedy by leave-one-out gain on the budget set, re-measured per step, then backward "
                  "pruning; among configurations meeting the budget the fastest measured here" if meter.latency else
                  "forward greedy by leave-one-out gain on the budget set, re-measured per step, then backward "
                  "pruning; among configurations meeting the budget the one with the fewest float nodes",
        "float_islands": [{"group": g, "nodes": meter.groups[g], "leave_out_gain_pt": gain_of.get(g, {}).get("gain_pt"),
                           "why": f"keeping it float alone cut the budget-set drop by "
                                  f"{gain_of.get(g, {}).get('gain_pt', 0):.2f} pt"} for g in islands],
        "groups": {g: len(v) for g, v in meter.groups.items()},
        "budget_set": {"frames": len(meter.sets["budget"]), "default": default,
                       "chosen": meter.measure(islands, "budget")},
        "held_back_set": {"frames": len(meter.sets["held-back"]), "default": meter.measure((), "held-back"),
                          "chosen": meter.measure(islands, "held-back")},
        "leave_out_gains": gains, "steps": steps,
    }
    if meter.latency:
        from ..doctor import cpu_report

        record["latency"] = {"fp32_ms": round(float(meter.fp32_latency or 0), 3), "default_ms": default["latency_ms"],
                             "chosen_ms": chosen["latency_ms"], "threads": meter.threads,
                             "cost_ms": round(chosen["latency_ms"] - default["latency_ms"], 3),
                             "chosen_vs_fp32": round(chosen["latency_ms"] / float(meter.fp32_latency or 1), 3),
                             "cpu": cpu_report()}
    return BudgetResult(list(islands), meter.kept_for(islands), record, steps)


# -- export integration ---------------------------------------------------------------------------------------------

def budgeted_kept_float(ctx: Any, target: str, flavour: QuantFlavour) -> tuple[list[KeptFloat], dict[str, Any]]:
    """`--max-miou-drop` inside an export: (kept-float list, manifest record) for one INT8 target's flavour."""
    key = f"budget:{flavour.name}"
    if key not in ctx.cache:
        opts = ctx.options
        pairs = ctx.cache.get("val_pairs")
        if not pairs:
            raise SegedgeError("--max-miou-drop needs labelled frames to measure the drop: add --val DIR (a labelled "
                               "dataset folder such as CamVid)")
        table, _ = ctx.calibration()
        contract = ctx.manifest.contract
        frames = labelled_set(pairs, ctx.make_input, "val")
        budget, held, split = split_budget(frames)
        ctx.progress(f"--max-miou-drop {opts.max_miou_drop:g}: searching float islands for {target} on "
                     f"{len(budget)} budget frames ({len(held)} held back)")
        meter = VariantMeter(ctx.pre_quant_model(), ctx.fp32_model, table, flavour, [budget, held],
                             contract.num_classes, str(contract.family or ""), "block", contract.model,
                             opts.keep_float, opts.quantize_all, threads=1, latency=target == "ort-int8",
                             work_dir=ctx.work_dir, progress=ctx.progress)
        res = budget_search(meter, float(opts.max_miou_drop))
        ctx.cache[key] = (res.kept_float, {**res.record, "target": target, **split})
    return ctx.cache[key]


def check_budget(value: Any) -> float | None:
    """--max-miou-drop: None, or a finite number of mIoU points ≥ 0."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not np.isfinite(v) or v < 0:
        raise SegedgeError(f"--max-miou-drop must be a number of mIoU points ≥ 0 (e.g. 0.3), got '{value}'")
    return v


# -- sensitivity of an existing export folder (segedge quantize sensitivity) ---------------------------------------

def _export_inputs(folder: Path, target: str) -> tuple[Any, Any, Any, Any]:
    """(manifest, FP32 ModelProto without metadata, calibration table, the target's scope) of an export folder."""
    import onnx

    from ..contract import Manifest
    from .calibration import CalibrationTable

    manifest = Manifest.read(folder)
    if "onnx" not in manifest.targets:
        raise SegedgeError(f"{folder} has no FP32 ONNX (target onnx); re-export it with `segedge export`")
    entry = manifest.targets.get(target)
    named = (entry.get("calibration") or {}).get("table") if entry is not None else None
    tables = [folder / named] if named else sorted(folder.glob("calibration.*.json"))
    if not tables or not tables[0].is_file():
        raise SegedgeError(f"{folder} holds no calibration table: export an INT8 target first (segedge export "
                           f"--target {target} --calib …)")
    try:
        table = CalibrationTable.load(tables[0])
    except (ValueError, KeyError, OSError) as e:
        raise SegedgeError(f"{tables[0]} is not a readable calibration table ({e}); re-export the INT8 target") from e
    fp32 = onnx.load(str(folder / manifest.targets["onnx"].file))
    del fp32.metadata_props[:]
    scope = ((entry.get("quantization") or {}).get("scope") if entry is not None else None) or "auto"
    return manifest, fp32, table, scope


def _check_table_fits(pre_model: Any, table: Any, folder: Path) -> None:
    """The table's tensors must be this graph's (a table of another graph would quantize with wrong ranges)."""
    names = {o for n in pre_model.graph.node for o in n.output} | {i.name for i in pre_model.graph.input}
    found = sum(k in names for k in table.ranges)
    if found < 0.9 * max(len(table.ranges), 1):
        raise SegedgeError(f"the calibration table in {folder} names {len(table.ranges)} tensors but only {found} are "
                           "in its model.onnx: the folder mixes two exports; re-export the INT8 target")


def export_sensitivity(folder: str | Path, target: str, val: str | Path, val_count: int | None = None,
                       group_by: str = "block", threads: int = 1, progress: Callable[[str], None] | None = None,
                       write: bool = True) -> dict[str, Any]:
    """The sensitivity report of an export folder's FP32 graph for `target`, on `val`'s labelled frames; written as
    sensitivity.<target>.{json,md,png} in the folder unless write=False."""
    import tempfile

    import onnx

    from .assemble import pre_quant as _pre_quant

    folder, say = Path(folder), progress or (lambda msg: None)
    check_group_by(group_by)
    if not (folder / "manifest.json").is_file():
        raise SegedgeError(f"{folder} is not an export folder (no manifest.json); pass the folder `segedge export` "
                           "wrote")
    if target == "openvino-int8":
        return _openvino_sensitivity(folder, val, val_count, group_by, threads, say, write)
    if target == "coreml-w8a8":
        return _coreml_sensitivity(folder, val, val_count, group_by, threads, say, write)
    manifest, fp32, table, scope = _export_inputs(folder, target)
    c = manifest.contract
    flavour = target_flavour(target, str(c.family or ""), scope if target == "ort-int8" else "auto")
    frames, make = _val_frames(c, val, val_count, say)
    with tempfile.TemporaryDirectory(prefix="segedge-sensitivity-") as td:
        fp32_path = Path(td) / "model.fp32.onnx"
        onnx.save(fp32, str(fp32_path))
        pre = _pre_quant(fp32_path, Path(td), say)
        _check_table_fits(onnx.load(str(pre)), table, folder)
        say("measuring FP32")
        meter = VariantMeter(pre, fp32, table, flavour, [frames], c.num_classes, str(c.family or ""), group_by,
                             c.model, threads=threads, latency=target == "ort-int8", work_dir=Path(td), progress=say)
        report = sensitivity(meter, "val")
    from ..benchmarks.targets import portable_path  # reports may be committed: no machine paths in them

    report.update(target=target, group_by=group_by, export=portable_path(folder), model=c.model, family=c.family,
                  val=portable_path(val), calibration=table.summary(), threads=threads)
    return _finish(report, folder, target, meter.latency, write)


def _finish(report: dict[str, Any], folder: Path, target: str, latency: bool, write: bool) -> dict[str, Any]:
    """The CPU when latency was measured; the report files written into the export folder."""
    if latency:
        from ..doctor import cpu_report

        report["cpu"] = cpu_report()
    if write:
        report["files"] = [p.name for p in write_report(folder, target, report)]
    return report


def _val_frames(c: Any, val: str | Path, val_count: int | None, say: Callable[[str], None]
                ) -> tuple[LabelledSet, Callable[[np.ndarray], np.ndarray]]:
    """(the first `val_count` labelled frames of `val` prepared per the contract `c`, the frame → input function)."""
    from ..data.datasets import open_labelled_folder

    ds = open_labelled_folder(val, c.num_classes)
    n = len(ds) if val_count is None else min(int(val_count), len(ds))
    make = _input_maker(c)
    say(f"reading {n} labelled frames")
    frames = labelled_set((ds[i] for i in range(n)), make, "val", [ds.samples[i].image_path.name for i in range(n)])
    return frames, make


def _input_maker(c: Any) -> Callable[[np.ndarray], np.ndarray]:
    """BGR frame → model input batch, per the contract `c`."""
    from .assemble import make_input as _make_input

    return lambda f: _make_input(f, c.input.size, c.input.io == "raw", c.input.color_order, c.input.mean, c.input.std)


def _openvino_sensitivity(folder: Path, val: str | Path, val_count: int | None, group_by: str, threads: int,
                          say: Callable[[str], None], write: bool) -> dict[str, Any]:
    """export_sensitivity for openvino-int8: one NNCF run, FakeQuantize bypass per variant (sensitivity_openvino)."""
    import onnx

    from ..benchmarks.targets import portable_path
    from ..contract import Manifest
    from .sensitivity_openvino import openvino_meter

    manifest = Manifest.read(folder)
    if "onnx" not in manifest.targets:
        raise SegedgeError(f"{folder} has no FP32 ONNX (target onnx); re-export it with `segedge export`")
    c = manifest.contract
    frames, make = _val_frames(c, val, val_count, say)
    fp32_onnx = onnx.load(str(folder / manifest.targets["onnx"].file))
    meter = openvino_meter(folder, manifest, fp32_onnx, frames, group_by, threads, make, say)
    report = sensitivity(meter, "val")  # type: ignore[arg-type] - the meter has VariantMeter's interface
    report.update(target="openvino-int8", group_by=group_by, export=portable_path(folder), model=c.model,
                  family=c.family, val=portable_path(val), threads=threads, inference_precision_hint=meter.hint,
                  calibration=manifest.targets["openvino-int8"].calibration,
                  method="one NNCF run; each variant bypasses the float groups' FakeQuantize ops (their weights keep "
                         "their int8 rounding)")
    return _finish(report, folder, "openvino-int8", meter.latency, write)


def _coreml_sensitivity(folder: Path, val: str | Path, val_count: int | None, group_by: str, threads: int,
                        say: Callable[[str], None], write: bool) -> dict[str, Any]:
    """export_sensitivity for coreml-w8a8: one coremltools calibration, fake-quant toggled off per variant, measured
    on the PyTorch proxy (sensitivity_coreml)."""
    import torch

    from ..benchmarks.targets import portable_path
    from ..contract import Manifest
    from .sensitivity_coreml import coreml_meter

    if group_by != "block":
        raise SegedgeError("coreml-w8a8 sensitivity groups by module block only; drop --group-by op")
    manifest = Manifest.read(folder)
    c = manifest.contract
    frames, make = _val_frames(c, val, val_count, say)
    torch.set_num_threads(max(1, int(threads)))
    meter = coreml_meter(folder, manifest, frames, make, say)
    report = sensitivity(meter, "val")  # type: ignore[arg-type] - the meter has VariantMeter's interface
    entry = manifest.targets.get("coreml-w8a8")
    report.update(target="coreml-w8a8", group_by=group_by, export=portable_path(folder), model=c.model,
                  family=c.family, val=portable_path(val), threads=threads,
                  calibration=entry.calibration if entry is not None else None,
                  method="PyTorch fake-quant proxy (FP32, no FP16 rounding), one coremltools calibration; each "
                         "variant disables the float groups' weight and activation fake-quants")
    return _finish(report, folder, "coreml-w8a8", False, write)
