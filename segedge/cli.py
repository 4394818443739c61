"""The `segedge` command line: a Typer app assembled from the modules in segedge/commands/.

`main()` is the console-script entry point. It turns every SegedgeError (bad user input) into one line
`error: <message>` on stderr with exit code 2, Ctrl-C into exit code 130, and leaves tracebacks for real bugs only.
"""

from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

import typer

from . import __version__
from .errors import SegedgeError

# Each module in segedge/commands/ exposes `register(app)`; add one line here per new command module.
COMMAND_MODULES = [
    "models",    # segedge models, segedge info
    "train",     # segedge train
    "evaluate",  # segedge eval
    "export",    # segedge export
    "bench",     # segedge bench
]

# Recent Typer vendors Click (typer._click), older Typer uses click itself: find the classes through public names.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_NoArgsIsHelpError = getattr(sys.modules[_ClickException.__module__], "NoArgsIsHelpError", None)

app = typer.Typer(
    name="segedge",
    help="SegFormer and TopFormer from PyTorch to edge runtimes (ONNX Runtime, OpenVINO, TensorRT, CoreML), "
         "with the cost of each deployment measured.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # bugs keep a plain traceback; user errors never reach one
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"segedge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", is_eager=True, callback=_version_callback,
                                           help="Print the segedge version and exit."),
) -> None:
    """SegFormer and TopFormer from PyTorch to edge runtimes, with the cost of each deployment measured."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.commands.{_name}").register(app)


def _fail(message: str, code: int) -> None:
    typer.echo(message, err=True)
    sys.exit(code)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the CLI; user errors become one `error:` line and a non-zero exit code, never a traceback."""
    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="segedge", standalone_mode=False)
    except SegedgeError as e:
        _fail(f"error: {str(e).strip()}", 2)
    except _ClickException as e:  # usage errors: unknown option, missing --model, bad int, ...
        if _NoArgsIsHelpError is not None and isinstance(e, _NoArgsIsHelpError):
            e.show()  # bare `segedge`: the help text
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(f"error: {e.format_message()}{hint}", e.exit_code)
    except typer.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:  # outside a command (e.g. during imports); inside one, Typer returns 130
        _fail("interrupted", 130)
    if rv == 130:
        _fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
