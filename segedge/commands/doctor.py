"""`segedge doctor`: toolkits (version, availability, why not), CPU features, GPUs, and what builds and runs here."""

from __future__ import annotations

import typer

from . import echo_json, json_option


def doctor_cmd(as_json: bool = json_option()) -> None:
    """Report what this machine can do: every toolkit, the CPU's ISA flags, GPUs, which targets can be built and
    run here, and plug-in modules that failed to import."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..doctor import environment_report

    rep = environment_report()
    if as_json:
        echo_json(rep)
        return
    con = Console()
    if not con.is_terminal:  # piped or captured: do not squeeze the tables
        con = Console(width=max(con.width, 160))
    cpu, gpus = rep["cpu"], rep["gpus"]
    con.print(f"segedge {rep['segedge']}  python {rep['python']}  {rep['os']}", highlight=False)
    flags = ", ".join(k for k, v in cpu["isa"].items() if v) or "none of note"
    con.print(f"CPU: {cpu['model']} ({cpu['arch']}, {cpu['cores_available']} cores available); {flags}",
              highlight=False)
    seen = [f"{g['name']} (sm {g['compute_capability']})" for g in gpus["nvidia"]]
    if gpus["jetson"]:
        seen.append(f"{gpus['jetson']['model']} ({gpus['jetson']['l4t_release']})")
    if gpus["apple_silicon"]:
        seen.append("Apple silicon")
    con.print(f"GPUs: {', '.join(seen) or 'none seen'}", highlight=False)

    tk = Table(title="toolkits", title_justify="left")
    for col in ("toolkit", "version", "available", "runs artifacts here", "why not / install"):
        tk.add_column(col)
    for t in rep["toolkits"]:
        why = t["reason"] or t["run_reason"] or ""
        tk.add_row(t["title"], t["version"] or "-", "yes" if t["available"] else "no",
                   "yes" if t["runs_here"] else "no", escape(why))
    con.print(tk)
    tg = Table(title="targets", title_justify="left")
    for col in ("target", "precision", "build here", "run here", "why not"):
        tg.add_column(col)
    for t in rep["targets"]:
        tg.add_row(t["name"], t["precision"], "yes" if t["build_here"] else "no", "yes" if t["run_here"] else "no",
                   escape(t["build_reason"] or t["run_reason"] or ""))
    con.print(tg)
    for mod, err in rep["plugin_errors"].items():
        con.print(f"[red]plug-in {escape(mod)} failed to import:[/] {escape(err)}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the command to the CLI."""
    app.command("doctor")(doctor_cmd)
