"""User-facing errors: one line naming the problem and the fix, shown by the CLI without a traceback."""

from __future__ import annotations


class SegedgeError(Exception):
    """An error caused by user input (bad flag, file, checkpoint, data) rather than a bug in segedge."""


class CheckpointError(SegedgeError):
    """A checkpoint could not be read or does not fit the requested model."""


class DataError(SegedgeError):
    """A dataset folder, image or label file is missing or malformed."""


class ExportError(SegedgeError):
    """An export step failed (tolerance, unsupported option, unwritable output)."""


class LabelRangeError(DataError):
    """Label values beyond the dataset's classes: a wrong --num-classes or dataset type, never skipped."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (its type name when empty), cut to `limit` characters."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
