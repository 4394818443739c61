"""One registry helper for everything segedge looks up by name: models, export targets, runtime backends,
datasets and vendor toolkits.

A `Registry` maps names (and aliases) to items. Its items come from the modules of one package (each registers
itself on import), imported on first lookup, plus external plug-ins: modules named in the `SEGEDGE_PLUGINS`
environment variable (comma-separated) and entry points of the group `segedge.plugins`. A new toolkit is therefore
its toolkit, target and backend modules and no other edit. A plug-in module that fails to import is *reported*
(`Registry.errors`, `segedge doctor`, and in the unknown-name message), never silently dropped. Unknown names get
"did you mean …" suggestions.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .errors import SegedgeError, first_line

T = TypeVar("T")

PLUGINS_ENV = "SEGEDGE_PLUGINS"
ENTRY_POINT_GROUP = "segedge.plugins"

# module name → first line of its import error, for every plug-in module (segedge's own or external) that failed.
IMPORT_ERRORS: dict[str, str] = {}
_external_loaded = False


def _import(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any failure makes the plug-in unusable; it is reported, not raised
        IMPORT_ERRORS[module] = f"{type(e).__name__}: {first_line(e)}"
        return False
    IMPORT_ERRORS.pop(module, None)
    return True


def load_external_plugins() -> None:
    """Import the modules named in $SEGEDGE_PLUGINS and the `segedge.plugins` entry points (once per process)."""
    global _external_loaded
    if _external_loaded:
        return
    _external_loaded = True
    for name in (os.environ.get(PLUGINS_ENV) or "").split(","):
        if name.strip():
            _import(name.strip())
    try:
        from importlib.metadata import entry_points

        eps = entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # noqa: BLE001 - broken distribution metadata must not take segedge down
        eps = ()
    for ep in eps:
        _import(ep.module)


def import_errors() -> dict[str, str]:
    """Plug-in modules that failed to import so far, with the first line of their error."""
    return dict(IMPORT_ERRORS)


class Registry(Generic[T]):
    """Name → item, filled by the plug-in modules of `package` (imported lazily) and by external plug-ins."""

    def __init__(self, kind: str, package: str | None = None, key: Callable[[T], str] = lambda item: item.name,
                 skip: Iterable[str] = ("base",), normalize: Callable[[str], str] = lambda s: s.strip().lower(),
                 hint: str = "", modules: Iterable[str] | None = None) -> None:
        self.kind = kind
        self.package = package
        self._explicit = tuple(modules) if modules is not None else None  # the plug-in modules, when not all
        self._key = key
        self._skip = set(skip)
        self._normalize = normalize
        self._hint = hint
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._loaded = package is None and modules is None

    # -- filling ----------------------------------------------------------------------------------------------
    def register(self, item: T, aliases: Iterable[str] = ()) -> T:
        """Add `item` under its name and `aliases`; returns it (usable as a decorator)."""
        name = self._key(item)
        self._items[name] = item
        for alias in (name, *aliases):
            self._aliases[self._normalize(alias)] = name
        return item

    def _modules(self) -> list[str]:
        if self._explicit is not None:
            return list(self._explicit)
        pkg = importlib.import_module(self.package)  # type: ignore[arg-type]
        return [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(list(getattr(pkg, "__path__", [])))
                if not m.name.startswith("_") and m.name not in self._skip]

    def load(self) -> None:
        """Import every plug-in module of the package, then the external plug-ins (once)."""
        if self._loaded:
            return
        self._loaded = True
        for module in self._modules():
            _import(module)
        load_external_plugins()

    # -- lookup -----------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self.load()
        return list(self._items)

    def items(self) -> list[T]:
        """Registered items, in registration order."""
        self.load()
        return list(self._items.values())

    def __iter__(self) -> Iterator[T]:
        return iter(self.items())

    def __contains__(self, name: object) -> bool:
        self.load()
        return isinstance(name, str) and self._normalize(name) in self._aliases

    def errors(self) -> dict[str, str]:
        """Import failures of this registry's own plug-in modules (and of external plug-ins)."""
        self.load()
        own = f"{self.package}." if self.package else "\0"
        mine = set(self._explicit or ())
        return {m: e for m, e in IMPORT_ERRORS.items()
                if m.startswith(own) or m in mine or not m.startswith("segedge.")}

    def suggest(self, name: str) -> list[str]:
        """Close matches among names and aliases."""
        self.load()
        close = difflib.get_close_matches(self._normalize(name), list(self._aliases), n=3, cutoff=0.6)
        return list(dict.fromkeys(self._aliases[c] if c in self._items else c for c in close))

    def get(self, name: str) -> T:
        """The item for `name` or an alias, or a one-line error with suggestions and import failures."""
        self.load()
        key = self._normalize(str(name))
        if key in self._aliases:
            return self._items[self._aliases[key]]
        raise SegedgeError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """'unknown <kind> 'x': did you mean …? choose from …' plus plug-ins that failed to import."""
        msg = f"unknown {self.kind} '{name}'"
        close = self.suggest(str(name))
        if close:
            msg += f": did you mean {' or '.join(repr(c) for c in close)}?"
        msg += f" ({self._hint or 'choose from'} {', '.join(self._items)})"
        broken = self.errors()
        if broken:
            mod, err = next(iter(broken.items()))
            more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
            msg += f"; plug-in {mod} failed to import ({err}){more}: run `segedge doctor`"
        return msg
