"""Atomic file writing: a temp file in the target folder, fsync, then rename, so no half-written artifact survives."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import SegedgeError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask can only be read by setting it, which races with threads


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block finishes without error."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SegedgeError(f"cannot write to {path.parent}: {e.strerror}; choose a writable output folder") from e
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        if tmp_path.exists():  # mkstemp makes 0600 files: give the artifact the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text (UTF-8) to `path` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON (indented, UTF-8) to `path` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def path_files(path: str | os.PathLike) -> list[Path]:
    """A file itself, or every file under a folder artifact (an .mlpackage) in a stable order."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    return sorted((f for f in p.rglob("*") if f.is_file()), key=lambda f: f.relative_to(p).as_posix())


def path_size(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder; 0 when it does not exist."""
    p = Path(path)
    if not p.exists():
        return 0
    return sum(f.stat().st_size for f in path_files(p))


def sha256_path(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a folder: its files' relative paths and digests in order."""
    import hashlib

    p = Path(path)
    if not p.is_dir():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in path_files(p):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def read_image_file(path: str | os.PathLike) -> Any:
    """An image file as H×W×3 uint8 BGR, or None when it is missing or not a decodable image.

    The one image reader of segedge (datasets, calibration frames, `segedge run` image inputs): non-ASCII paths work
    (np.fromfile + cv2.imdecode), 16-bit images keep their high byte, grayscale and BGRA become BGR.
    """
    import cv2
    import numpy as np

    try:
        data = np.fromfile(str(path), np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if img is None:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return as_bgr(img)


def as_bgr(img: Any) -> Any:
    """An 8-bit image as contiguous H×W×3 BGR (grayscale and BGRA converted), or None when it is not one."""
    import cv2
    import numpy as np

    if not isinstance(img, np.ndarray) or img.size == 0 or img.dtype != np.uint8:
        return None
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(img[:, :, :3])


def ensure_writable_dir(folder: str | os.PathLike, what: str, fix: str = "choose a folder you may write to",
                        error: type[SegedgeError] = SegedgeError) -> Path:
    """Create `folder` if needed and check that files can be created in it, else one line: "cannot write {what}:
    {why}; {fix}" (a parent that is a file is named as such: mkdir's "File exists" would mislead)."""
    folder = Path(folder) if str(folder) else Path(".")
    blocker = next((a for a in (folder, *folder.parents) if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise error(f"cannot write {what}: {blocker} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".segedge-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise error(f"cannot write {what}: {e.strerror or e}; {fix}") from e
    return folder
