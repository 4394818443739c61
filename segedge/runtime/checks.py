"""The runtime checks its contract on load: the artifact is the file the manifest describes (size and sha256), and
the model's inputs and outputs are the ones the contract promises (dtype, size, class count).

`verify="fast"` (default) compares sizes and reuses a cached sha256 while a file's size, mtime and inode are
unchanged (cache in $XDG_CACHE_HOME/segedge, best effort); `"full"` always hashes; `"off"` skips the file checks
(the I/O checks always run: they cost nothing and catch a model that would fail on its first frame).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..contract import MANIFEST_NAME, ModelContract, TargetEntry
from ..errors import SegedgeError
from ..io import path_size
from .backends.base import Backend

VERIFY_MODES = ("fast", "full", "off")


def check_verify_mode(mode: Any) -> str:
    """Validate `verify=`."""
    m = str(mode).lower() if mode is not None else "fast"
    if m not in VERIFY_MODES:
        raise SegedgeError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {mode!r}")
    return m


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "segedge" / "sha256.json"


def _load_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, Any]) -> None:
    try:
        from ..io import write_json_atomic

        write_json_atomic(_cache_file(), dict(list(cache.items())[-512:]))  # bounded
    except (OSError, SegedgeError):
        pass  # a read-only home on a device: hashing again next time is fine


def _stamp(path: Path) -> list[Any]:
    """What must not change for a cached digest to stay valid: size, mtime and inode of the file, or of every file
    of a folder artifact (an .mlpackage), with its relative path."""
    from ..io import path_files

    if not path.is_dir():
        st = path.stat()
        return [st.st_size, st.st_mtime_ns, st.st_ino]
    out: list[Any] = []
    for f in path_files(path):
        st = f.stat()
        out.append([f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino])
    return out


def file_sha256(path: Path, mode: str) -> str:
    """sha256 of `path` (a file or a folder artifact), from the cache in fast mode when its stamp is unchanged."""
    from ..io import sha256_path

    key = os.path.realpath(path)
    stamp = _stamp(path)
    cache = _load_cache() if mode == "fast" else {}
    hit = cache.get(key)
    if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = sha256_path(path)
    if mode == "fast":
        cache.pop(key, None)
        cache[key] = {"stamp": stamp, "sha256": digest}
        _save_cache(cache)
    return digest


def verify_files(folder: Path, target: str, entry: TargetEntry, mode: str) -> None:
    """The artifact and its companions are the files the manifest describes, or one line naming the fix."""
    if mode == "off":
        return
    recorded = {entry.file: (entry.size_bytes, entry.sha256),
                **{c: (m.get("size_bytes"), m.get("sha256")) for c, m in entry.companion_files.items()}}
    for name, (size, digest) in recorded.items():
        p = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise SegedgeError(f"{folder}/{MANIFEST_NAME} names {name} for target '{target}', outside the export "
                               "folder; re-run `segedge export`")
        if not p.exists():
            raise SegedgeError(f"{folder}/{MANIFEST_NAME} lists {name} for target '{target}' but the file is "
                               "missing; re-run `segedge export`")
        fix = "re-run `segedge export` (or load with verify='off' to run it anyway)"
        got = path_size(p)
        if size is not None and got != int(size):
            raise SegedgeError(f"{p.name} is {got} bytes but {MANIFEST_NAME} recorded {size} for target "
                               f"'{target}': the file was replaced or truncated; {fix}")
        if digest and file_sha256(p, mode) != digest:
            raise SegedgeError(f"{p.name} does not match the sha256 in {MANIFEST_NAME} for target '{target}': the "
                               f"file was replaced or corrupted; {fix}")


def check_io(backend: Backend, contract: ModelContract, name: str) -> None:
    """The opened model takes and returns what the contract says (dtype, static size, classes), or one line."""
    inp = contract.input
    spec = backend.input_spec()
    fix = "re-export the model with `segedge export` (its manifest and file disagree)"
    if spec.dtype != inp.dtype:
        raise SegedgeError(f"{name} takes {spec.dtype} input but its contract says {inp.dtype} (io {inp.io}); {fix}")
    if len(spec.shape) == 4:
        hw = spec.shape[1:3] if inp.layout == "NHWC" else spec.shape[2:4]
        for got, want, what in zip(hw, inp.size, ("height", "width")):
            if got is not None and got != want:
                raise SegedgeError(f"{name} takes input {what} {got} but its contract says {want}; {fix}")
    out = backend.output_spec()
    if out is not None and contract.output.kind == "logits" and len(out.shape) == 4 and out.shape[1] is not None \
            and out.shape[1] != contract.num_classes:
        raise SegedgeError(f"{name} outputs {out.shape[1]} classes but its contract says {contract.num_classes}; "
                           f"{fix}")


__all__ = ["VERIFY_MODES", "check_io", "check_verify_mode", "file_sha256", "verify_files"]
