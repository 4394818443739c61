"""User-facing errors: one line naming the problem and the fix, shown by the CLI without a traceback."""

from __future__ import annotations

import re


class SegedgeError(Exception):
    """An error caused by user input (bad flag, file, checkpoint, data) rather than a bug in segedge."""


class CheckpointError(SegedgeError):
    """A checkpoint could not be read or does not fit the requested model."""


class DataError(SegedgeError):
    """A dataset folder, image or label file is missing or malformed."""


class ExportError(SegedgeError):
    """An export step failed (tolerance, unsupported option, unwritable output)."""


class SegedgeWarning(UserWarning):
    """Something works but may not be what the user expects (e.g. a CPU-tuned export running on another CPU)."""


class LabelRangeError(DataError):
    """Label values beyond the dataset's classes: a wrong --num-classes or dataset type, never skipped."""


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The first informative line of an exception's message (its type name when empty), cut to `limit` characters.

    Lines that are only a source location (OpenVINO's "Exception from src/inference/src/cpp/core.cpp:84:") are
    skipped: they name where the library failed, not why.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not _LOCATION_ONLY.match(ln)]
    return (useful or lines or [type(exc).__name__])[0][:limit]


_LOCATION_ONLY = re.compile(r"^(Exception from )?[\w./\\-]+\.(cpp|cc|c|hpp|h):\d+:?$")
