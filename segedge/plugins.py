"""Plugin packages: every module in a package (export targets, runtime backends) registers itself on import."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Iterable


def import_plugins(package: str, path: Iterable[str], skip: Iterable[str] = ("base",),
                   tolerate_import_errors: bool = False) -> list[str]:
    """Import each public module of `package` (its `__path__` given as `path`); returns the names imported."""
    skipped = set(skip)
    done = []
    for mod in pkgutil.iter_modules(list(path)):
        if mod.name.startswith("_") or mod.name in skipped:
            continue
        try:
            importlib.import_module(f"{package}.{mod.name}")
        except ImportError:
            if not tolerate_import_errors:
                raise
            continue  # a plugin whose module cannot even import is simply not offered
        done.append(mod.name)
    return done
