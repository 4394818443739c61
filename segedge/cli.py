"""The `segedge` command line: a Typer app assembled from the modules in segedge/commands/.

`main()` is the console-script entry point. It turns every SegedgeError (bad user input) into one line
`error: <message>` on stderr with exit code 2, Ctrl-C into exit code 130, and leaves tracebacks for real bugs only.
With SEGEDGE_DEBUG=1 a user error also prints the chain of exceptions that caused it (errors are raised `from` their
cause), for bug reports.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
import traceback
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
    "tune",      # segedge tune (the cpu target for an existing export folder)
    "bench",     # segedge bench
    "doctor",    # segedge doctor
    "run",       # segedge run
    "engine",    # segedge engine build
    "deploy",    # segedge deploy deepstream|triton
    "quantize",  # segedge quantize sensitivity
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


# Failures of the disk rather than of segedge or the input: one line naming the fix, as for user errors.
_DISK_ERRORS = {
    errno.ENOSPC: "free some space or choose another --out", errno.EDQUOT: "free some quota or choose another --out",
    errno.EACCES: "choose a folder you may write to", errno.EPERM: "choose a folder you may write to",
    errno.EROFS: "the file system is read-only: choose another --out",
}


def _missing_module_hint(module: str) -> str | None:
    """The install hint for an optional dependency (a registered toolkit, or one of the export extra's packages)."""
    from .toolkits import list_toolkits

    top = module.split(".")[0]
    for t in list_toolkits():
        if t.module == top:
            return t.install_hint
    if top in ("safetensors", "matplotlib", "onnxslim", "onnxscript"):
        return "pip install 'segedge[export]'"
    return None


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # docker stop, systemd and CI timeouts send SIGTERM: clean up exactly as for Ctrl-C


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Run the CLI; user errors become one `error:` line and a non-zero exit code, never a traceback."""
    try:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:  # not the main thread (embedded use): leave signals to the host
        pass
    try:
        rv = app(args=list(argv) if argv is not None else None, prog_name="segedge", standalone_mode=False)
    except SegedgeError as e:
        if os.environ.get("SEGEDGE_DEBUG", "").strip() not in ("", "0"):
            traceback.print_exception(e)  # the whole cause chain, for bug reports
        _fail(f"error: {str(e).strip()}", 2)
    except _ClickException as e:  # usage errors: unknown option, missing --model, bad int, ...
        if _NoArgsIsHelpError is not None and isinstance(e, _NoArgsIsHelpError):
            e.show()  # bare `segedge`: the help text
            sys.exit(e.exit_code)
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        _fail(f"error: {e.format_message()}{hint}", e.exit_code)
    except ModuleNotFoundError as e:
        hint = _missing_module_hint(e.name or "")
        if hint is None:
            raise  # not an optional dependency: a bug, keep the traceback
        _fail(f"error: this command needs {e.name}, which is not installed here: {hint}", 2)
    except OSError as e:
        if e.errno not in _DISK_ERRORS:
            raise  # a bug or an unexpected system failure: keep the traceback
        where = f" writing {e.filename}" if e.filename else ""
        _fail(f"error: {os.strerror(e.errno).lower()}{where}; {_DISK_ERRORS[e.errno]}", 1)
    except typer.Abort:
        _fail("aborted", 1)
    except KeyboardInterrupt:  # outside a command (e.g. during imports); inside one, Typer returns 130
        _fail("interrupted", 130)
    if rv == 130:
        _fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
