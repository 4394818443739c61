"""Export folders as transactions: at every instant, SIGKILL included, the folder holds the complete old export or
the complete new one.

An export builds the folder's whole next state in a staging folder beside it (`.NAME.segedge-staging-PID-ID`, same
file system): the new artifacts, the calibration table, hard links to every old file that stays (targets still
valid for the new graph, files segedge does not manage), then manifest.json. It then swaps the two folders in one
step (Linux `renameat2(RENAME_EXCHANGE)`), and removes the old state. Where the exchange is not available it renames
the old folder aside and the new one into place, and the next export repairs a crash between those two renames.
Temporary files of calibration and quantization live in the staging folder's `.work/`, so a killed run leaves
nothing outside it, and the next run removes staging folders whose process is gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Iterable

from ..errors import ExportError
from ..testhooks import pause_point

STAGING_TAG = ".segedge-staging"
OLD_TAG = ".segedge-old"
WORK_DIR = ".work"
LEGACY_STAGING_PREFIX = ".staging-"  # segedge 0.2 staged inside the export folder
_RENAME_EXCHANGE = 2


def _renameat2() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or another libc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE)  # type: ignore
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # file system without exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def recover(out: Path) -> list[str]:
    """Repair and clean what killed exports left beside and inside `out`; returns what was done (for notes)."""
    done: list[str] = []
    parent = out.parent
    if not parent.is_dir():
        return done
    olds = sorted(parent.glob(f".{out.name}{OLD_TAG}-*"))
    if olds and not out.exists():
        os.replace(olds[-1], out)  # killed between the two fallback renames: the old export goes back
        done.append(f"restored {out} from an interrupted export")
        olds = olds[:-1]
    for p in olds:
        shutil.rmtree(p, ignore_errors=True)
    for p in parent.glob(f".{out.name}{STAGING_TAG}-*"):
        pid = p.name[len(f".{out.name}{STAGING_TAG}-"):].split("-")[0]
        if not pid.isdigit() or not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}, left by an export that was killed")
    if out.is_dir():
        for p in out.iterdir():
            if p.is_dir() and p.name.startswith(LEGACY_STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed {p.name}, left by an export that was killed")
            elif p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
    return done


def _link_into(src: Path, dst: Path) -> None:
    """Hard-link a file (or every file of a folder, e.g. an .mlpackage) at `dst`; copy where links fail."""
    if src.is_dir():
        dst.mkdir()
        for child in src.iterdir():
            _link_into(child, dst / child.name)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class FolderTransaction:
    """The next state of one export folder, built beside it and swapped in by `commit`."""

    def __init__(self, out: Path) -> None:
        self.out = Path(os.path.abspath(out))
        self.notes = recover(self.out)
        self.stage = self.out.parent / f".{self.out.name}{STAGING_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.stage.mkdir()
            self.work.mkdir()
        except OSError as e:
            raise ExportError(f"cannot create a staging folder beside {out}: {e.strerror or e}; choose a writable "
                              "--out") from e

    @property
    def work(self) -> Path:
        """Scratch space for intermediates and temp files (never committed)."""
        return self.stage / WORK_DIR

    def path(self, name: str) -> Path:
        """Where the committed file `name` is staged."""
        return self.stage / name

    def keep(self, names: Iterable[str]) -> None:
        """Carry these entries of the current folder into the next state (hard links; nothing is copied twice)."""
        for name in names:
            src, dst = self.out / name, self.stage / name
            if (src.exists() or src.is_symlink()) and not (dst.exists() or dst.is_symlink()):
                _link_into(src, dst)

    def commit(self) -> None:
        """Swap the staged state in (the manifest must already be staged); the old state is removed after."""
        shutil.rmtree(self.work, ignore_errors=True)
        pause_point("export:before-swap")
        if not self.out.exists() or (self.out.is_dir() and not any(self.out.iterdir())):
            os.replace(self.stage, self.out)  # nothing to keep: the staged folder takes the name (empty dir too)
            return
        if exchange(self.stage, self.out):
            pause_point("export:swapped")
            shutil.rmtree(self.stage, ignore_errors=True)  # now holds the old state
            return
        old = self.out.parent / f".{self.out.name}{OLD_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(self.out, old)
        pause_point("export:between-renames")
        os.replace(self.stage, self.out)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Drop the staged state; the folder is untouched."""
        shutil.rmtree(self.stage, ignore_errors=True)
