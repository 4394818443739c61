"""`segedge models` (the zoo as a table) and `segedge info` (one model's size and cost)."""

from __future__ import annotations

from typing import Optional

import typer

from . import (console, echo_json, input_size_option, json_option, model_option,
               num_classes_option, resolve_input_size, weights_option)

TABLE_CLASSES = 150  # ADE20K, the convention of both papers' tables


def models_cmd(
    as_json: bool = json_option(),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recount instead of reading the on-disk cache."),
) -> None:
    """List every model: aliases, params and GMACs at its default input size (150 classes), demo weights."""
    from rich import box
    from rich.table import Table

    from ..models.complexity import CONVENTION, cached_flops
    from ..models.pretrained import default_weights
    from ..models.registry import get_spec, list_models

    rows = []
    for name in list_models():
        spec = get_spec(name)
        c = cached_flops(name, spec.default_input_size, TABLE_CLASSES, use_cache=not no_cache)
        demo = default_weights(name)
        rows.append({
            "name": name, "aliases": list(spec.aliases), "family": spec.family, "params": c["params"],
            "gmacs": c["gmacs"], "gflops": c["gflops"], "input_size": list(spec.default_input_size),
            "output_stride": spec.output_stride, "size_multiple": spec.size_multiple,
            "demo_weights": str(demo) if demo else None,
        })
    if as_json:
        echo_json({"num_classes": TABLE_CLASSES, "convention": CONVENTION, "models": rows})
        return
    table = Table(title=f"segedge models ({TABLE_CLASSES} classes, batch 1)", caption=CONVENTION,
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    for col, kw in (("name", {"no_wrap": True}), ("aliases", {"ratio": 1}), ("family", {"no_wrap": True}),
                    ("params", {"justify": "right", "no_wrap": True}), ("GMACs", {"justify": "right"}),
                    ("input", {"no_wrap": True}), ("stride", {"justify": "right"}), ("demo", {})):
        table.add_column(col, **kw)
    for r in rows:
        table.add_row(r["name"], " ".join(r["aliases"]), r["family"], f"{r['params'] / 1e6:.2f} M",
                      f"{r['gmacs']:.2f}", "x".join(map(str, r["input_size"])), str(r["output_stride"]),
                      "yes" if r["demo_weights"] else "no")
    console.print(table)


def info_cmd(
    model: str = model_option(),
    input_size: Optional[str] = input_size_option(
        "Input HEIGHTxWIDTH, e.g. 384x512 (default: the checkpoint's, else the model's)."),
    num_classes: Optional[int] = num_classes_option(),
    weights: Optional[str] = weights_option(),
    as_json: bool = json_option(),
) -> None:
    """Params, GMACs and GFLOPs of one model at one input size, with the counting convention."""
    from ..models import create_model
    from ..models.complexity import cached_flops
    from ..models.registry import get_spec

    spec = get_spec(model)
    ckpt_info = None
    default_size = None
    if weights is not None:
        # Build on the CPU with the real checkpoint: this validates the file and fixes num_classes.
        net = create_model(spec.name, num_classes=num_classes, weights=weights)
        cfg = net.pretrained_cfg
        num_classes = cfg["num_classes"]
        default_size = cfg["input_size"]
        ckpt_info = {"path": cfg["weights"], "format": cfg["weights_format"], "sha256": cfg["weights_sha256"]}
        del net
    size = resolve_input_size(spec.name, input_size, default_size)
    n_cls = int(num_classes or TABLE_CLASSES)
    c = cached_flops(spec.name, size, n_cls)
    out_hw = [size[0] // spec.output_stride, size[1] // spec.output_stride]
    result = {
        "model": spec.name, "family": spec.family, "description": spec.description,
        "input_size": list(size), "num_classes": n_cls, "params": c["params"], "macs": c["macs"],
        "gmacs": c["gmacs"], "gflops": c["gflops"], "macs_by_kind": c["macs_by_kind"],
        "output_stride": spec.output_stride, "output_size": out_hw, "size_multiple": spec.size_multiple,
        "weights": ckpt_info, "convention": c["convention"], "inference_form": c.get("inference_form"),
    }
    if as_json:
        echo_json(result)
        return
    from rich.table import Table

    t = Table(title=f"{spec.name}: {spec.description}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    t.add_row("input size", f"{size[0]}x{size[1]} (H and W multiples of {spec.size_multiple})")
    t.add_row("classes", str(n_cls))
    t.add_row("params", f"{c['params']:,} ({c['params'] / 1e6:.2f} M)")
    t.add_row("GMACs", f"{c['gmacs']:.3f}")
    t.add_row("GFLOPs", f"{c['gflops']:.3f} (= 2 × GMACs)")
    inf = c.get("inference_form")
    if inf:  # what `segedge export` traces by default (--fold)
        t.add_row("exported form", f"{inf['gmacs']:.3f} GMACs, {inf['params'] / 1e6:.2f} M params "
                                   f"({', '.join(inf['folded'])} folded; --no-fold exports as trained)")
    t.add_row("output", f"logits {n_cls}x{out_hw[0]}x{out_hw[1]} (stride {spec.output_stride})")
    if ckpt_info:
        t.add_row("weights", f"{ckpt_info['path']} ({ckpt_info['format']}, sha256 {ckpt_info['sha256'][:12]}…)")
    console.print(t)
    console.print(f"convention: {c['convention']}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `models` and `info` to the CLI."""
    app.command("models")(models_cmd)
    app.command("info")(info_cmd)
