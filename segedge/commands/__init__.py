"""CLI command modules (each exposes `register(app)`) and the option helpers they share.

Commands import what they need (models, export, runtimes) inside their functions, so one broken optional
dependency cannot take the whole CLI down and `--help` stays quick.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import typer
from rich.console import Console

# Rich consoles resolve sys.stdout / sys.stderr when they print, so test runners that swap the streams see output.
console = Console()
err_console = Console(stderr=True)


def model_option(help: str = "Model name or alias (`segedge models` lists them).") -> Any:
    """A required --model option."""
    return typer.Option(..., "--model", "-m", help=help)


def input_size_option(help: str = "Input HEIGHTxWIDTH, e.g. 384x512 (default: the model's).") -> Any:
    """An optional --input-size option, parsed later by `resolve_input_size`."""
    return typer.Option(None, "--input-size", help=help)


def num_classes_option(help: str = "Number of classes of the head (default: the checkpoint's, else 150).") -> Any:
    """An optional --num-classes option (at least 1)."""
    return typer.Option(None, "--num-classes", min=1, help=help)


def weights_option(help: str = "Checkpoint file or folder (segedge, Hugging Face, NVlabs, mmseg, TopFormer), "
                              "or 'default' for the embedded demo weights.") -> Any:
    """An optional --weights option."""
    return typer.Option(None, "--weights", help=help)


def json_option(help: str = "Print machine-readable JSON only.") -> Any:
    """A --json flag."""
    return typer.Option(False, "--json", help=help)


_SIZE_RE = re.compile(r"^\s*\d+\s*([x×*,]\s*\d+\s*)?$", re.IGNORECASE)


def parse_size_strict(text: str) -> tuple[int, int]:
    """Parse 'HxW' or 'N' (square); anything else, such as '384x' or 'abc', is a one-line error."""
    from ..errors import SegedgeError
    from ..models.registry import parse_size

    if not _SIZE_RE.match(str(text)):
        raise SegedgeError(f"cannot parse input size '{text}': write it as HEIGHTxWIDTH, e.g. 384x512")
    return parse_size(text)


def resolve_input_size(model: str, text: Optional[str], default: Optional[tuple[int, int] | list[int]] = None
                       ) -> tuple[int, int]:
    """Parse an --input-size string (or take `default`, else the model's default) and validate it for the model."""
    from ..models.registry import get_spec, validate_input_size

    spec = get_spec(model)
    if text is not None:
        size = parse_size_strict(text)
    elif default is not None:
        size = (int(default[0]), int(default[1]))
    else:
        size = spec.default_input_size
    return validate_input_size(spec.name, size)


def replace_option(func: Any, name: str, option: Any) -> Any:
    """A wrapper of the command `func` whose parameter `name` has `option` (a typer.Option) as its default, e.g. help
    text generated from a registry when the command is registered."""
    import functools
    import inspect

    sig = inspect.signature(func)
    params = [p.replace(default=option) if p.name == name else p for p in sig.parameters.values()]

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return command


def echo_json(obj: Any) -> None:
    """Print an object as indented JSON on stdout, nothing else."""
    typer.echo(json.dumps(obj, indent=2, default=str))


__all__ = ["console", "echo_json", "replace_option", "err_console", "input_size_option", "json_option",
           "model_option", "num_classes_option", "parse_size_strict", "resolve_input_size", "weights_option"]
